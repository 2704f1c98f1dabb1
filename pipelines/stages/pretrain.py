"""pretrain: build the model named by `model.arch` and train it on the pretraining corpus.

The checkpoint folder persists across runs, so `dvc repro` after a crash resumes. A checkpoint
made with other settings (model, training or tokenizer) is set aside, not resumed.
Outputs: the exported model, metrics.json for `dvc metrics`, curve.tsv for `dvc plots`.
"""

from __future__ import annotations

import time

import pandas as pd
import torch
import torch.nn as nn

from lmcore.checkpoint import export_model
from lmcore.data import check_block_size, get_batch
from lmcore.generate import GENERATION_DEFAULTS
from lmcore.models import build_model, build_model_config
from lmcore.tokenizer import TextTokenizer, load_tokenizer
from lmcore.train import TrainResult, lm_loss, train
from pipelines import tracking
from pipelines.layout import StageOutputs, outputs, stage_params
from pipelines.params import Params, load_params, load_raw_params
from pipelines.stages.common import (
    json_dump,
    lm_evaluator,
    logger,
    open_stream,
    resumable_checkpoints,
    run_stage,
)
from pipelines.stages.sinks import ComputeClock, CurveWriter, MetricHistory, Progress, fan_out
from pipelines.stages.stopping import stop_requests

CURVE_COLUMNS = ["train/loss", "val/loss", "train/lr", "train/tokens_per_sec", "train/mfu"]


def pretrain(
    params: Params, raw: dict, tokenizer: TextTokenizer, out: StageOutputs
) -> tuple[nn.Module, TrainResult, MetricHistory]:
    """Build `model.arch` and train it on the corpus's train stream, resuming from a checkpoint of the same run."""
    train_data, _ = open_stream("corpus_train", tokenizer.sha256())
    val_data, _ = open_stream("corpus_validation", tokenizer.sha256())
    arch = params.model.arch
    config = build_model_config(
        arch, {**params.model.config_values(), "vocab_size": tokenizer.vocab_size}, f"model.{arch}"
    )
    block_size, batch_size = config.block_size, params.pretrain.batch_size
    check_block_size(train_data, block_size, "pretrain train split")
    check_block_size(val_data, block_size, "pretrain validation split")
    torch.manual_seed(params.pretrain.seed)  # the init draws from the global generator, random per process
    model = build_model(arch, config)
    checkpoints = out.checkpoints
    fingerprint = resumable_checkpoints(checkpoints, stage_params("pretrain", raw), tokenizer.sha256())
    history = MetricHistory()
    curve = CurveWriter(out.curve, CURVE_COLUMNS)
    sinks = fan_out(tracking.metric_logger(), curve, history, Progress(params.pretrain.max_steps, "pretrain"))
    with stop_requests() as should_stop:  # a SIGTERM checkpoints the finished step, and the next run resumes it
        result = train(
            model,
            params.pretrain,
            lambda g: get_batch(train_data, batch_size, block_size, g),
            lm_loss,
            evaluate=lm_evaluator("corpus_validation", tokenizer.sha256(), block_size, params),
            log=sinks,
            checkpoint_dir=checkpoints,
            checkpoint_extra={"fingerprint": fingerprint, "tokenizer_sha256": tokenizer.sha256()},
            should_stop=should_stop,
        )
    curve.close()
    return model, result, history


def main() -> None:
    params = load_params()
    raw = load_raw_params()
    tok, out = outputs("tokenizer"), outputs("pretrain")
    logged = {"model": raw["model"], "pretrain": raw["pretrain"]}
    with tracking.stage_run("pretrain", params.tracking.experiment, logged, out.dir, {"tokenizer": tok.dir}):
        clock = ComputeClock()
        with clock.measure():
            tokenizer = load_tokenizer(tok.tokenizer, params.tokenizer.eot_token, params.tokenizer.pad_token)
            start = time.perf_counter()
            model, result, history = pretrain(params, raw, tokenizer, out)
            wall = time.perf_counter() - start
            extra = {
                "tokenizer_sha256": tokenizer.sha256(),
                "eot_token": tokenizer.eot_token,
                "pad_token": tokenizer.pad_token,
            }
            values = {**params.model.config_values(), "vocab_size": tokenizer.vocab_size}
            export_model(out.model, model, params.model.arch, values, tok.tokenizer, extra=extra)
        metrics = {
            "val": result.eval_metrics,
            "train_loss": result.train_loss,
            "steps": result.step,
            "params": model.num_params(),
            "tokens_per_sec": history.median("train/tokens_per_sec"),
            "mfu": history.median("train/mfu"),
            "wall_seconds": wall,
        }
        json_dump(out.metrics, metrics)
        tracking.log_metrics(metrics, prefix="final/")
        tracking.log_metrics(clock.metrics())
        tracking.log_artifacts(out.metrics, out.curve)
        name = params.tracking.lm_model_name if params.tracking.register_models else None
        example = pd.DataFrame({"text": ["This movie"]})
        version = tracking.log_lmcore_model(out.model, "model", name, example, params=GENERATION_DEFAULTS)
        logger.info("pretrain done: %s (registered version %s)", metrics, version)


if __name__ == "__main__":
    run_stage(main)
