from dataclasses import dataclass
from typing import Literal

import pytest

from lmcore.config import config_from_dict
from lmcore.models import build_model_config
from lmcore.train import TrainConfig


@dataclass(frozen=True)
class Inner:
    width: int
    kind: Literal["a", "b"] = "a"


@dataclass(frozen=True)
class Outer:
    name: str
    inner: Inner
    rate: float = 0.5


def test_loads_nested_and_coerces_ints_to_floats():
    cfg = config_from_dict(Outer, {"name": "x", "inner": {"width": 3}, "rate": 1})
    assert cfg == Outer("x", Inner(3), 1.0)


@pytest.mark.parametrize(
    "values, message",
    [
        ({"name": "x", "inner": {"width": 3}, "rat": 1}, "unknown config key 'rat'"),
        ({"name": "x", "inner": {"widht": 3}}, "unknown config key 'inner.widht'"),
        ({"inner": {"width": 3}}, "missing config key 'name'"),
        ({"name": "x", "inner": {"width": "3"}}, "'inner.width' must be an integer"),
        ({"name": "x", "inner": {"width": 3, "kind": "c"}}, "'inner.kind' must be one of"),
    ],
)
def test_errors_name_the_key(values, message):
    with pytest.raises(ValueError, match=message):
        config_from_dict(Outer, values)


def test_require_all_rejects_missing_defaults():
    with pytest.raises(ValueError, match="missing config key 'rate'"):
        config_from_dict(Outer, {"name": "x", "inner": {"width": 1, "kind": "a"}}, require_all=True)
    with pytest.raises(ValueError, match="missing config key 'inner.kind'"):  # nested sections too
        config_from_dict(Outer, {"name": "x", "inner": {"width": 1}, "rate": 0.1}, require_all=True)


@pytest.mark.parametrize(
    "arch, values, message",
    [
        ("gpt", {"n_embd": 30, "n_head": 4}, "^model.n_embd=30 is not divisible by n_head=4"),
        ("gpt", {"n_embd": 24, "n_head": 8}, r"^model.n_embd/n_head=3 must be even for rotary positions"),
        ("gpt", {"n_layers": 2}, "unknown config key 'model.n_layers'"),
        ("gpt", {"dropout": 1.5}, r"^model.dropout must be in \[0, 1\), got 1.5"),
        ("gpt", {"rope_base": 1.0}, "^model.rope_base must be > 1, got 1.0"),
        ("lstm", {"n_hidden": 0}, "^model.n_hidden must be positive, got 0"),
        ("transformer", {}, "model.arch='transformer'"),
    ],
)
def test_model_config_errors(arch, values, message):
    with pytest.raises(ValueError, match=message):
        build_model_config(arch, values)


@pytest.mark.parametrize(
    "values, message",
    [
        (
            {"learning_rate": 1e-3, "min_lr": 1e-2},
            "learning_rate=0.001 and min_lr=0.01 need 0 <= min_lr <= learning_rate",
        ),
        ({"max_steps": 0}, "max_steps must be positive, got 0"),
        ({"batch_size": 4, "batch_threads": 5}, "batch_threads=5 is more than batch_size=4"),
        ({"batch_threads": -1}, "batch_threads must be >= 0"),
        ({"weight_decay": -0.1}, "weight_decay must be >= 0, got -0.1"),
        ({"beta1": 1.0}, r"beta1 must be in \[0, 1\), got 1.0"),
        ({"beta2": -0.5}, r"beta2 must be in \[0, 1\), got -0.5"),
        ({"grad_clip": -1.0}, "grad_clip must be >= 0"),
        ({"peak_flops": -1.0}, "peak_flops must be >= 0"),
        ({"device": "tpu"}, "device='tpu' is not a torch device"),
    ],
)
def test_train_config_errors_name_the_field(values, message):
    with pytest.raises(ValueError, match=f"^{message}"):
        TrainConfig(**values)
    # loaded from a config section, the message names the section as well
    with pytest.raises(ValueError, match=f"^finetune.train.{message}"):
        config_from_dict(TrainConfig, values, "finetune.train")


def test_literal_fields_are_checked_when_built_directly():
    from lmcore.models.gpt import GPTConfig
    from lmcore.tokenizer import TokenizerConfig

    with pytest.raises(ValueError, match=r"norm must be one of \['layernorm', 'rmsnorm'\], got 'batchnorm'"):
        GPTConfig(norm="batchnorm")
    with pytest.raises(ValueError, match="kind must be one of"):
        TokenizerConfig(kind="wordpiece")
    with pytest.raises(
        ValueError, match=r"dtype must be one of \['auto', 'float32', 'bfloat16', 'float16'\], got 'fp8'"
    ):
        TrainConfig(dtype="fp8")


def test_presets_build():
    from lmcore.config import config_from_dict
    from lmcore.models import build_model
    from lmcore.presets import PRESETS, get_preset

    for name, preset in PRESETS.items():
        model_config = build_model_config(preset["arch"], {**preset["model"], "vocab_size": 65})
        assert build_model(preset["arch"], model_config).num_params() > 0, name
        config_from_dict(TrainConfig, preset["train"], f"presets.{name}")
    with pytest.raises(ValueError, match="unknown preset"):
        get_preset("gpt-9000")
