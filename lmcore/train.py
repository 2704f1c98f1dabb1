"""The one training loop, used by pretraining and by finetuning (language model or classifier).

`train` reads top to bottom: evaluation and checkpoint when due, one optimizer step (learning
rate, forward and backward over micro-batches, clip, step), log. What differs between tasks
comes in as plain callables: `get_batch(generator)`, `compute_loss(model, batch)` and
`evaluate(model)`. The loop's counters live in a `TrainState` whose `state_dict` and
`load_state_dict` mirror each other and travel in the checkpoint with the model, optimizer, loss
scaler and random state (`lmcore.train_state`); the recipe is `TrainConfig` (`lmcore.train_config`).

Every micro-batch draws from its own generator seeded by (seed, step, slot), so a resumed run
and a data-parallel run see exactly the batches of an uninterrupted single-process run with the
same global batch. Under torchrun the same function runs DDP (NCCL on GPUs, gloo on CPU), and
the `evaluate` callable runs on every rank with lmcore's evaluation functions splitting their
batches over the ranks (see `lmcore.evaluate.shared_across_ranks`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn as nn
import torch.nn.functional as F

from lmcore.checkpoint import CHECKPOINT_NAME
from lmcore.runtime import synchronize
from lmcore.train_config import TrainConfig, batch_generator, build_optimizer, get_lr, layer_lr_scale
from lmcore.train_state import (
    Batch,
    SpeedMeter,
    TrainState,
    build_run,
    evaluate_run,
    optimizer_step,
    record_evaluation,
    resume_run,
    save_run,
    steps_threads,
    wrap_model,
)

LogFn = Callable[[int, dict[str, float]], None]
__all__ = [
    "Batch",
    "LogFn",
    "TrainConfig",
    "TrainResult",
    "TrainingDivergedError",
    "TrainingInterrupted",
    "batch_generator",
    "build_optimizer",
    "classification_loss",
    "get_lr",
    "layer_lr_scale",
    "lm_loss",
    "train",
]


@dataclass
class TrainResult:
    step: int
    train_loss: float
    eval_metrics: dict[str, float]
    best_metric: float | None
    stopped_early: bool


class TrainingDivergedError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is kept."""


class TrainingInterrupted(KeyboardInterrupt):
    """`should_stop` asked for a stop: the step in progress finished and, with a checkpoint_dir,
    was checkpointed, so the same call resumes there. A KeyboardInterrupt, as a Ctrl-C is."""

    def __init__(self, step: int, checkpoint: Path | None) -> None:
        where = f"checkpoint {checkpoint} resumes it" if checkpoint else "no checkpoint_dir, nothing saved"
        super().__init__(f"training stopped on request at step {step}; {where}")
        self.step = step
        self.checkpoint = checkpoint


def lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy for (x, y) batches."""
    x, y = batch
    logits = model(x)  # (B, T, V)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))


def classification_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    idx, lengths, labels = batch
    return F.cross_entropy(model(idx, lengths).float(), labels)


# Over 60 lines only by its 11-line signature: the loop stays whole, so that it reads top to bottom.
def check_finite(loss: float, step: int, checkpoint: Path | None) -> float:
    if not math.isfinite(loss):
        where = checkpoint or "none written"
        raise TrainingDivergedError(
            f"loss is {loss} at step {step}; training stopped, the last good checkpoint ({where}) is kept"
        )
    return loss


def train(
    model: nn.Module,
    config: TrainConfig,
    get_batch: Callable[[torch.Generator], Batch],
    compute_loss: Callable[[nn.Module, Batch], torch.Tensor] = lm_loss,
    evaluate: Callable[[nn.Module], dict[str, float]] | None = None,
    log: LogFn | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_extra: dict[str, Any] | None = None,
    should_stop: Callable[[], bool] | None = None,
) -> TrainResult:
    """Train `model` in place for `config.max_steps` optimizer steps; resume from checkpoint_dir.

    `should_stop` (say, a signal handler's `threading.Event.is_set`) is asked once per step: when
    it answers True on any rank, every rank finishes that step, a checkpoint is written and
    TrainingInterrupted is raised, so a preempted or cancelled run loses no finished step.
    """
    if config.early_stopping_patience and evaluate is None:
        raise ValueError(f"early_stopping_patience={config.early_stopping_patience} needs an `evaluate` function")
    run = build_run(model, config)
    log = log if (log is not None and run.rank == 0) else (lambda step, metrics: None)
    state = TrainState()
    checkpoint = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if checkpoint is not None and checkpoint.exists():
        resume_run(run, checkpoint, state)  # a run that had stopped early stays stopped
    wrap_model(run)
    speed = SpeedMeter.for_run(run)
    stop_requested = False
    run.raw_model.train()
    with steps_threads(run):
        while True:
            final = state.step >= config.max_steps
            if stop_requested and not final:
                save_run(run, checkpoint, state, checkpoint_extra)
                raise TrainingInterrupted(state.step, checkpoint)
            due = final or (state.step > 0 and state.step % config.eval_interval == 0)
            if evaluate is not None and state.step != state.last_eval_step and due:
                record_evaluation(state, evaluate_run(run, evaluate), config, run.raw_model)
                log(state.step, {f"val/{k}": v for k, v in state.eval_metrics.items()})
            stopped = state.stopped_early(config)
            if final or stopped or (state.step > 0 and state.step % config.checkpoint_interval == 0):
                save_run(run, checkpoint, state, checkpoint_extra)
            if final or stopped:
                break

            start, lr = time.perf_counter(), get_lr(state.step, config)
            loss, grad_norm, tokens, stop_requested = optimizer_step(
                run, state.step, get_batch, compute_loss, should_stop
            )
            state.train_loss = check_finite(loss, state.step, checkpoint)
            state.step += 1
            synchronize(run.device)
            speed.add(tokens, time.perf_counter() - start)
            if state.step % config.log_interval == 0 or state.step == config.max_steps:
                log(state.step, {"train/loss": loss, "train/lr": lr, "train/grad_norm": grad_norm, **speed.figures()})

    if config.early_stopping_patience and state.best_model is not None:
        run.raw_model.load_state_dict(state.best_model)  # finetuning keeps the best validated weights
    return TrainResult(state.step, state.train_loss, state.eval_metrics, state.best_metric, state.stopped_early(config))
