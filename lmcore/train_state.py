"""The parts of one training run: its state (saved and loaded with the checkpoint), early
stopping, one optimizer step over the micro-batches, evaluation, checkpoints, speed figures."""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn as nn

from lmcore.checkpoint import check_state_fits, load_checkpoint, save_checkpoint
from lmcore.evaluate import shared_across_ranks
from lmcore.runtime import autocast_context, measure_peak_flops, resolve_dtype, setup_distributed
from lmcore.sharding import ShardedBackward, intra_op_threads, resolve_batch_threads
from lmcore.train_config import TrainConfig, batch_generator, build_optimizer, get_lr, layer_lr_scale

logger = logging.getLogger("lmcore.train")  # one logger for the loop and its parts
Batch = tuple[torch.Tensor, ...]


@dataclass
class TrainState:
    """The loop's counters and early-stopping memory; `state_dict` and `load_state_dict` mirror each
    other (the checkpoint keeps these keys beside the model, optimizer, scaler and random state)."""

    step: int = 0
    last_eval_step: int = -1
    best_metric: float | None = None
    bad_evals: int = 0
    best_model: dict[str, torch.Tensor] | None = None
    train_loss: float = float("nan")
    eval_metrics: dict[str, float] = field(default_factory=dict)

    def state_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)

    def load_state_dict(self, state: dict[str, Any]) -> None:
        for name in self.__dict__:
            if name in state:  # train_loss and eval_metrics are absent from older checkpoints
                setattr(self, name, state[name])

    def stopped_early(self, config: TrainConfig) -> bool:
        return bool(config.early_stopping_patience) and self.bad_evals >= config.early_stopping_patience


def improved(value: float, best: float | None, mode: Literal["min", "max"]) -> bool:
    return best is None or (value < best if mode == "min" else value > best)


def record_evaluation(state: TrainState, metrics: dict[str, float], config: TrainConfig, model: nn.Module) -> None:
    """Note an evaluation; with early stopping, keep the best weights or count one more without gain."""
    state.eval_metrics, state.last_eval_step = metrics, state.step
    if not config.early_stopping_patience:
        return
    if config.early_stopping_metric not in metrics:
        raise ValueError(
            f"early_stopping_metric={config.early_stopping_metric!r} is not among the evaluation's metrics {sorted(metrics)}"
        )
    value = metrics[config.early_stopping_metric]
    if improved(value, state.best_metric, config.early_stopping_mode):
        state.best_metric, state.bad_evals = value, 0
        state.best_model = {k: v.detach().to("cpu", copy=True) for k, v in model.state_dict().items()}
    else:
        state.bad_evals += 1


class SpeedMeter:
    """Tokens, steps and seconds since the last log line: the speed figures of each log."""

    @classmethod
    def for_run(cls, run: Run) -> SpeedMeter:
        flops = run.raw_model.flops_per_token() if hasattr(run.raw_model, "flops_per_token") else 0.0
        return cls(flops, run.config.peak_flops or measure_peak_flops(run.device, run.dtype), run.world_size)

    def __init__(self, flops_per_token: float, peak_flops: float, world_size: int) -> None:
        self.flops_per_token, self.peak_flops, self.world_size = flops_per_token, peak_flops, world_size
        self.tokens, self.steps, self.seconds = 0, 0, 0.0

    def add(self, tokens: int, seconds: float) -> None:
        self.tokens += tokens * self.world_size
        self.steps += 1
        self.seconds += seconds

    def figures(self) -> dict[str, float]:
        tokens_per_sec = self.tokens / self.seconds
        figures = {
            "train/tokens_per_sec": tokens_per_sec,
            "train/step_ms": 1000 * self.seconds / self.steps,
            "train/mfu": self.flops_per_token * tokens_per_sec / (self.peak_flops * self.world_size),
        }
        self.tokens, self.steps, self.seconds = 0, 0, 0.0
        return figures


@dataclass
class Run:
    """What one call of `train` trains with: a plain record that the step, evaluation and checkpoint
    functions below take (built by `build_run`)."""

    model: nn.Module  # the module steps run through (compiled, DDP-wrapped)
    raw_model: nn.Module  # the plain module: saved, loaded, evaluated
    config: TrainConfig
    optimizer: torch.optim.Optimizer
    scaler: torch.amp.GradScaler
    device: torch.device
    dtype: torch.dtype
    rank: int
    world_size: int
    sharded: ShardedBackward | None
    caller_threads: int
    params: list[torch.nn.Parameter] = field(default_factory=list)  # clipped every step


def run_autocast(run: Run) -> contextlib.AbstractContextManager:
    return autocast_context(run.device, run.dtype)


def save_run(run: Run, path: Path | None, state: TrainState, extra: dict[str, Any] | None) -> None:
    rng_cpu = [torch.get_rng_state()]
    if run.world_size > 1:
        gathered: list[Any] = [None] * run.world_size
        dist.all_gather_object(gathered, rng_cpu[0])
        rng_cpu = gathered
    if path is None or run.rank != 0:
        return
    save_checkpoint(
        path,
        {
            "model": run.raw_model.state_dict(),
            "optimizer": run.optimizer.state_dict(),
            "scaler": run.scaler.state_dict(),
            **state.state_dict(),
            "rng_cpu": rng_cpu,
            "rng_cuda": [torch.cuda.get_rng_state(run.device)] if run.device.type == "cuda" else [],
            "config": dict(run.config.__dict__),
            **(extra or {}),
        },
    )


def resume_run(run: Run, path: Path, state: TrainState) -> None:
    saved = load_checkpoint(path)
    check_state_fits(run.raw_model, saved["model"], str(path))
    run.raw_model.load_state_dict(saved["model"])
    run.optimizer.load_state_dict(saved["optimizer"])
    run.scaler.load_state_dict(saved["scaler"])
    state.load_state_dict(saved)
    torch.set_rng_state(saved["rng_cpu"][run.rank] if run.rank < len(saved["rng_cpu"]) else saved["rng_cpu"][0])
    if run.device.type == "cuda" and saved.get("rng_cuda"):
        torch.cuda.set_rng_state(saved["rng_cuda"][min(run.rank, len(saved["rng_cuda"]) - 1)], run.device)
    logger.info("resumed from %s at step %d", path, state.step)
    changed = [
        f"{name} {value!r} -> {getattr(run.config, name)!r}"
        for name, value in saved.get("config", {}).items()
        if hasattr(run.config, name) and getattr(run.config, name) != value
    ]
    if changed:  # allowed (say, more max_steps), but the run is no longer one recipe end to end
        logger.warning("resuming with train settings changed since the checkpoint: %s", "; ".join(changed))


def evaluate_run(run: Run, evaluate: Callable[[nn.Module], dict[str, float]]) -> dict[str, float]:
    run.raw_model.eval()
    with (
        intra_op_threads(run.caller_threads),
        torch.no_grad(),
        run_autocast(run),
        shared_across_ranks(run.rank, run.world_size),
    ):
        metrics = evaluate(run.raw_model)
    run.raw_model.train()
    return metrics


def optimizer_step(
    run: Run,
    step: int,
    get_batch: Callable[[torch.Generator], Batch],
    compute_loss: Callable[[nn.Module, Batch], torch.Tensor],
    should_stop: Callable[[], bool] | None,
) -> tuple[float, float, int, bool]:
    """One optimizer step over the micro-batches: (loss, grad norm, tokens, whether any rank was
    asked to stop). `should_stop` is asked once, after the backward."""
    config, device = run.config, run.device
    frozen = []  # layer groups not yet unfrozen: no update, no moments, no share of the clip
    for group in run.optimizer.param_groups:
        scale = layer_lr_scale(group.get("depth", 0), step, config)
        group["lr"] = get_lr(step, config) * scale
        frozen.extend(group["params"] if scale == 0.0 else [])
    loss_sum = torch.zeros((), device=device)
    tokens = 0
    for micro_step in range(config.grad_accum_steps):
        batch = get_batch(batch_generator(config.seed, step, run.rank * config.grad_accum_steps + micro_step))
        batch = tuple(t.to(device, non_blocking=True) for t in batch)
        tokens += batch[0].numel()
        if run.sharded is not None:
            loss_sum += run.sharded(compute_loss, batch, 1 / config.grad_accum_steps)
            continue
        sync = run.world_size == 1 or micro_step == config.grad_accum_steps - 1
        with contextlib.nullcontext() if sync else run.model.no_sync(), run_autocast(run):
            loss = compute_loss(run.model, batch) / config.grad_accum_steps
        run.scaler.scale(loss).backward()
        loss_sum += loss.detach()
    stop = should_stop is not None and bool(should_stop())
    if run.world_size > 1:  # the stop request rides on the loss's all-reduce: every rank stops at one step
        shared = torch.stack([loss_sum, torch.tensor(float(stop), device=device)])
        dist.all_reduce(shared, op=dist.ReduceOp.AVG)
        loss_sum, stop = shared[0], bool(shared[1] > 0)
    loss_value = loss_sum.item()
    if not math.isfinite(loss_value):
        run.optimizer.zero_grad(set_to_none=True)
        return loss_value, float("nan"), tokens, stop
    for p in frozen:
        p.grad = None
    run.scaler.unscale_(run.optimizer)
    clip = config.grad_clip if config.grad_clip > 0 else float("inf")
    grad_norm = float(torch.nn.utils.clip_grad_norm_(run.params, clip))
    run.scaler.step(run.optimizer)
    run.scaler.update()
    run.optimizer.zero_grad(set_to_none=True)
    return loss_value, grad_norm, tokens, stop


def wrap_model(run: Run) -> None:
    """The module the steps run through: compiled and under torchrun DDP-wrapped (after a resume)."""
    if run.config.compile:
        run.model = torch.compile(run.raw_model)
    if run.world_size > 1:
        device_ids = [run.device.index] if run.device.type == "cuda" else None
        run.model = nn.parallel.DistributedDataParallel(run.model, device_ids=device_ids)


@contextlib.contextmanager
def steps_threads(run: Run) -> Iterator[None]:
    """The steps' intra-op threads; the row-shard threads end with the run, whatever ends it.

    With shard threads the main thread only joins the shards and steps the optimizer (memory-bound),
    on one intra-op thread: with more, its OpenMP team, once woken by an evaluation, competes with
    the shards for the cores (nanoGPT's shape: 48 ms a step instead of 40). Evaluations keep the
    caller's threads (evaluate_run).
    """
    try:
        with intra_op_threads(1 if run.sharded is not None else run.caller_threads):
            yield
    finally:
        if run.sharded is not None:
            run.sharded.close()


def build_run(model: nn.Module, config: TrainConfig) -> Run:
    """Device, precision, process group, optimizer, loss scaler and row shards for one run."""
    rank, world_size, device = setup_distributed(config.device)
    dtype = resolve_dtype(config.dtype, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    torch.manual_seed(config.seed + rank)
    batch_threads = resolve_batch_threads(model, config, device, world_size)
    raw_model = model.to(device)
    optimizer = build_optimizer(raw_model, config, device)
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    sharded = None
    if batch_threads > 1:
        sharded = ShardedBackward(raw_model, batch_threads, lambda: autocast_context(device, dtype), scaler)
        logger.info("each micro-batch runs as %d row shards, one thread each", batch_threads)
    params = [p for g in optimizer.param_groups for p in g["params"]]
    return Run(
        raw_model,
        raw_model,
        config,
        optimizer,
        scaler,
        device,
        dtype,
        rank,
        world_size,
        sharded,
        torch.get_num_threads(),
        params,
    )
