"""The one training loop, used by pretraining and by finetuning (language model or classifier).

`train` reads top to bottom: learning rate, evaluation and checkpoint when due, forward and
backward over micro-batches, clip, step, log. What differs between tasks comes in as plain
callables: `get_batch(generator)`, `compute_loss(model, batch)` and `evaluate(model)`.

Every micro-batch draws from its own generator seeded by (seed, step, slot), so a resumed run
and a data-parallel run see exactly the batches of an uninterrupted single-process run with the
same global batch. Under torchrun the same function runs DDP (NCCL on GPUs, gloo on CPU), and
the `evaluate` callable runs on every rank with lmcore's evaluation functions splitting their
batches over the ranks (see `lmcore.evaluate.shared_across_ranks`).
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from lmcore.checkpoint import CHECKPOINT_NAME, check_state_fits, load_checkpoint, save_checkpoint
from lmcore.config import check_choices
from lmcore.evaluate import shared_across_ranks

logger = logging.getLogger(__name__)

Batch = tuple[torch.Tensor, ...]
LogFn = Callable[[int, dict[str, float]], None]


@dataclass(frozen=True)
class TrainConfig:
    max_steps: int = 1000
    batch_size: int = 32  # per rank and micro-step
    grad_accum_steps: int = 1
    learning_rate: float = 1e-3
    min_lr: float = 1e-4
    warmup_steps: int = 100
    lr_decay_steps: int = 0  # steps of cosine decay to min_lr; 0 means max_steps
    weight_decay: float = 0.1
    beta1: float = 0.9
    beta2: float = 0.95
    grad_clip: float = 1.0  # 0 turns clipping off
    eval_interval: int = 250
    checkpoint_interval: int = 250
    log_interval: int = 10
    seed: int = 1337
    device: str = "auto"  # auto: cuda, then mps, then cpu
    dtype: Literal["auto", "float32", "bfloat16", "float16"] = "auto"  # auto: bf16 on CUDA, fp32 elsewhere
    compile: bool = False
    early_stopping_patience: int = 0  # evaluations without improvement before stopping; 0 is off
    early_stopping_metric: str = "loss"
    early_stopping_mode: Literal["min", "max"] = "min"
    peak_flops: float = 0.0  # for MFU; 0 measures a matmul on the device once per process
    # CPU only: split each micro-batch by rows over this many threads of one intra-op thread each
    # (see ShardedBackward). 1 runs the batch whole, with torch's own intra-op threads; 0 is auto:
    # torch.get_num_threads() where the run allows it (CPU, one process, no dropout, no compile).
    batch_threads: int = 1

    def __post_init__(self) -> None:
        for name in (
            "max_steps",
            "batch_size",
            "grad_accum_steps",
            "eval_interval",
            "checkpoint_interval",
            "log_interval",
        ):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        if self.learning_rate <= 0 or self.min_lr < 0 or self.min_lr > self.learning_rate:
            raise ValueError(
                f"learning_rate={self.learning_rate} and min_lr={self.min_lr} need 0 <= min_lr <= learning_rate"
            )
        for name in ("warmup_steps", "lr_decay_steps", "weight_decay", "early_stopping_patience"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in [0, 1), got {getattr(self, name)}")
        if self.grad_clip < 0:
            raise ValueError(f"grad_clip must be >= 0 (0 turns clipping off), got {self.grad_clip}")
        if self.peak_flops < 0:
            raise ValueError(f"peak_flops must be >= 0 (0 measures it), got {self.peak_flops}")
        if self.device != "auto":
            parse_device(self.device)  # a config may be written on a machine other than the one it runs on
        check_choices(self)
        if self.batch_threads < 0:
            raise ValueError(f"batch_threads must be >= 0 (0 is auto), got {self.batch_threads}")
        if self.batch_threads > self.batch_size:
            raise ValueError(
                f"batch_threads={self.batch_threads} is more than batch_size={self.batch_size}:"
                " every thread needs at least one row"
            )


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


def get_lr(step: int, config: TrainConfig) -> float:
    """Linear warmup to learning_rate, then cosine decay to min_lr, then flat."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    decay_steps = config.lr_decay_steps or config.max_steps
    if step >= decay_steps:
        return config.min_lr
    progress = (step - config.warmup_steps) / max(1, decay_steps - config.warmup_steps)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.learning_rate - config.min_lr)


def batch_generator(seed: int, step: int, slot: int) -> torch.Generator:
    """The generator of one micro-batch: a pure function of (seed, step, slot)."""
    return torch.Generator().manual_seed(hash((seed, step, slot)) & 0x7FFF_FFFF_FFFF_FFFF)


def parse_device(name: str) -> torch.device:
    """A named torch device, whether or not this machine has it; a misspelt name is a ValueError."""
    try:
        return torch.device(name)
    except RuntimeError:
        raise ValueError(f"device={name!r} is not a torch device (auto, cpu, cuda, cuda:1, mps)") from None


def resolve_device(name: str) -> torch.device:
    """`auto` is cuda, then mps, then cpu; a named device that this machine lacks is a ValueError."""
    if name != "auto":
        device = parse_device(name)
        if device.type == "cuda" and not torch.cuda.is_available():
            raise ValueError(f"device={name!r}, but this torch sees no CUDA GPU")
        if device.type == "mps" and not torch.backends.mps.is_available():
            raise ValueError(f"device={name!r}, but MPS is not available here")
        return device
    if torch.cuda.is_available():
        return torch.device("cuda")
    if torch.backends.mps.is_available():
        return torch.device("mps")
    return torch.device("cpu")


def resolve_dtype(name: str, device: torch.device) -> torch.dtype:
    if name == "auto":
        if device.type != "cuda":
            return torch.float32  # bf16 autocast on CPU was 12% slower at these sizes
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[name]


def autocast_context(device: torch.device, dtype: torch.dtype) -> contextlib.AbstractContextManager:
    if dtype == torch.float32:
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=dtype)


_PEAK_CACHE: dict[tuple[str, torch.dtype], float] = {}


def measure_peak_flops(device: torch.device, dtype: torch.dtype, size: int = 2048, repeats: int = 3) -> float:
    """Best observed dense matmul FLOP/s on `device` in `dtype`: the MFU denominator."""
    key = (str(device), dtype)
    if key not in _PEAK_CACHE:
        a = torch.randn(size, size, device=device, dtype=dtype)
        b = torch.randn(size, size, device=device, dtype=dtype)
        # A GPU does a 2048^3 product in tens of microseconds, the order of a launch and a sync:
        # time several back to back there.
        products = 1 if device.type == "cpu" else 20
        best = float("inf")
        for _ in range(repeats + 1):  # the first round warms up
            _synchronize(device)
            start = time.perf_counter()
            for _ in range(products):
                a @ b
            _synchronize(device)
            best = min(best, (time.perf_counter() - start) / products)
        _PEAK_CACHE[key] = 2 * size**3 / best
    return _PEAK_CACHE[key]


def _synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def setup_distributed(device_name: str) -> tuple[int, int, torch.device]:
    """(rank, world_size, device); joins the process group when launched by torchrun."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    if world_size == 1:
        return 0, 1, resolve_device(device_name)
    local_rank = int(os.environ["LOCAL_RANK"])
    device = resolve_device(device_name)
    if device.type == "cuda":
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if device.type == "cuda" else "gloo")
    return dist.get_rank(), world_size, device


def lm_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    """Mean next-token cross-entropy for (x, y) batches."""
    x, y = batch
    logits = model(x)  # (B, T, V)
    return F.cross_entropy(logits.float().view(-1, logits.size(-1)), y.reshape(-1))


def classification_loss(model: nn.Module, batch: Batch) -> torch.Tensor:
    idx, lengths, labels = batch
    return F.cross_entropy(model(idx, lengths).float(), labels)


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    # Matrices and embeddings decay; biases and norm gains do not.
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    # The fused kernel exists for CUDA and CPU; on CPU it is 8x faster than foreach here.
    fast = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2), **fast)


class ShardedBackward:
    """Forward and backward of one micro-batch as row shards on concurrent CPU threads.

    A small model's kernels are too short to split well over cores: on 2 cores nanoGPT's CPU
    shape steps faster as two half-batches on two threads of one intra-op thread each than as one
    batch on two intra-op threads (README, throughput). Each shard's loss is weighted by its share
    of the rows, so for a loss that is a mean over rows (as for gradient accumulation) the
    gradient is the whole batch's. Shard gradients come back from `torch.autograd.grad` and are
    added in shard order, so a run is deterministic and resumes exactly; it differs from a
    single-thread run only by float rounding.

    Dropout would draw from torch's global generator in whatever order the threads reach it,
    so a model with active dropout is refused, as is torch.compile (Dynamo is not thread-safe).
    """

    def __init__(
        self,
        model: nn.Module,
        threads: int,
        amp: Callable[[], contextlib.AbstractContextManager],
        scaler: torch.amp.GradScaler,
    ) -> None:
        self.model = model
        self.params = [p for p in model.parameters() if p.requires_grad]
        self.threads = threads
        self.scaler = scaler
        self.amp = amp  # autocast state is per thread: each shard enters its own
        # The intra-op thread count is per thread, so the caller's own setting stays as it is.
        self.pool = ThreadPoolExecutor(
            threads, thread_name_prefix="lmcore-shard", initializer=torch.set_num_threads, initargs=(1,)
        )

    def __call__(
        self, compute_loss: Callable[[nn.Module, Batch], torch.Tensor], batch: Batch, weight: float
    ) -> torch.Tensor:
        """Accumulate weight * d(loss)/d(params) into .grad; return weight * loss, detached."""
        rows = batch[0].size(0)
        shards = list(zip(*(t.tensor_split(min(self.threads, rows)) for t in batch), strict=True))

        def forward_backward(shard: Batch) -> tuple[torch.Tensor, tuple[torch.Tensor | None, ...]]:
            with self.amp():
                loss = compute_loss(self.model, shard) * (weight * shard[0].size(0) / rows)
            return loss.detach(), torch.autograd.grad(self.scaler.scale(loss), self.params, allow_unused=True)

        results = list(self.pool.map(forward_backward, shards))
        for i, param in enumerate(self.params):
            grads = [shard_grads[i] for _, shard_grads in results if shard_grads[i] is not None]
            if not grads:
                continue
            total = grads[0]  # autograd.grad's own fresh tensor: adding in place saves an allocation
            for grad in grads[1:]:
                total.add_(grad)  # 10x faster here than `a + b`, which faults in new pages
            if param.grad is None:
                param.grad = total
            else:
                param.grad.add_(total)
        return sum((loss for loss, _ in results[1:]), results[0][0])

    def close(self) -> None:
        self.pool.shutdown()


@contextlib.contextmanager
def intra_op_threads(count: int) -> Iterator[None]:
    """torch's intra-op thread count for the calling thread inside the block, restored after it."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def resolve_batch_threads(model: nn.Module, config: TrainConfig, device: torch.device, world_size: int) -> int:
    """train.batch_threads as a count: 0 (auto) is torch's thread count where splitting is allowed, else 1."""
    problem = None
    if device.type != "cpu":
        problem = f"runs on CPU only, the device is {device}"
    elif world_size > 1:
        problem = "is for one process; under torchrun run one rank per core instead"
    elif config.compile:
        problem = "cannot be combined with compile=true (Dynamo is not thread-safe)"
    elif any(_dropout_of(m) > 0 for m in model.modules()):
        problem = "needs dropout 0: threads would draw dropout masks from torch's global generator in a racy order"
    if config.batch_threads == 0:
        return 1 if problem else min(torch.get_num_threads(), config.batch_size)
    if problem and config.batch_threads > 1:
        raise ValueError(f"batch_threads={config.batch_threads} {problem}")
    return config.batch_threads


def _dropout_of(module: nn.Module) -> float:
    if isinstance(module, nn.modules.dropout._DropoutNd):
        return module.p
    if isinstance(module, nn.RNNBase):
        return module.dropout
    return 0.0


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
        raise ValueError(
            f"early_stopping_patience={config.early_stopping_patience} needs an `evaluate` function"
            f" that reports {config.early_stopping_metric!r}"
        )
    rank, world_size, device = setup_distributed(config.device)
    is_master = rank == 0
    dtype = resolve_dtype(config.dtype, device)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    log = log if (log is not None and is_master) else (lambda step, metrics: None)
    torch.manual_seed(config.seed + rank)

    batch_threads = resolve_batch_threads(model, config, device, world_size)
    raw_model = model.to(device)
    optimizer = build_optimizer(raw_model, config, device)
    params = [p for g in optimizer.param_groups for p in g["params"]]  # fixed for the run: clipped every step
    scaler = torch.amp.GradScaler(device.type, enabled=dtype == torch.float16)
    step, last_eval_step, best_metric, bad_evals, best_state, stopped_early = 0, -1, None, 0, None, False
    train_loss, eval_metrics = float("nan"), {}
    checkpoint_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    if checkpoint_path is not None and checkpoint_path.exists():
        state = load_checkpoint(checkpoint_path)
        check_state_fits(raw_model, state["model"], str(checkpoint_path))
        raw_model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scaler.load_state_dict(state["scaler"])
        step, last_eval_step = state["step"], state["last_eval_step"]
        best_metric, bad_evals, best_state = state["best_metric"], state["bad_evals"], state["best_model"]
        # A run that had stopped early stays stopped, instead of training on past its stop; a
        # finished run, resumed, reports its last figures.
        stopped_early = bool(config.early_stopping_patience) and bad_evals >= config.early_stopping_patience
        train_loss, eval_metrics = state.get("train_loss", train_loss), state.get("eval_metrics", eval_metrics)
        torch.set_rng_state(state["rng_cpu"][rank] if rank < len(state["rng_cpu"]) else state["rng_cpu"][0])
        if device.type == "cuda" and state.get("rng_cuda"):
            torch.cuda.set_rng_state(state["rng_cuda"][min(rank, len(state["rng_cuda"]) - 1)], device)
        logger.info("resumed from %s at step %d", checkpoint_path, step)
        changed = [
            f"{name} {saved!r} -> {getattr(config, name)!r}"
            for name, saved in state.get("config", {}).items()
            if hasattr(config, name) and getattr(config, name) != saved
        ]
        if changed:  # allowed (say, more max_steps), but the run is no longer one recipe end to end
            logger.warning("resuming with train settings changed since the checkpoint: %s", "; ".join(changed))
    model = torch.compile(raw_model) if config.compile else raw_model
    if world_size > 1:
        model = nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    peak_flops = config.peak_flops or measure_peak_flops(device, dtype)
    flops_per_token = raw_model.flops_per_token() if hasattr(raw_model, "flops_per_token") else 0.0
    sharded = None
    caller_threads = torch.get_num_threads()
    if batch_threads > 1:
        sharded = ShardedBackward(raw_model, batch_threads, lambda: autocast_context(device, dtype), scaler)
        logger.info("each micro-batch runs as %d row shards, one thread each", batch_threads)

    def run_eval() -> dict[str, float]:
        raw_model.eval()
        with (
            intra_op_threads(caller_threads),
            torch.no_grad(),
            autocast_context(device, dtype),
            shared_across_ranks(rank, world_size),
        ):
            metrics = evaluate(raw_model)
        raw_model.train()
        return metrics

    def write_checkpoint() -> None:
        rng_cpu = [torch.get_rng_state()]
        if world_size > 1:
            gathered: list[Any] = [None] * world_size
            dist.all_gather_object(gathered, rng_cpu[0])
            rng_cpu = gathered
        if checkpoint_path is None or not is_master:
            return
        save_checkpoint(
            checkpoint_path,
            {
                "model": raw_model.state_dict(),
                "optimizer": optimizer.state_dict(),
                "scaler": scaler.state_dict(),
                "step": step,
                "last_eval_step": last_eval_step,
                "best_metric": best_metric,
                "bad_evals": bad_evals,
                "best_model": best_state,
                "train_loss": train_loss,
                "eval_metrics": eval_metrics,
                "rng_cpu": rng_cpu,
                "rng_cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else [],
                "config": {k: v for k, v in config.__dict__.items()},
                **(checkpoint_extra or {}),
            },
        )

    stop_requested = False
    tokens_since_log, steps_since_log, time_since_log = 0, 0, 0.0
    raw_model.train()
    # With shard threads the steps run the main thread on one intra-op thread: it only joins the
    # shards and steps the optimizer (memory-bound), and with more its OpenMP team, once woken by
    # an evaluation, competes with the shards for the cores: nanoGPT's shape stepped in 48 ms
    # instead of 40 with an evaluation every 25 steps. Evaluations keep the caller's threads.
    if sharded is not None:
        torch.set_num_threads(1)  # restored in the finally below
    try:
        while True:
            final = step >= config.max_steps
            if stop_requested and not final:
                write_checkpoint()
                raise TrainingInterrupted(step, checkpoint_path)
            if (
                evaluate is not None
                and step != last_eval_step
                and (final or (step > 0 and step % config.eval_interval == 0))
            ):
                eval_metrics = run_eval()
                last_eval_step = step
                log(step, {f"val/{k}": v for k, v in eval_metrics.items()})
                if config.early_stopping_patience:
                    if config.early_stopping_metric not in eval_metrics:
                        raise ValueError(
                            f"early_stopping_metric={config.early_stopping_metric!r} is not among the"
                            f" evaluation's metrics {sorted(eval_metrics)}"
                        )
                    value = eval_metrics[config.early_stopping_metric]
                    better = best_metric is None or (
                        value < best_metric if config.early_stopping_mode == "min" else value > best_metric
                    )
                    if better:
                        best_metric, bad_evals = value, 0
                        best_state = {k: v.detach().to("cpu", copy=True) for k, v in raw_model.state_dict().items()}
                    else:
                        bad_evals += 1
                        stopped_early = bad_evals >= config.early_stopping_patience
            if final or stopped_early or (step > 0 and step % config.checkpoint_interval == 0):
                write_checkpoint()
            if final or stopped_early:
                break

            t0 = time.perf_counter()
            lr = get_lr(step, config)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss_sum = torch.zeros((), device=device)
            tokens = 0
            for micro_step in range(config.grad_accum_steps):
                batch = get_batch(batch_generator(config.seed, step, rank * config.grad_accum_steps + micro_step))
                batch = tuple(t.to(device, non_blocking=True) for t in batch)
                tokens += batch[0].numel()
                if sharded is not None:
                    loss_sum += sharded(compute_loss, batch, 1 / config.grad_accum_steps)
                    continue
                sync = world_size == 1 or micro_step == config.grad_accum_steps - 1
                with contextlib.nullcontext() if sync else model.no_sync(), autocast_context(device, dtype):
                    loss = compute_loss(model, batch) / config.grad_accum_steps
                scaler.scale(loss).backward()
                loss_sum += loss.detach()
            stop_requested = should_stop is not None and bool(should_stop())
            if world_size > 1:  # the stop request rides on the loss's all-reduce: every rank stops at one step
                shared = torch.stack([loss_sum, torch.tensor(float(stop_requested), device=device)])
                dist.all_reduce(shared, op=dist.ReduceOp.AVG)
                loss_sum, stop_requested = shared[0], bool(shared[1] > 0)
            train_loss = loss_sum.item()
            if not math.isfinite(train_loss):
                optimizer.zero_grad(set_to_none=True)
                raise TrainingDivergedError(
                    f"loss is {train_loss} at step {step}; training stopped, the last good checkpoint"
                    f" ({checkpoint_path or 'none written'}) is kept"
                )
            scaler.unscale_(optimizer)
            grad_norm = torch.nn.utils.clip_grad_norm_(
                params, config.grad_clip if config.grad_clip > 0 else float("inf")
            )
            scaler.step(optimizer)
            scaler.update()
            optimizer.zero_grad(set_to_none=True)
            step += 1

            _synchronize(device)
            tokens_since_log += tokens * world_size
            steps_since_log += 1
            time_since_log += time.perf_counter() - t0
            if step % config.log_interval == 0 or step == config.max_steps:
                tokens_per_sec = tokens_since_log / time_since_log
                log(
                    step,
                    {
                        "train/loss": train_loss,
                        "train/lr": lr,
                        "train/grad_norm": float(grad_norm),
                        "train/tokens_per_sec": tokens_per_sec,
                        "train/step_ms": 1000 * time_since_log / steps_since_log,
                        "train/mfu": flops_per_token * tokens_per_sec / (peak_flops * world_size),
                    },
                )
                tokens_since_log, steps_since_log, time_since_log = 0, 0, 0.0
    finally:
        torch.set_num_threads(caller_threads)
        if sharded is not None:
            sharded.close()

    if config.early_stopping_patience and best_state is not None:
        raw_model.load_state_dict(best_state)  # finetuning keeps the best validated weights
    return TrainResult(step, train_loss, eval_metrics, best_metric, stopped_early)
