"""Tiny models and data shared by the lmcore tests (2 layers, 32 wide)."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

from lmcore.data import LabeledExamples, get_batch
from lmcore.models import build_model, build_model_config
from lmcore.train import TrainConfig, lm_loss, train

VOCAB = 48
TINY = {
    "gpt": {"vocab_size": VOCAB, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32},
    "gpt_classic": {
        "vocab_size": VOCAB,
        "block_size": 16,
        "n_layer": 2,
        "n_head": 2,
        "n_embd": 32,
        "norm": "layernorm",
        "position": "learned",
        "mlp": "gelu",
        "bias": True,
    },
    "gpt_swiglu": {"vocab_size": VOCAB, "block_size": 16, "n_layer": 2, "n_head": 2, "n_embd": 32, "mlp": "swiglu"},
    "lstm": {"vocab_size": VOCAB, "block_size": 16, "n_layer": 2, "n_embd": 32, "n_hidden": 32},
    "gru": {"vocab_size": VOCAB, "block_size": 16, "n_layer": 2, "n_embd": 32, "n_hidden": 48},
}
ARCH_OF = {"gpt": "gpt", "gpt_classic": "gpt", "gpt_swiglu": "gpt", "lstm": "lstm", "gru": "gru"}


def tiny_model(name: str, **overrides):
    arch = ARCH_OF[name]
    return build_model(arch, build_model_config(arch, {**TINY[name], **overrides}))


def token_stream(n: int = 4000, seed: int = 0) -> np.ndarray:
    """A learnable stream: a repeating pattern with noise."""
    rng = np.random.default_rng(seed)
    base = np.tile(np.arange(VOCAB // 2), n // (VOCAB // 2) + 1)[:n]
    noise = rng.random(n) < 0.1
    return np.where(noise, rng.integers(0, VOCAB, n), base).astype(np.uint16)


def make_labeled(n=64, seed=0):
    """Texts of 3-11 tokens whose class shows in one token: 7 for class 1, 9 for class 0."""
    g = torch.Generator().manual_seed(seed)
    ids, labels = [], []
    for _ in range(n):
        label = int(torch.randint(2, (1,), generator=g))
        length = int(torch.randint(3, 12, (1,), generator=g))
        row = torch.randint(10, 48, (length,), generator=g).tolist()
        row[int(torch.randint(length, (1,), generator=g))] = 7 if label else 9
        ids.append(row)
        labels.append(label)
    return LabeledExamples(ids, labels)


# The shared training setup of the train tests: a learnable stream and a short run.
DATA = token_stream()
BASE = TrainConfig(
    max_steps=20,
    batch_size=4,
    learning_rate=3e-3,
    min_lr=3e-4,
    warmup_steps=3,
    eval_interval=5,
    checkpoint_interval=5,
    log_interval=1,
    peak_flops=1e9,
)


def lm_batches(generator):
    return get_batch(DATA, 4, 16, generator)


def run(model, config=BASE, **kwargs):
    logs = []
    result = train(model, config, lm_batches, lm_loss, log=lambda step, m: logs.append((step, m)), **kwargs)
    return result, logs


def open_in_transformers(cases: list[dict], workdir: Path) -> list[dict]:
    """What `transformers` alone makes of exported folders (tests/lmcore/hf_check.py, run in a fresh
    interpreter that refuses to import lmcore), one result per case."""
    (workdir / "cases.json").write_text(json.dumps(cases))
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_MODULES_CACHE": str(workdir / "modules"), "PYTHONPATH": ""}
    check = Path(__file__).with_name("hf_check.py")
    done = subprocess.run(
        [sys.executable, "-I", str(check), str(workdir / "cases.json")],
        capture_output=True,
        text=True,
        env=env,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report["lmcore_modules"] == []  # the folders carried everything they needed
    return report["results"]
