"""The training phases of `finetune@<task>`: LM adaptation, classifiers, the label-budget curve.

Each phase is lmcore's one training loop with the task's data plugged in. A phase that trains on
all the labels checkpoints to its own folder and resumes after an interruption (a finished phase
replays from its final checkpoint); a curve point is short, so it is simply run again, and the
points already done are kept in `curve.jsonl` beside the checkpoints.
"""

from __future__ import annotations

import copy
import dataclasses
import json
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn

from lmcore.data import (
    LabeledExamples,
    LengthBucketSampler,
    check_block_size,
    get_batch,
    load_labeled,
    load_token_stream,
)
from lmcore.evaluate import classification_metrics, evaluate_lm, predict_classes
from lmcore.models import SequenceClassifier
from lmcore.train import TrainConfig, classification_loss, lm_loss, train
from pipelines.baselines import tfidf_predictions
from pipelines.params import CLASSIFIER_EVAL_METRICS, Params
from pipelines.splits import budget_subset
from pipelines.stages.sinks import Progress, fan_out
from pipelines.stages.stopping import stop_requests


@dataclass(frozen=True)
class Checkpoints:
    """Where the phases checkpoint (one folder each), and what each checkpoint carries to prove it
    belongs to this run."""

    folder: Path
    extra: dict[str, str]


@dataclass
class TaskData:
    """A prepared task: its examples per split, the texts (for TF-IDF) and its test sets."""

    train: LabeledExamples
    validation: LabeledExamples
    test: LabeledExamples
    texts: dict[str, list[str]]  # per split
    test_sets: dict[str, LabeledExamples]

    @classmethod
    def load(cls, folder: Path, test_on: list[str]) -> TaskData:
        import pandas as pd

        table = pd.read_parquet(folder / "labeled.parquet", columns=["text", "split"])
        texts = {
            split: table.loc[table["split"] == split, "text"].tolist() for split in ("train", "validation", "test")
        }
        examples = {split: load_labeled(folder / f"{split}.npz") for split in texts}
        sets = {name: load_labeled(folder / f"test_{name}.npz") for name in test_on}
        return cls(examples["train"], examples["validation"], examples["test"], texts, sets)


def subset(examples: LabeledExamples, indices: np.ndarray) -> LabeledExamples:
    return LabeledExamples([examples.ids[i] for i in indices], [examples.labels[i] for i in indices])


def lm_adapt(model: nn.Module, params: Params, stream: Path, max_len: int, log, checkpoints: Checkpoints) -> dict:
    """Language-model training on the task's own train texts (no labels): ULMFiT's second step."""
    data, meta = load_token_stream(stream)
    # The task's texts may be short: windows of max_len tokens hold several of them.
    block_size = min(model.config.block_size, max_len)
    check_block_size(data, block_size, f"{stream} (the task's train texts)")
    config = params.finetune.lm_config()
    batch_size = config.batch_size
    with stop_requests() as should_stop:
        result = train(
            model,
            config,
            lambda g: get_batch(data, batch_size, block_size, g),
            lm_loss,
            log=fan_out(log, Progress(config.max_steps, "lm-adapt")),
            checkpoint_dir=checkpoints.folder / "lm",
            checkpoint_extra=checkpoints.extra,
            should_stop=should_stop,
        )
    model.eval()
    held_out = evaluate_lm(model, data, block_size, 32, 64, meta.bytes_per_token)
    return {
        "steps": result.step,
        "train_loss": result.train_loss,
        "train_text_bits_per_byte": held_out["bits_per_byte"],
    }


def seeded_classifier(backbone: nn.Module, ft, num_classes: int, seed: int) -> SequenceClassifier:
    """A classifier head on `backbone` whose init comes from `seed`, not from whatever earlier runs
    left in the global generator: a resumed curve must train each point as an uninterrupted one."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = SequenceClassifier(backbone, num_classes, ft.pooling, ft.classifier_dropout)
    if ft.freeze_backbone:
        model.freeze_backbone()
    return model


def train_classifier(
    backbone: nn.Module,
    params: Params,
    task_name: str,
    data: TaskData,
    examples: LabeledExamples,
    pad_id: int,
    max_len: int,
    num_classes: int,
    log,
    label: str,
    checkpoint_dir: Path | None = None,
    checkpoint_extra: dict | None = None,
    seed: int | None = None,
    validate: bool = True,
) -> tuple[SequenceClassifier, dict]:
    """A classifier head on `backbone` (which it trains too, unless frozen), on `examples`.

    With a checkpoint folder (the full-label phases) the run early-stops on the validation split as
    finetune.train says; without one (a curve point) it trains its fixed number of steps, and with
    validate=False it is not scored on the validation split at all.
    """
    ft = params.finetune
    train_config = ft.train_for(params.tasks[task_name], task_name)
    seed = train_config.seed if seed is None else seed
    model = seeded_classifier(backbone, params.finetune, num_classes, seed)

    def evaluate(m: nn.Module) -> dict[str, float]:
        predicted, _ = predict_classes(m, data.validation, pad_id, max_len, params.evaluate.batch_size)
        scores = classification_metrics(data.validation.labels, predicted, num_classes)
        return {name: scores[name] for name in CLASSIFIER_EVAL_METRICS}

    steps = ft.classifier_steps(len(examples), train_config)
    config: TrainConfig = dataclasses.replace(train_config, max_steps=steps, seed=seed)
    if checkpoint_dir is None:
        config = dataclasses.replace(config, early_stopping_patience=0, eval_interval=steps)
    sampler = LengthBucketSampler.labeled(examples, pad_id, max_len, ft.length_buckets)
    start = time.perf_counter()
    with stop_requests() as should_stop:
        result = train(
            model,
            config,
            lambda g: sampler(config.batch_size, g),
            classification_loss,
            evaluate=evaluate if validate else None,
            log=fan_out(log, Progress(config.max_steps, label)),
            checkpoint_dir=checkpoint_dir,
            checkpoint_extra=checkpoint_extra,
            should_stop=should_stop,
        )
    model.eval()
    return model, {
        "validation": evaluate(model) if validate else None,
        "steps": result.step,
        "stopped_early": result.stopped_early,
        "wall_seconds": time.perf_counter() - start,
    }


def curve_points(labels: list[int], seeds: list[int], train_size: int) -> list[tuple[int, int]]:
    """(labels, seed) of each curve point; budgets at or above the training set's size are left out
    (the full-label models are that point)."""
    return [(n, seed) for n, count in zip(labels, seeds, strict=True) if n < train_size for seed in range(count)]


def curve_predictions(
    model_name: str, chosen: np.ndarray, seed: int, task_name: str, params: Params, data: TaskData,
    backbones: dict[str, Callable[[], nn.Module]], pad_id: int, num_classes: int,
) -> np.ndarray:  # fmt: skip
    """One model's test predictions after training on the `chosen` training examples."""
    task = params.tasks[task_name]
    if model_name == "tfidf":
        labels = np.asarray(data.train.labels)[chosen]
        return tfidf_predictions([data.texts["train"][i] for i in chosen], labels, data.texts["test"])
    label = f"curve {model_name} labels={len(chosen)} seed={seed}"
    classifier, _ = train_classifier(
        backbones[model_name](), params, task_name, data, subset(data.train, chosen), pad_id, task.max_len,
        num_classes, lambda step, metrics: None, label, seed=seed, validate=False,
    )  # fmt: skip
    return predict_classes(classifier, data.test, pad_id, task.max_len, params.evaluate.batch_size)[0]


def run_curve(
    task_name: str,
    params: Params,
    data: TaskData,
    backbones: dict[str, Callable[[], nn.Module]],
    pad_id: int,
    num_classes: int,
    done_file: Path,
    log_point: Callable[[dict], None],
) -> list[dict]:
    """Accuracy on the test split at each label budget and seed, for each model: the backbones
    given (finetuned from the pretrained model, scratch) and TF-IDF; finished points are kept in
    `done_file` and not run again."""
    task = params.tasks[task_name]
    points = [json.loads(line) for line in done_file.read_text().splitlines()] if done_file.exists() else []
    finished = {(p["labels"], p["seed"], p["model"]) for p in points}
    models = [*backbones, *(["tfidf"] if params.finetune.tfidf_baseline else [])]
    y_true = np.asarray(data.test.labels)
    with done_file.open("a") as record:
        for n, seed in curve_points(task.curve_labels, task.curve_seeds, len(data.train)):
            chosen = budget_subset(np.asarray(data.train.labels), n, seed)
            for model_name in (m for m in models if (n, seed, m) not in finished):
                start = time.perf_counter()
                predicted = curve_predictions(
                    model_name, chosen, seed, task_name, params, data, backbones, pad_id, num_classes
                )
                point = {
                    "labels": n,
                    "seed": seed,
                    "model": model_name,
                    "accuracy": float((predicted == y_true).mean()),
                }
                point["macro_f1"] = classification_metrics(y_true, predicted, num_classes)["macro_f1"]
                point["wall_seconds"] = time.perf_counter() - start
                record.write(json.dumps(point) + "\n")
                record.flush()
                log_point(point)
                points.append(point)
    return points


def fresh_copy(model: nn.Module) -> Callable[[], nn.Module]:
    """A factory of independent copies of `model` as it is now (each curve point starts there)."""
    state = copy.deepcopy(model)
    return lambda: copy.deepcopy(state)
