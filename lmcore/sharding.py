"""CPU row sharding: one micro-batch's forward and backward as row shards on concurrent threads.

A small model's kernels are too short to split well over cores: on 2 cores nanoGPT's CPU shape
steps 1.1-1.3x faster as two half-batches on two threads of one intra-op thread each than as one
batch on two intra-op threads, and the default 2x256 LSTM 1.2x (docs/benchmarks.md). Kept for
that, in its own module so the training loop reads without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import torch
import torch.nn as nn

if TYPE_CHECKING:
    from lmcore.train_config import TrainConfig
    from lmcore.train_state import Batch


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


def batch_threads_problem(config: TrainConfig, device_type: str, world_size: int, dropout: float) -> str | None:
    """Why a run cannot split its micro-batches over threads (None: it can). `dropout` is the
    model's largest dropout; a config loader calls this before any model exists."""
    if device_type != "cpu":
        return f"runs on CPU only, the device is {device_type}"
    if world_size > 1:
        return "is for one process; under torchrun run one rank per core instead"
    if config.compile:
        return "cannot be combined with compile=true (Dynamo is not thread-safe)"
    if dropout > 0:
        return "needs dropout 0: threads would draw dropout masks from torch's global generator in a racy order"
    return None


def resolve_batch_threads(model: nn.Module, config: TrainConfig, device: torch.device, world_size: int) -> int:
    """train.batch_threads as a count: 0 (auto) is torch's thread count where splitting is allowed, else 1."""
    dropout = max((_dropout_of(m) for m in model.modules()), default=0.0)
    problem = batch_threads_problem(config, device.type, world_size, dropout)
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
