"""A tiny copy of the project (tiny params, a slice of the data) that the real `dvc repro` runs in."""

from __future__ import annotations

import contextlib
import gzip
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
    "ingest": {"validation_fraction": 0.15, "test_fraction": 0.15},
    "validate": {"min_docs_per_split": 5, "min_chars_per_split": 500},
    "tokenizer": {"vocab_size": 300, "max_train_chars": 0},
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
        "lm_steps": 10,
        "lm_batch_size": 8,
        "epochs": 1,
        "min_steps": 10,
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
    "evaluate": {"num_windows": 40, "lm_text_windows": 40, "bootstrap_samples": 200, "samples": {"max_new_tokens": 20}},
    "tracking": {"experiment": "lmcore-test"},
    "qa": {"questions": 8, "max_len": 64, "max_new_tokens": 4},
    "text_tasks": {
        "translate_en_de": {
            "max_len": 32,
            "test_subset": 8,
            "train": {
                "max_steps": 12,
                "batch_size": 8,
                "warmup_steps": 2,
                "eval_interval": 6,
                "checkpoint_interval": 6,
            },
            "decode": {"max_new_tokens": 8},
        },
        "dailydialog": {
            "max_len": 32,
            "test_subset": 8,
            "train": {"max_steps": 6, "batch_size": 8, "warmup_steps": 2, "eval_interval": 6},
            "decode": {"max_new_tokens": 8},
        },
    },
}
# Two of the shipped tasks, one of each kind of source: a table with a fixed test file (sst2, also
# scored on MR), and text lines whose label a pattern finds in a latin-1 file (trec).
TINY_TASKS = {
    "sst2": {"curve_labels": [20, 40], "curve_seeds": [2, 1], "test_on": ["mr"], "max_len": 32},
    "trec": {"curve_labels": [], "curve_seeds": [], "min_class_share": 0.0},  # 300 lines: some classes are rare
}


def deep_update(base: dict, overrides: dict) -> dict:
    for key, value in overrides.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def head_lines(source: Path, target: Path, lines: int, keep_header: bool = False) -> None:
    """The first `lines` lines of a (gzipped) text file, written the same way."""
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rb") as f:
        head = [line for _, line in zip(range(lines + keep_header), f, strict=False)]
    target.parent.mkdir(parents=True, exist_ok=True)
    raw = b"".join(head)
    target.write_bytes(gzip.compress(raw, mtime=0) if source.suffix == ".gz" else raw)


def make_project(path: Path) -> Path:
    """Copy code and config, a slice of each corpus, tiny params; a git repo with DVC."""
    path.mkdir(parents=True)
    for name in ("lmcore", "pipelines"):
        shutil.copytree(ROOT / name, path / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("dvc.yaml", "pyproject.toml", ".gitignore", ".dvcignore"):
        shutil.copy(ROOT / name, path / name)
    data = ROOT / "data"
    head_lines(data / "imdb/unsup.jsonl.gz", path / "data/imdb/unsup.jsonl.gz", 300)
    head_lines(data / "sst2/train.tsv", path / "data/sst2/train.tsv", 2000, keep_header=True)
    head_lines(data / "sst2/dev.tsv", path / "data/sst2/dev.tsv", 200, keep_header=True)
    for name in ("trec/TREC.train", "trec/TREC.test", "mr/rt-polarity.neg", "mr/rt-polarity.pos"):
        head_lines(data / name, path / "data" / name, 300)
    for name in ("wikitext2/test.txt", "tinyshakespeare/input.txt"):
        head_lines(data / name, path / "data" / name, 200)
    for split, lines in (("train", 300), ("val", 20), ("test_2016_flickr", 20)):
        for language in ("en", "de"):
            head_lines(data / f"multi30k/{split}.{language}.gz", path / f"data/multi30k/{split}.{language}.gz", lines)
    (path / "data/xquad").mkdir(parents=True)
    shutil.copy(data / "xquad/xquad.en.json.gz", path / "data/xquad/xquad.en.json.gz")
    for split, lines in (("train", 100), ("validation", 10), ("test", 10)):
        head_lines(data / f"dailydialog/{split}.txt.gz", path / f"data/dailydialog/{split}.txt.gz", lines)
    params = yaml.safe_load((ROOT / "params.yaml").read_text())
    params["tasks"] = {name: deep_update(params["tasks"][name], changes) for name, changes in TINY_TASKS.items()}
    params["test_sets"] = {"mr": params["test_sets"]["mr"]}
    params["text_tasks"] = {name: params["text_tasks"][name] for name in TINY_PARAMS["text_tasks"]}
    zero_shot = params["evaluate"]["lm_eval"]["zero_shot"]
    params["evaluate"]["lm_eval"]["zero_shot"] = {name: zero_shot[name] for name in TINY_TASKS}
    deep_update(params, TINY_PARAMS)
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
