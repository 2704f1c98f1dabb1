"""Training checkpoints (written atomically) and exported models (safetensors + JSON config).

A checkpoint is a `torch.save` dict of tensors and plain values, read back only with
`weights_only=True`. An exported model folder holds `model.safetensors`, `config.json` and,
when given, `tokenizer.json`; it is what generation, evaluation and serving load.
"""

from __future__ import annotations

import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import safetensors
import safetensors.torch
import torch
import torch.nn as nn

from lmcore.models import SequenceClassifier, build_model, build_model_config
from lmcore.tokenizer import TextTokenizer, load_tokenizer, read_tokenizer_file, tokenizer_sha256

CHECKPOINT_NAME = "checkpoint.pt"
WEIGHTS_NAME = "model.safetensors"  # in an exported model folder


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> None:
    """Write `state` to `path` so that a crash mid-write leaves the previous file intact."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        with open(tmp, "wb") as f:
            torch.save(state, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()


def load_checkpoint(path: str | os.PathLike) -> dict[str, Any]:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch.load fails on damaged files in many ways (zip, pickle, EOF, KeyError)
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        raise ValueError(f"{path} cannot be read as a checkpoint ({reason}); move it away to start afresh") from None


def check_state_fits(model: nn.Module, weights: dict[str, torch.Tensor], source: str) -> None:
    """Raise ValueError naming every key of `weights` that `model` lacks, misses or shapes otherwise."""
    own = model.state_dict()
    problems = [f"missing {k}" for k in sorted(own.keys() - weights.keys())]
    problems += [f"unexpected {k}" for k in sorted(weights.keys() - own.keys())]
    problems += [
        f"{k} is {tuple(weights[k].shape)} there but {tuple(own[k].shape)} here"
        for k in sorted(own.keys() & weights.keys())
        if weights[k].shape != own[k].shape
    ]
    if problems:
        raise ValueError(
            f"{source} does not fit this model (another model config or tokenizer?): "
            + "; ".join(problems[:5])
            + (f"; and {len(problems) - 5} more" if len(problems) > 5 else "")
        )


def export_model(
    directory: str | os.PathLike,
    model: nn.Module,
    arch: str,
    model_config: dict[str, Any],
    tokenizer_path: str | os.PathLike | None = None,
    extra: dict[str, Any] | None = None,
) -> Path:
    """Write weights and config to `directory` (replaced as a whole, via a sibling temp dir).

    With a tokenizer, config.json records its SHA-256, so loading refuses a folder whose
    tokenizer.json was swapped later; an `extra` tokenizer_sha256 that names another tokenizer is
    refused here, before anything is written.
    """
    directory = Path(directory)
    extra = dict(extra or {})
    if tokenizer_path is not None:
        sha256 = tokenizer_sha256(read_tokenizer_file(tokenizer_path))
        if extra.setdefault("tokenizer_sha256", sha256) != sha256:
            raise ValueError(
                f"{tokenizer_path} is not the tokenizer the model was trained with"
                f" (extra tokenizer_sha256={extra['tokenizer_sha256'][:12]}..., the file's is {sha256[:12]}...)"
            )
    model = getattr(model, "_orig_mod", model)  # the uncompiled module's state
    with folder_swap(directory) as tmp:
        safetensors.torch.save_model(model, str(tmp / WEIGHTS_NAME))
        config: dict[str, Any] = {"arch": arch, "model": model_config, **extra}
        if isinstance(model, SequenceClassifier):
            config["classifier"] = {"num_classes": model.head.out_features, "pooling": model.pooling}
        (tmp / "config.json").write_text(json.dumps(config, indent=2))
        if tokenizer_path is not None:
            shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
    return directory


@contextmanager
def folder_swap(directory: Path) -> Iterator[Path]:
    """A fresh sibling temp folder to write into; it replaces `directory` as a whole once the block
    ends without an error (an error leaves `directory` as it was)."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        yield tmp
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(tmp, directory)


def load_model(directory: str | os.PathLike, device: str | torch.device = "cpu") -> tuple[nn.Module, dict[str, Any]]:
    """Rebuild an exported model; returns (model in eval mode, config dict)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    weights_path = directory / WEIGHTS_NAME
    for path in (config_path, weights_path):
        if not path.exists():
            raise ValueError(f"{directory} is not an exported model folder: {path} is missing")
    try:
        config = json.loads(config_path.read_text())
    except json.JSONDecodeError as error:
        raise ValueError(f"{config_path} is not valid JSON: {error}") from None
    for key in ("arch", "model"):
        if key not in config:
            raise ValueError(f"{config_path} has no {key!r} entry: not an exported model config")
    check_folder_tokenizer(directory, config)
    model = build_exported(config["arch"], config["model"], config.get("classifier"))
    try:
        missing, unexpected = safetensors.torch.load_model(model, str(weights_path), strict=False)
    except safetensors.SafetensorError as error:
        raise ValueError(f"{weights_path} cannot be read: {error}") from None
    if unexpected or [k for k in missing if "lm_head.weight" not in k]:
        raise ValueError(f"{weights_path} does not match its config: missing {missing}, unexpected {unexpected}")
    return model.to(device).eval(), config


def build_exported(arch: str, model_config: dict[str, Any], classifier: dict[str, Any] | None = None) -> nn.Module:
    """The untrained module an exported config describes: the language model, in a classifier
    when the config has a `classifier` entry."""
    model = build_model(arch, build_model_config(arch, model_config))
    return SequenceClassifier(model, classifier["num_classes"], classifier["pooling"]) if classifier else model


def load_folder_tokenizer(directory: str | os.PathLike, config: dict[str, Any]) -> TextTokenizer:
    """An exported folder's tokenizer.json, with the special tokens its config.json records (if any)."""
    special = {key: config[key] for key in ("eot_token", "pad_token") if key in config}
    return load_tokenizer(Path(directory) / "tokenizer.json", **special)


def check_folder_tokenizer(directory: Path, config: dict[str, Any]) -> None:
    """An exported folder's tokenizer.json must be the one its model was trained with."""
    path = directory / "tokenizer.json"
    if not path.exists():
        return
    tokenizer = read_tokenizer_file(path)
    vocab_size = tokenizer.get_vocab_size(with_added_tokens=True)
    if vocab_size != config["model"]["vocab_size"]:
        raise ValueError(
            f"{path} has {vocab_size} tokens but {directory / 'config.json'} says"
            f" model.vocab_size={config['model']['vocab_size']}: the tokenizer does not belong to this model"
        )
    expected = config.get("tokenizer_sha256")
    if expected and tokenizer_sha256(tokenizer) != expected:
        raise ValueError(
            f"{path} is not the tokenizer the model was trained with"
            f" (tokenizer_sha256={expected[:12]}... in {directory / 'config.json'})"
        )
