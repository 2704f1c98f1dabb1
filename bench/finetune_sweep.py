"""One task's classifier recipe, tried over seeds, scored on validation (and test): for choosing a
recipe on validation, never on test.

    python bench/finetune_sweep.py imdb --labels 3000 --seeds 0 1 2 --set learning_rate=1e-3 --set grad_clip=0.25
    python bench/finetune_sweep.py sst2 --set max_steps=1500 --scratch

Runs in a project after `dvc repro` (it reads outputs/pretrain/model, outputs/tokenizer and
outputs/tasks/<task>), with the pipeline's own classifier code and params.yaml; `--set` changes
finetune.train for this run only (over the task's own `train` changes). Prints one JSON line per
seed: the recipe, validation and test accuracy, and seconds.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path.cwd()))

from lmcore.checkpoint import load_model  # noqa: E402
from lmcore.evaluate import predict_classes  # noqa: E402
from lmcore.models import build_model, build_model_config  # noqa: E402
from lmcore.tokenizer import load_tokenizer  # noqa: E402
from pipelines.finetuning import TaskData, fresh_copy, subset, train_classifier  # noqa: E402
from pipelines.params import load_params  # noqa: E402
from pipelines.splits import budget_subset  # noqa: E402


def parse_value(text: str):
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("task")
    parser.add_argument("--labels", type=int, default=0, help="a label budget; 0 trains on all the labels")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0])
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="a finetune.train key")
    parser.add_argument("--scratch", action="store_true", help="the same architecture from random weights")
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    params = load_params()
    task = params.tasks[args.task]
    changes = dict(item.split("=", 1) for item in args.set)
    train = {**task.train, **{key: parse_value(value) for key, value in changes.items()}}
    if "learning_rate" in changes and "min_lr" not in changes:
        train["min_lr"] = train["learning_rate"] / 10
    params = dataclasses.replace(params, tasks={**params.tasks, args.task: dataclasses.replace(task, train=train)})
    data = TaskData.load(Path("outputs/tasks") / args.task, [])
    tokenizer = load_tokenizer("outputs/tokenizer/tokenizer.json")
    pretrained, config = load_model("outputs/pretrain/model")
    torch.manual_seed(7)
    backbone = (
        build_model(config["arch"], build_model_config(config["arch"], config["model"])) if args.scratch else pretrained
    )
    labels = np.asarray(data.train.labels)
    for seed in args.seeds:
        chosen = budget_subset(labels, args.labels or len(labels), seed)
        model, info = train_classifier(
            fresh_copy(backbone)(), params, args.task, data, subset(data.train, chosen), tokenizer.pad_id,
            task.max_len, len(task.labels), lambda step, metrics: None, f"sweep seed={seed}", seed=seed,
        )  # fmt: skip
        predicted, _ = predict_classes(model, data.test, tokenizer.pad_id, task.max_len)
        test = float((predicted == np.asarray(data.test.labels)).mean())
        row = {"task": args.task, "labels": len(chosen), "seed": seed, "scratch": args.scratch, "train": train}
        row.update(validation=round(info["validation"]["accuracy"], 4), test=round(test, 4))
        print(json.dumps({**row, "steps": info["steps"], "seconds": round(info["wall_seconds"], 1)}), flush=True)


if __name__ == "__main__":
    main()
