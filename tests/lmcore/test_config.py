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
        ("gpt", {"n_embd": 30, "n_head": 4}, "n_embd=30 is not divisible by model.n_head=4"),
        ("gpt", {"n_layers": 2}, "unknown config key 'model.n_layers'"),
        ("gpt", {"dropout": 1.5}, "dropout"),
        ("lstm", {"n_hidden": 0}, "n_hidden"),
        ("transformer", {}, "model.arch='transformer'"),
    ],
)
def test_model_config_errors(arch, values, message):
    with pytest.raises(ValueError, match=message):
        build_model_config(arch, values)


def test_train_config_errors():
    with pytest.raises(ValueError, match="min_lr"):
        TrainConfig(learning_rate=1e-3, min_lr=1e-2)
    with pytest.raises(ValueError, match="train.max_steps"):
        TrainConfig(max_steps=0)
    with pytest.raises(ValueError, match="train.batch_threads=5 is more than train.batch_size=4"):
        TrainConfig(batch_size=4, batch_threads=5)
    with pytest.raises(ValueError, match="train.batch_threads must be >= 0"):
        TrainConfig(batch_threads=-1)


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
