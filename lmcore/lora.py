"""LoRA adapters (Hu et al. 2021) on any lmcore language model, through Hugging Face peft.

A frozen weight W gets a trainable low-rank update (alpha / rank) * B @ A; B starts at zero, so
the adapted model starts as the base model. Targets by architecture (`default_targets`):
- GPT: the attention and MLP projections (`qkv`, `proj`, `up`, `down`), as nn.Linear modules;
- LSTM/GRU: every layer's input and recurrent weights (`rnn.weight_ih_l{k}`, `rnn.weight_hh_l{k}`),
  which nn.LSTM keeps as bare parameters: peft adapts them through `target_parameters`, and the
  projection `down` when the model has one.
The embedding (tied to the output head) stays frozen. `merge_lora` folds the update into W and
gives back the plain lmcore model, which exports and loads like any other.

peft is imported only here, and only when an adapter is asked for (`pip install peft`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch.nn as nn

from lmcore.models.gpt import GPT
from lmcore.models.recurrent import RecurrentLM


@dataclass(frozen=True)
class LoraSettings:
    rank: int = 8
    alpha: float = 16.0
    dropout: float = 0.0  # on the adapter's input; peft applies it to module targets only
    targets: list[str] = field(default_factory=list)  # module or parameter names; empty: default_targets

    def __post_init__(self) -> None:
        if self.rank < 1:
            raise ValueError(f"LoRA rank must be at least 1, got {self.rank}")
        if self.alpha <= 0:
            raise ValueError(f"LoRA alpha must be > 0, got {self.alpha}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"LoRA dropout must be in [0, 1), got {self.dropout}")


def default_targets(model: nn.Module) -> list[str]:
    """The names LoRA adapts by default (see the module docstring)."""
    if isinstance(model, GPT):
        return ["qkv", "proj", "up", "down"]
    if isinstance(model, RecurrentLM):
        layers = range(model.config.n_layer)
        names = [f"rnn.weight_{kind}_l{k}" for k in layers for kind in ("ih", "hh")]
        return names + (["down"] if model.down is not None else [])
    raise ValueError(f"no default LoRA targets for {type(model).__name__}; name them in the settings")


def split_targets(model: nn.Module, targets: list[str]) -> tuple[list[str], list[str]]:
    """(module names, parameter names): peft wraps the first as layers and the second as bare
    parameters; a name that is neither stops with an error naming it."""
    parameters = dict(model.named_parameters())
    module_suffixes = {name.rsplit(".", 1)[-1] for name, _ in model.named_modules() if name}
    modules, params = [], []
    for target in targets:
        if target in parameters:
            params.append(target)
        elif target in module_suffixes or target in dict(model.named_modules()):
            modules.append(target)
        else:
            raise ValueError(f"LoRA target {target!r} names no module or parameter of {type(model).__name__}")
    return modules, params


def add_lora(model: nn.Module, settings: LoraSettings) -> nn.Module:
    """The model with LoRA adapters on its targets: only the adapters train. The returned peft model
    forwards everything else (forward_step, init_state, config...) to the lmcore model."""
    from peft import LoraConfig, get_peft_model

    modules, params = split_targets(model, settings.targets or default_targets(model))
    config = LoraConfig(
        r=settings.rank,
        lora_alpha=settings.alpha,
        lora_dropout=settings.dropout if modules and not params else 0.0,
        target_modules=modules,
        target_parameters=params or None,
    )
    return get_peft_model(model, config)


def merge_lora(model: nn.Module) -> nn.Module:
    """The plain lmcore model with every adapter folded into its weights."""
    return model.merge_and_unload()


def trainable_share(model: nn.Module) -> tuple[int, int]:
    """(trainable parameters, all parameters), each shared tensor counted once."""
    seen = {id(p): p for p in model.parameters()}.values()
    return sum(p.numel() for p in seen if p.requires_grad), sum(p.numel() for p in seen)
