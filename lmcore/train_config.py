"""The training recipe: `TrainConfig` and the pure functions of it (the learning rate at a
step, the generator of a micro-batch), and the optimizer it builds."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from lmcore.config import check_choices
from lmcore.runtime import parse_device


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
    # ULMFiT's finetuning (Howard and Ruder 2018), on models with layer_groups(): each group below
    # the top trains at the learning rate divided by layer_lr_decay per group (their 2.6; 1 is
    # off), and with unfreeze_interval N only the top group trains for the first N steps, then one
    # more group every N steps (0: all groups from the start).
    layer_lr_decay: float = 1.0
    unfreeze_interval: int = 0

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
        if self.layer_lr_decay < 1.0:
            raise ValueError(f"layer_lr_decay must be >= 1 (1 is off), got {self.layer_lr_decay}")
        for name in ("warmup_steps", "lr_decay_steps", "weight_decay", "early_stopping_patience", "unfreeze_interval"):
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


def get_lr(step: int, config: TrainConfig) -> float:
    """Linear warmup to learning_rate, then cosine decay to min_lr, then flat."""
    if step < config.warmup_steps:
        return config.learning_rate * (step + 1) / config.warmup_steps
    decay_steps = config.lr_decay_steps or config.max_steps
    if step >= decay_steps:
        return config.min_lr
    progress = (step - config.warmup_steps) / max(1, decay_steps - config.warmup_steps)
    return config.min_lr + 0.5 * (1.0 + math.cos(math.pi * progress)) * (config.learning_rate - config.min_lr)


def layer_lr_scale(depth: int, step: int, config: TrainConfig) -> float:
    """The learning rate's factor for the layer group `depth` groups below the top, at `step`:
    0 while the group is still frozen."""
    if config.unfreeze_interval and depth > step // config.unfreeze_interval:
        return 0.0
    return config.layer_lr_decay**-depth


def layered(config: TrainConfig) -> bool:
    return config.layer_lr_decay != 1.0 or config.unfreeze_interval > 0


def batch_generator(seed: int, step: int, slot: int) -> torch.Generator:
    """The generator of one micro-batch: a pure function of (seed, step, slot)."""
    return torch.Generator().manual_seed(hash((seed, step, slot)) & 0x7FFF_FFFF_FFFF_FFFF)


def build_optimizer(model: nn.Module, config: TrainConfig, device: torch.device) -> torch.optim.AdamW:
    params = [p for p in model.parameters() if p.requires_grad]
    if not params:
        raise ValueError("the model has no trainable parameters")
    by_depth = [params] if not layered(config) else layers_top_down(model, params)
    # Matrices and embeddings decay; biases and norm gains do not.
    groups = [
        {"params": [p for p in layer if (p.dim() >= 2) == decays], "weight_decay": wd, "depth": depth}
        for depth, layer in enumerate(by_depth)
        for decays, wd in ((True, config.weight_decay), (False, 0.0))
    ]
    # The fused kernel exists for CUDA and CPU; on CPU it is 8x faster than foreach here.
    fast = {"fused": True} if device.type in ("cuda", "cpu") else {"foreach": True}
    return torch.optim.AdamW(groups, lr=config.learning_rate, betas=(config.beta1, config.beta2), **fast)


def layers_top_down(model: nn.Module, params: list[nn.Parameter]) -> list[list[nn.Parameter]]:
    """The trainable `params` by layer group, the top group first; each parameter once."""
    if not hasattr(model, "layer_groups"):
        raise ValueError(
            f"layer_lr_decay and unfreeze_interval need a model with layer_groups(); {type(model).__name__} has none"
        )
    trainable, seen, layers = {id(p) for p in params}, set(), []
    for group in reversed(model.layer_groups()):
        layers.append([p for p in group if id(p) in trainable and id(p) not in seen])
        seen.update(id(p) for p in group)
    if missing := trainable - seen:
        raise ValueError(
            f"{len(missing)} trainable parameters of {type(model).__name__} are in none of its layer_groups()"
        )
    return layers
