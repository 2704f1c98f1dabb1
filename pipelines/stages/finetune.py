"""finetune@<task>: the pretrained model finetuned on one task, against the baselines.

`python -m pipelines.stages.finetune <task>`. With `finetune.recipe: lm_then_classification`
(ULMFiT) the pretrained LM first continues language-model training on the task's own train
texts; then a classifier head is trained with the backbone on all the task's labels, early
stopping on its validation split. The same architecture from scratch, TF-IDF + logistic
regression and the majority class are measured on the same test split, with bootstrap intervals
and paired differences; the finetuned classifier is also scored on the task's `test_on` sets
(out of domain), and the label-budget curve trains each model again on subsets of the labels.
Outputs in outputs/finetune/<task>/: `models/{finetuned,scratch}`, `metrics.json` (for `dvc
metrics`), `results.json` (everything, for the evaluate stage), `curve.tsv` (for `dvc plots`).
"""

from __future__ import annotations

import csv
import hashlib
import time

import numpy as np
import pandas as pd
import torch

from lmcore.checkpoint import WEIGHTS_NAME, export_model
from lmcore.evaluate import calibration_error, fit_temperature, predict_classes, with_temperature
from lmcore.models import build_model, build_model_config
from lmcore.tokenizer import load_tokenizer
from pipelines import tracking
from pipelines.baselines import majority_predictions, score, tfidf_predictions
from pipelines.finetuning import Checkpoints, TaskData, fresh_copy, lm_adapt, run_curve, train_classifier
from pipelines.layout import outputs, stage_params
from pipelines.params import Params, load_params, load_raw_params
from pipelines.stages.common import json_dump, load_backbone, logger, resumable_checkpoints, run_stage, task_argument
from pipelines.stages.sinks import ComputeClock


def checkpoints_for(stage: str, raw: dict, tokenizer_sha: str, pretrained: bool) -> Checkpoints:
    """The task's checkpoint folder, with checkpoints of other settings or inputs moved aside."""
    weights = outputs("pretrain").model / WEIGHTS_NAME
    digest = hashlib.sha256(weights.read_bytes()).hexdigest() if pretrained else ""
    folder = outputs("finetune", stage.partition("@")[2]).checkpoints
    return Checkpoints(
        folder, {"fingerprint": resumable_checkpoints(folder, stage_params(stage, raw), tokenizer_sha, digest)}
    )


def write_curve_tsv(path, points: list[dict]) -> None:
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(
            f, fieldnames=["labels", "seed", "model", "accuracy"], delimiter="\t", extrasaction="ignore"
        )
        writer.writeheader()
        writer.writerows(sorted(points, key=lambda p: (p["model"], p["labels"], p["seed"])))


def calibration(model, data: TaskData, test_probs: np.ndarray, pad: int, max_len: int, batch: int) -> dict:
    """The temperature fitted on the validation split, and the test split's expected calibration
    error before and after it."""
    validation_probs = predict_classes(model, data.validation, pad, max_len, batch)[1]
    temperature = fit_temperature(validation_probs, np.asarray(data.validation.labels))
    y_true = np.asarray(data.test.labels)
    return {
        "temperature": temperature,
        "ece": calibration_error(test_probs, y_true),
        "ece_calibrated": calibration_error(with_temperature(test_probs, temperature), y_true),
    }


def score_task(name: str, params: Params, data: TaskData, models: dict, pad: int, training: dict) -> dict:
    """Every model and baseline on the test split; the finetuned classifier on the test sets."""
    task, ft = params.tasks[name], params.finetune
    num_classes, samples, batch = len(task.labels), params.evaluate.bootstrap_samples, params.evaluate.batch_size
    y_true, train_labels = np.asarray(data.test.labels), np.asarray(data.train.labels)
    scored = {m: predict_classes(model, data.test, pad, task.max_len, batch) for m, model in models.items()}
    predictions = {m: predicted for m, (predicted, _) in scored.items()}
    if ft.tfidf_baseline:
        start = time.perf_counter()
        predictions["tfidf"] = tfidf_predictions(data.texts["train"], train_labels, data.texts["test"])
        training["tfidf"] = {"wall_seconds": time.perf_counter() - start}
    predictions["majority"] = majority_predictions(train_labels, num_classes, len(y_true))
    generalization = {}
    for other, examples in data.test_sets.items():
        predicted = predict_classes(models["finetuned"], examples, pad, task.max_len, batch)[0]
        generalization[other] = score(np.asarray(examples.labels), {"finetuned": predicted}, num_classes, samples)[
            "finetuned"
        ]
    test = score(y_true, predictions, num_classes, samples)
    for m, model in models.items():
        test[m].update(calibration(model, data, scored[m][1], pad, task.max_len, batch))
    return {
        "task": name,
        "label_names": task.label_names,
        "test": test,
        "generalization": generalization,
        "training": training,
    }


def train_task(name: str, params: Params, raw: dict, data: TaskData, tokenizer) -> tuple[dict, dict, dict, tuple]:
    """LM adaptation (with that recipe), then the finetuned and scratch classifiers on all the labels,
    then the curve: (models, training figures, metrics so far, (arch, model config, backbones))."""
    task, ft = params.tasks[name], params.finetune
    torch.manual_seed(ft.train.seed)  # the scratch model draws its init from it
    backbone, arch, model_values = load_backbone(params, ft.init, tokenizer.sha256(), tokenizer.vocab_size)
    scratch_init = build_model(arch, build_model_config(arch, model_values))
    checkpoints = checkpoints_for(f"finetune@{name}", raw, tokenizer.sha256(), ft.init == "pretrained")
    metrics: dict = {}
    if ft.recipe == "lm_then_classification":
        stream, log = outputs("tasks", name).train_text, tracking.metric_logger("lm_adapt/")
        metrics["lm_adapt"] = lm_adapt(backbone, params, stream, task.max_len, log, checkpoints)
    backbones = {
        "finetuned": fresh_copy(backbone),
        **({"scratch": fresh_copy(scratch_init)} if ft.scratch_baseline else {}),
    }
    models, training = {}, {}
    for model_name, make in backbones.items():
        models[model_name], training[model_name] = train_classifier(
            make(), params, name, data, data.train, tokenizer.pad_id, task.max_len, len(task.labels),
            tracking.metric_logger(f"{model_name}/"), model_name, checkpoints.folder / model_name, checkpoints.extra,
        )  # fmt: skip
    curve = run_curve(
        name, params, data, backbones, tokenizer.pad_id, len(task.labels),
        checkpoints.folder / "curve.jsonl", tracking.log_child_run(name),
    )  # fmt: skip
    return models, training, {**metrics, "curve": curve}, (arch, model_values)


def main() -> None:
    params = load_params()
    name = task_argument(params)
    task = params.tasks[name]
    raw = load_raw_params()
    data_dir, out, tok = outputs("tasks", name).dir, outputs("finetune", name), outputs("tokenizer")
    out.dir.mkdir(parents=True, exist_ok=True)
    logged = {"finetune": raw["finetune"], "model": raw["model"], f"tasks.{name}": raw["tasks"][name]}
    upstream = {"tokenizer": tok.dir, "pretrain": outputs("pretrain").dir, "prepare": data_dir}
    with tracking.stage_run("finetune", params.tracking.experiment, logged, out.dir, upstream, task=name):
        clock = ComputeClock()
        with clock.measure():
            tokenizer_path = tok.tokenizer
            tokenizer = load_tokenizer(tokenizer_path, params.tokenizer.eot_token, params.tokenizer.pad_token)
            data = TaskData.load(data_dir, task.test_on)
            models, training, trained, (arch, model_values) = train_task(name, params, raw, data, tokenizer)
            results = {
                **score_task(name, params, data, models, tokenizer.pad_id, training),
                "curve": trained.pop("curve"),
            }
            extra = {"tokenizer_sha256": tokenizer.sha256(), "max_len": task.max_len, "label_names": task.label_names}
            extra.update(eot_token=tokenizer.eot_token, pad_token=tokenizer.pad_token)
            for model_name, model in models.items():
                served = {**extra, "temperature": results["test"][model_name]["temperature"]}  # calibrated
                export_model(out.models / model_name, model, arch, model_values, tokenizer_path, extra=served)
        json_dump(out.results, results)
        keys = ("accuracy", "macro_f1", "ci_low", "ci_high", "ece", "ece_calibrated")
        metrics = {**trained, "test": {m: {k: r[k] for k in keys if k in r} for m, r in results["test"].items()}}
        metrics["generalization"] = {o: {"accuracy": r["accuracy"]} for o, r in results["generalization"].items()}
        json_dump(out.metrics, metrics)
        write_curve_tsv(out.curve, results["curve"])
        tracking.log_metrics(metrics, prefix="final/")
        tracking.log_metrics(clock.metrics())
        tracking.log_artifacts(out.results, out.metrics, out.curve)
        if params.tracking.register_models:
            example = pd.DataFrame({"text": [data.texts["test"][0]]})
            registered = f"{params.tracking.classifier_model_name}-{name}"
            tracking.log_lmcore_model(out.models / "finetuned", "model", registered, example)
        logger.info("finetune@%s: %s", name, metrics["test"])


if __name__ == "__main__":
    run_stage(main)
