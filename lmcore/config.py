"""Strict loading of plain dicts into the frozen config dataclasses that live beside the code.

An unknown key, a missing key (when the dataclass gives no default, or `require_all` asks for
every key of every section; items of a list may still leave out defaulted keys) or a value of the
wrong type is a ValueError that names the section and key, raised before any work starts. The
dataclasses' own checks (`__post_init__`) start their messages with the field's name, to which
loading adds the section: `finetune.train.beta1 must be in [0, 1), got 1.5`. Written here rather
than taken from pydantic or dacite: lmcore depends on torch, numpy, tokenizers and safetensors only.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


def config_from_dict(cls: type[T], values: dict[str, Any], section: str = "", require_all: bool = False) -> T:
    """Build dataclass `cls` from `values`; nested dataclass fields load recursively."""
    where = f"{section}." if section else ""
    if not isinstance(values, dict):
        raise ValueError(f"config section '{section or cls.__name__}' must be a mapping, got {values!r}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ValueError(f"unknown config key '{where}{unknown[0]}' (known keys: {', '.join(sorted(fields))})")
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for name, field in fields.items():
        has_default = field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING
        if name not in values:
            if require_all or not has_default:
                raise ValueError(f"missing config key '{where}{name}'")
            continue
        kwargs[name] = _coerce(hints[name], values[name], f"{where}{name}", require_all)
    try:
        return cls(**kwargs)
    except ValueError as error:
        raise ValueError(f"{where}{error}") from None


def check_choices(config: Any) -> None:
    """Each Literal-typed field holds one of its values, also when the dataclass is built directly."""
    for name, hint in typing.get_type_hints(type(config)).items():
        allowed = typing.get_args(hint)
        if typing.get_origin(hint) is typing.Literal and getattr(config, name) not in allowed:
            raise ValueError(f"{name} must be one of {list(allowed)}, got {getattr(config, name)!r}")


def _coerce(hint: Any, value: Any, key: str, require_all: bool = False) -> Any:
    """Check `value` against the annotation `hint`; ints are accepted where floats are expected."""
    origin = typing.get_origin(hint)
    if dataclasses.is_dataclass(hint):
        return config_from_dict(hint, value, key, require_all)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in options:
            if option is type(None):
                continue
            try:
                return _coerce(option, value, key, require_all)
            except ValueError as error:
                errors.append(str(error))
        raise ValueError(errors[0] if errors else f"config key '{key}' has invalid value {value!r}")
    if origin is typing.Literal:
        allowed = typing.get_args(hint)
        if value not in allowed:
            raise ValueError(f"config key '{key}' must be one of {list(allowed)}, got {value!r}")
        return value
    if origin in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"config key '{key}' must be a list, got {value!r}")
        (item_hint, *_) = typing.get_args(hint) or (Any,)
        # An item of a list (a data source, say) may leave out the keys that have defaults.
        items = [_coerce(item_hint, item, f"{key}[{i}]") for i, item in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict:
        if not isinstance(value, dict):
            raise ValueError(f"config key '{key}' must be a mapping, got {value!r}")
        _, value_hint = typing.get_args(hint) or (str, Any)
        return {name: _coerce(value_hint, item, f"{key}.{name}", require_all) for name, item in value.items()}
    if hint is Any:
        return value
    if hint is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ValueError(f"config key '{key}' must be a number, got {value!r}")
        return float(value)
    if hint is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"config key '{key}' must be an integer, got {value!r}")
        return value
    if hint is bool:
        if not isinstance(value, bool):
            raise ValueError(f"config key '{key}' must be true or false, got {value!r}")
        return value
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"config key '{key}' must be a string, got {value!r}")
        return value
    return value


def config_to_dict(config: Any) -> dict[str, Any]:
    """The plain-dict form of a config dataclass (JSON-ready)."""
    return dataclasses.asdict(config)
