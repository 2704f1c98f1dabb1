"""One task's classifier recipe, tried over seeds, scored on validation (and test): for choosing a
recipe on validation, never on test.

    python bench/finetune_sweep.py imdb --labels 3000 --seeds 0 1 2 --set learning_rate=1e-3 --set grad_clip=0.25
    python bench/finetune_sweep.py sst2 --set max_steps=1500 --scratch
    python bench/finetune_sweep.py trec --labels 300 --seeds 0 1 2 --lm-adapt --finetune epochs=10

Runs in a project after `dvc repro` (it reads outputs/pretrain/model, outputs/tokenizer and
outputs/tasks/<task>), with the pipeline's own classifier code and params.yaml; `--set` changes
finetune.train for this run only (over the task's own `train` changes), `--finetune` a key of
finetune itself. Prints one JSON line per seed: the recipe, validation and test accuracy, and
seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path.cwd()))

from lmcore.checkpoint import load_model  # noqa: E402
from lmcore.evaluate import predict_classes  # noqa: E402
from lmcore.models import build_model, build_model_config  # noqa: E402
from lmcore.tokenizer import load_tokenizer  # noqa: E402
from pipelines.finetuning import Checkpoints, TaskData, fresh_copy, lm_adapt, subset, train_classifier  # noqa: E402
from pipelines.layout import outputs  # noqa: E402
from pipelines.params import load_params  # noqa: E402
from pipelines.splits import budget_subset  # noqa: E402


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_changes(items: list[str]) -> dict:
    return {key: parse_value(value) for key, value in (item.split("=", 1) for item in items)}


def with_recipe(params, task_name: str, train_changes: list[str], finetune_changes: list[str]):
    """params with the task's finetune.train changed (over its own `train` changes) and finetune's
    own keys changed, for this run only."""
    task = params.tasks[task_name]
    changes = parse_changes(train_changes)
    train = {**task.train, **changes}
    if "learning_rate" in changes and "min_lr" not in changes:
        train["min_lr"] = train["learning_rate"] / 10
    finetune = parse_changes(finetune_changes)
    return dataclasses.replace(
        params,
        tasks={**params.tasks, task_name: dataclasses.replace(task, train=train)},
        finetune=dataclasses.replace(params.finetune, **finetune),
    )


def starting_backbone(params, task_name: str, scratch: bool, lm_adapt_first: bool):
    """The backbone every seed starts from: pretrained or fresh, LM-adapted on the task's texts once."""
    pretrained, config = load_model(outputs("pretrain").model)
    torch.manual_seed(7)
    arch = config["arch"]
    backbone = build_model(arch, build_model_config(arch, config["model"])) if scratch else pretrained
    if lm_adapt_first:
        with tempfile.TemporaryDirectory() as folder:
            stream = outputs("tasks", task_name).train_text
            adapted = lm_adapt(backbone, params, stream, params.tasks[task_name].max_len, lambda s, m: None,
                               Checkpoints(Path(folder), {}))  # fmt: skip
        print(json.dumps({"lm_adapt": adapted}), flush=True)
    return backbone


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task")
    parser.add_argument("--labels", type=int, default=0, help="a label budget; 0 trains on all the labels")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a finetune.train key")
    parser.add_argument("--finetune", action="append", default=[], metavar="KEY=VALUE", help="a finetune key")
    parser.add_argument("--lm-adapt", action="store_true", help="LM adaptation on the task's texts first")
    parser.add_argument("--scratch", action="store_true", help="the same architecture from random weights")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = with_recipe(load_params(), args.task, args.set, args.finetune)
    task = params.tasks[args.task]
    data = TaskData.load(outputs("tasks", args.task).dir, [])
    tokenizer = load_tokenizer(outputs("tokenizer").tokenizer)
    backbone = starting_backbone(params, args.task, args.scratch, args.lm_adapt)
    recipe = {"train": task.train, "finetune": parse_changes(args.finetune), "lm_adapt": args.lm_adapt}
    labels = np.asarray(data.train.labels)
    for seed in args.seeds:
        chosen = budget_subset(labels, args.labels or len(labels), seed)
        model, info = train_classifier(
            fresh_copy(backbone)(), params, args.task, data, subset(data.train, chosen), tokenizer.pad_id,
            task.max_len, len(task.labels), lambda step, metrics: None, f"sweep seed={seed}", seed=seed,
        )  # fmt: skip
        predicted, _ = predict_classes(model, data.test, tokenizer.pad_id, task.max_len)
        test = float((predicted == np.asarray(data.test.labels)).mean())
        row = {"task": args.task, "labels": len(chosen), "seed": seed, "scratch": args.scratch, **recipe}
        row.update(validation=round(info["validation"]["accuracy"], 4), test=round(test, 4))
        print(json.dumps({**row, "steps": info["steps"], "seconds": round(info["wall_seconds"], 1)}), flush=True)


if __name__ == "__main__":
    main()
