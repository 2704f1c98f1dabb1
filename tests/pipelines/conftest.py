"""A tiny copy of the project (tiny params, a slice of the data) that the real `dvc repro` runs in."""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]

TINY_PARAMS = {
    "ingest": {
        "pretrain": {"sources": ["data/tinyshakespeare/input.txt"]},
        "labeled": {"validation_fraction": 0.1},
    },
    "validate": {"min_docs_per_split": 5, "min_chars_per_split": 500},
    "tokenizer": {"vocab_size": 300},
    "model": {
        "gpt": {"block_size": 32, "n_layer": 2, "n_head": 2, "n_embd": 32},
        "lstm": {"block_size": 32, "n_layer": 1, "n_embd": 32, "n_hidden": 32},
        "gru": {"block_size": 32, "n_layer": 1, "n_embd": 32, "n_hidden": 32},
    },
    "pretrain": {
        "max_steps": 30,
        "batch_size": 8,
        "eval_interval": 15,
        "checkpoint_interval": 15,
        "log_interval": 5,
        "warmup_steps": 5,
        "peak_flops": 1.0e9,
    },
    "finetune": {
        "max_len": 32,
        "lm_steps": 10,
        "lm_batch_size": 8,
        "train": {
            "max_steps": 30,
            "batch_size": 16,
            "eval_interval": 15,
            "checkpoint_interval": 15,
            "log_interval": 5,
            "warmup_steps": 5,
            "peak_flops": 1.0e9,
        },
    },
    "evaluate": {"num_windows": 40, "bootstrap_samples": 200, "samples": {"max_new_tokens": 20}},
    "tracking": {"experiment": "lmcore-test"},
}


def deep_update(base: dict, overrides: dict) -> dict:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def make_project(path: Path) -> Path:
    """Copy code and config, a slice of each corpus, tiny params; a git repo with DVC."""
    path.mkdir(parents=True)
    for name in ("lmcore", "pipelines"):
        shutil.copytree(ROOT / name, path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "pyproject.toml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, path / name)
    (path / "data/tinyshakespeare").mkdir(parents=True)
    (path / "data/sst2").mkdir(parents=True)
    text = (ROOT / "data/tinyshakespeare/input.txt").read_text()
    (path / "data/tinyshakespeare/input.txt").write_text(text[:60_000])
    for name, rows in (("train.tsv", 2000), ("dev.tsv", 200)):
        lines = (ROOT / "data/sst2" / name).read_text().splitlines(keepends=True)
        (path / "data/sst2" / name).write_text("".join(lines[: rows + 1]))
    params = deep_update(yaml.safe_load((ROOT / "params.yaml").read_text()), TINY_PARAMS)
    (path / "params.yaml").write_text(yaml.safe_dump(params, sort_keys=False))
    git = ["git", "-c", "user.email=test@localhost", "-c", "user.name=test"]
    subprocess.run(["git", "init", "-q"], cwd=path, check=True)
    subprocess.run([sys.executable, "-m", "dvc", "init", "-q"], cwd=path, check=True)
    subprocess.run(["git", "add", "-A"], cwd=path, check=True)
    subprocess.run([*git, "commit", "-qm", "tiny project"], cwd=path, check=True)
    return path


def project_env(path: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("MLFLOW_", "DVC_"))}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    env["OMP_NUM_THREADS"] = "1"
    env["PYTHONPATH"] = str(path)
    env["GIT_AUTHOR_NAME"] = env["GIT_COMMITTER_NAME"] = "test"
    env["GIT_AUTHOR_EMAIL"] = env["GIT_COMMITTER_EMAIL"] = "test@localhost"
    return env


def dvc(path: Path, *args: str, check: bool = True, timeout: int = 600) -> subprocess.CompletedProcess:
    result = subprocess.run(
        [sys.executable, "-m", "dvc", *args],
        cwd=path,
        env=project_env(path),
        capture_output=True,
        text=True,
        timeout=timeout,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"dvc {' '.join(args)} failed ({result.returncode}):\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
        )
    return result


@pytest.fixture(scope="session")
def repro_project(tmp_path_factory) -> Path:
    """The tiny project after one successful `dvc repro`; tests work on copies of it."""
    path = make_project(tmp_path_factory.mktemp("e2e") / "pristine")
    dvc(path, "repro")
    return path


@pytest.fixture
def tiny_project(repro_project, tmp_path) -> Path:
    """A copy of the repro'd tiny project of this test's own, whatever other tests do to theirs."""
    return copy_project(repro_project, tmp_path / "project")


def copy_project(source: Path, target: Path) -> Path:
    """Copy a project with its DVC cache and MLflow store; the store's absolute paths (artifact
    locations, model sources) are rewritten to the copy, so that nothing reads or writes the source."""
    shutil.copytree(source, target, symlinks=True)
    with contextlib.closing(sqlite3.connect(target / "mlflow.db")) as db, db:
        for (table,) in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'").fetchall():
            for column in [
                c[1] for c in db.execute(f"PRAGMA table_info('{table}')") if "CHAR" in c[2] or c[2] == "TEXT"
            ]:
                db.execute(
                    f'UPDATE "{table}" SET "{column}" = replace("{column}", ?, ?) WHERE instr("{column}", ?)',
                    (str(source), str(target), str(source)),
                )
    return target
