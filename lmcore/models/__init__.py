"""Model registry: one line per architecture, mapping `model.arch` to its config and class."""

from __future__ import annotations

from typing import Any

import torch.nn as nn

from lmcore.config import config_from_dict
from lmcore.models.classifier import SequenceClassifier
from lmcore.models.gpt import GPT, GPTConfig
from lmcore.models.recurrent import RecurrentConfig, RecurrentLM

ARCHITECTURES: dict[str, tuple[type, type[nn.Module], dict[str, Any]]] = {
    "gpt": (GPTConfig, GPT, {}),
    "lstm": (RecurrentConfig, RecurrentLM, {"cell": "lstm"}),
    "gru": (RecurrentConfig, RecurrentLM, {"cell": "gru"}),
}


def build_model_config(arch: str, values: dict[str, Any], section: str = "model") -> Any:
    """The config dataclass of `arch` from a flat dict (unknown keys are a ValueError)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"{section}.arch={arch!r} is not one of {sorted(ARCHITECTURES)}")
    config_class, _, fixed = ARCHITECTURES[arch]
    return config_from_dict(config_class, {**values, **fixed}, section)


def build_model(arch: str, config: Any) -> nn.Module:
    config_class, model_class, _ = ARCHITECTURES[arch]
    if not isinstance(config, config_class):
        raise ValueError(f"arch {arch!r} takes a {config_class.__name__}, got {type(config).__name__}")
    return model_class(config)


__all__ = [
    "ARCHITECTURES",
    "GPT",
    "GPTConfig",
    "RecurrentConfig",
    "RecurrentLM",
    "SequenceClassifier",
    "build_model",
    "build_model_config",
]
