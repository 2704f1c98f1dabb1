"""finetune: adapt the pretrained model to the labeled task, and train a from-scratch baseline.

`finetune.task`: `classification` puts a head on the backbone; `lm` continues language-model
training on the task's own text; `lm_then_classification` does both in turn (ULMFiT).
`finetune.init: scratch` starts from random weights; `scratch_baseline` also trains the same
architecture from scratch, so the value of pretraining is measured, not assumed.

Each training phase checkpoints to its own folder under outputs/finetune/checkpoints, so an
interrupted stage resumes where it stopped: a finished phase replays from its final checkpoint in
an instant (weights and random state as they were), the interrupted one continues exactly.
"""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import pandas as pd
import torch
import torch.nn as nn

from lmcore.checkpoint import export_model, load_model
from lmcore.data import LengthBucketSampler, check_block_size, get_batch, load_labeled
from lmcore.evaluate import classification_metrics, predict_classes
from lmcore.models import SequenceClassifier, build_model, build_model_config
from lmcore.tokenizer import load_tokenizer
from lmcore.train import TrainConfig, classification_loss, lm_loss, train
from pipelines import tracking
from pipelines.corpus import json_dump
from pipelines.params import CLASSIFIER_EVAL_METRICS, Params, load_params, load_raw_params, stage_params
from pipelines.stages.common import (
    ComputeClock,
    CurveWriter,
    Progress,
    fan_out,
    lm_evaluator,
    logger,
    open_stream,
    resumable_checkpoints,
    run_stage,
    stage_dir,
    stop_requests,
)


def lm_adapt(model: nn.Module, params: Params, tokenizer_sha: str, log, label: str, checkpoints: Checkpoints) -> dict:
    """Language-model training on the labeled task's own train text (no labels)."""
    train_data, _ = open_stream("labeled_train", tokenizer_sha)
    # The task's texts are short: windows of finetune.max_len tokens hold several of them.
    block_size = min(model.config.block_size, params.finetune.max_len)
    batch_size = params.finetune.lm_batch_size
    check_block_size(train_data, block_size, "labeled train split")
    config = dataclasses.replace(
        params.finetune.train, max_steps=params.finetune.lm_steps, batch_size=batch_size, early_stopping_patience=0
    )
    with stop_requests() as should_stop:
        result = train(
            model,
            config,
            lambda g: get_batch(train_data, batch_size, block_size, g),
            lm_loss,
            evaluate=lm_evaluator("labeled_validation", tokenizer_sha, block_size, params),
            log=fan_out(log, Progress(config.max_steps, label)),
            checkpoint_dir=checkpoints.folder / "lm",
            checkpoint_extra=checkpoints.extra,
            should_stop=should_stop,
        )
    return {"lm_val": result.eval_metrics, "lm_steps": result.step}


def classify(
    backbone: nn.Module, params: Params, pad_id: int, log, label: str, checkpoints: Checkpoints, phase: str
) -> tuple[SequenceClassifier, dict]:
    ft = params.finetune
    streams = stage_dir("tokenizer") / "streams"
    train_set, val_set = load_labeled(streams / "labeled_train.npz"), load_labeled(streams / "labeled_validation.npz")
    model = SequenceClassifier(backbone, len(params.ingest.labeled.labels), ft.pooling, ft.classifier_dropout)
    if ft.freeze_backbone:
        model.freeze_backbone()
    num_classes = len(params.ingest.labeled.labels)

    def evaluate(m: nn.Module) -> dict[str, float]:
        predicted, _ = predict_classes(m, val_set, pad_id, ft.max_len, params.evaluate.batch_size)
        scores = classification_metrics(val_set.labels, predicted, num_classes)
        return {name: scores[name] for name in CLASSIFIER_EVAL_METRICS}

    config: TrainConfig = ft.train
    sampler = LengthBucketSampler(train_set, pad_id, ft.max_len, ft.length_buckets)
    start = time.perf_counter()
    with stop_requests() as should_stop:
        result = train(
            model,
            config,
            lambda g: sampler(config.batch_size, g),
            classification_loss,
            evaluate=evaluate,
            log=fan_out(log, Progress(config.max_steps, label)),
            checkpoint_dir=checkpoints.folder / phase,
            checkpoint_extra=checkpoints.extra,
            should_stop=should_stop,
        )
    return model, {
        "val": evaluate(model.eval()),
        "steps": result.step,
        "stopped_early": result.stopped_early,
        "wall_seconds": time.perf_counter() - start,
    }


@dataclasses.dataclass(frozen=True)
class Checkpoints:
    """Where the phases checkpoint (one folder each: lm, classifier, scratch), and what each
    checkpoint carries to prove it belongs to this run."""

    folder: Path
    extra: dict[str, str]


def checkpoints_for(params: dict, tokenizer_sha: str, pretrained: Path | None) -> Checkpoints:
    """The stage's checkpoint folder, with checkpoints of other settings or inputs moved aside."""
    weights = hashlib.sha256((pretrained / "model.safetensors").read_bytes()).hexdigest() if pretrained else ""
    folder = stage_dir("finetune") / "checkpoints"
    return Checkpoints(folder, {"fingerprint": resumable_checkpoints(folder, params, tokenizer_sha, weights)})


def load_backbone(params: Params, tokenizer_sha: str, vocab_size: int) -> tuple[nn.Module, str, dict]:
    """The pretrained model (checked against the tokenizer) or a fresh one: (model, arch, config values)."""
    ft = params.finetune
    if ft.init == "pretrained":
        path = stage_dir("pretrain") / "model"
        backbone, config = load_model(path)
        if config.get("tokenizer_sha256") != tokenizer_sha:
            raise ValueError(f"{path} was trained with another tokenizer (vocab mismatch): re-run pretrain")
        arch, model_values = config["arch"], config["model"]
    else:
        arch = params.model.arch
        model_values = {**params.model.config_values(), "vocab_size": vocab_size}
        backbone = build_model(arch, build_model_config(arch, model_values, f"model.{arch}"))
    if arch == "gpt" and ft.max_len > model_values["block_size"]:
        raise ValueError(f"finetune.max_len={ft.max_len} exceeds the GPT's block_size={model_values['block_size']}")
    return backbone, arch, model_values


def main() -> None:
    params = load_params()
    raw = load_raw_params()
    ft = params.finetune
    tok_dir, pre_dir, out = stage_dir("tokenizer"), stage_dir("pretrain"), stage_dir("finetune")
    out.mkdir(parents=True, exist_ok=True)
    upstream = {"tokenizer": tok_dir, "pretrain": pre_dir}
    with tracking.stage_run(
        "finetune", params.tracking.experiment, {"finetune": raw["finetune"], "model": raw["model"]}, out, upstream
    ):
        clock = ComputeClock()
        torch.manual_seed(ft.train.seed)  # the classifier heads and the scratch model draw their init from it
        with clock.measure():
            tokenizer = load_tokenizer(
                tok_dir / "tokenizer.json", params.tokenizer.eot_token, params.tokenizer.pad_token
            )
            backbone, arch, model_values = load_backbone(params, tokenizer.sha256(), tokenizer.vocab_size)
            checkpoints = checkpoints_for(
                stage_params("finetune", raw),
                tokenizer.sha256(),
                pre_dir / "model" if ft.init == "pretrained" else None,
            )
            metrics: dict = {}
            if ft.task in ("lm", "lm_then_classification"):
                lm_log = tracking.metric_logger("lm_adapt/")
                metrics.update(lm_adapt(backbone, params, tokenizer.sha256(), lm_log, "finetune-lm", checkpoints))
            curve = CurveWriter(out / "curve.tsv", ["train/loss", "val/accuracy", "val/loss"])
            model = backbone
            if ft.task != "lm":
                model, metrics["classifier"] = classify(
                    backbone,
                    params,
                    tokenizer.pad_id,
                    fan_out(tracking.metric_logger(), curve),
                    "finetune",
                    checkpoints,
                    "classifier",
                )
            curve.close()
            extra = {
                "tokenizer_sha256": tokenizer.sha256(),
                "max_len": ft.max_len,
                "label_names": params.ingest.labeled.label_names,
                "eot_token": tokenizer.eot_token,
                "pad_token": tokenizer.pad_token,
            }
            export_model(
                out / "models" / "finetuned", model, arch, model_values, tok_dir / "tokenizer.json", extra=extra
            )
        name = params.tracking.lm_model_name + "-adapted" if ft.task == "lm" else params.tracking.classifier_model_name
        example = pd.DataFrame({"text": ["a gorgeous , witty , seductive movie ."]})
        tracking.log_lmcore_model(
            out / "models" / "finetuned", "model", name if params.tracking.register_models else None, example
        )
        if ft.scratch_baseline and ft.task != "lm":
            with clock.measure():
                scratch = build_model(arch, build_model_config(arch, model_values))
                baseline, metrics["scratch"] = classify(
                    scratch,
                    params,
                    tokenizer.pad_id,
                    tracking.metric_logger("scratch/"),
                    "scratch",
                    checkpoints,
                    "scratch",
                )
                export_model(
                    out / "models" / "scratch", baseline, arch, model_values, tok_dir / "tokenizer.json", extra=extra
                )
        json_dump(out / "metrics.json", metrics)
        tracking.log_metrics(metrics, prefix="final/")
        tracking.log_metrics(clock.metrics())
        tracking.log_artifacts(out / "metrics.json", out / "curve.tsv")
        logger.info("finetune done: %s", metrics)


if __name__ == "__main__":
    run_stage(main)
