"""lm-evaluation-harness as an outside judge of the exported language model (outputs/export/lm).

Task files for the project's own local data, written where `lm_eval --include_path` finds them:
- `lmcore_text_<name>` for each `evaluate.lm_texts` entry, `loglikelihood_rolling` (word and byte
  perplexity, bits per byte): the corpus's held-out reviews one document each, a file as one
  document;
- `lmcore_zeroshot_<task>` for each `evaluate.lm_eval.zero_shot` entry, `multiple_choice` on the
  task's test examples: the label whose choice is likeliest after the template (acc, acc_norm).

Each task is a YAML file (written as JSON, which YAML reads) beside a jsonl of its documents, with
absolute paths, as lm-eval resolves them from the working directory. Scored with the model's own
context (`max_length`: its block size), the rolling bits per byte match lmcore's evaluator over
every window of the same text, up to the documents' boundaries.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pandas as pd

from pipelines.params import ROOT, LmEvalParams, Params, ZeroShotParams

PREFIX = "lmcore_"
ROLLING_METRICS = ("word_perplexity", "byte_perplexity", "bits_per_byte")


def write_jsonl(path: Path, rows: list[dict[str, Any]]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(row, ensure_ascii=False) + "\n" for row in rows), encoding="utf-8")
    return path.resolve()


def task_file(folder: Path, name: str, data: Path, config: dict[str, Any]) -> str:
    task = f"{PREFIX}{name}"
    spec = {
        "task": task,
        "dataset_path": "json",
        "dataset_kwargs": {"data_files": {"test": str(data)}},
        "test_split": "test",
        **config,
    }
    (folder / f"{task}.yaml").write_text(json.dumps(spec, indent=2) + "\n")
    return task


def rolling_task(folder: Path, name: str, documents: list[str]) -> str:
    """`lmcore_text_<name>`: word and byte perplexity and bits per byte over the documents."""
    data = write_jsonl(folder / "data" / f"text_{name}.jsonl", [{"text": t} for t in documents])
    rolling = {
        "output_type": "loglikelihood_rolling",
        "doc_to_text": "",
        "doc_to_target": "{{text}}",
        "metric_list": [{"metric": m} for m in ROLLING_METRICS],
    }
    return task_file(folder, f"text_{name}", data, rolling)


def zero_shot_task(folder: Path, name: str, prompt: ZeroShotParams, rows: list[dict[str, Any]]) -> str:
    """`lmcore_zeroshot_<name>` over rows {text, label (an index into the choices)}: acc, acc_norm."""
    data = write_jsonl(folder / "data" / f"zeroshot_{name}.jsonl", rows)
    choice = {
        "output_type": "multiple_choice",
        "doc_to_text": prompt.template,
        "doc_to_target": "{{label}}",
        "doc_to_choice": list(prompt.choices),
        "metric_list": [{"metric": "acc"}, {"metric": "acc_norm"}],
    }
    return task_file(folder, f"zeroshot_{name}", data, choice)


def write_tasks(params: Params, folder: Path, corpus_texts: list[str], tasks_dir: Path) -> list[str]:
    """Every task of the project's params, written into `folder` (the zero-shot tasks' test splits
    read from `tasks_dir`, the prepare stages' outputs); their lm-eval task names."""
    folder.mkdir(parents=True, exist_ok=True)
    names = []
    for name, source in params.evaluate.lm_texts.items():
        texts = corpus_texts if source == "corpus" else [(ROOT / source).read_text(encoding="utf-8")]
        names.append(rolling_task(folder, name, texts))
    for name, prompt in params.evaluate.lm_eval.zero_shot.items():
        table = pd.read_parquet(tasks_dir / name / "labeled.parquet", columns=["text", "label", "split"])
        test = table[table["split"] == "test"]
        index = {label: i for i, label in enumerate(params.tasks[name].labels)}
        rows = [{"text": text, "label": index[label]} for text, label in zip(test["text"], test["label"], strict=True)]
        names.append(zero_shot_task(folder, name, prompt, rows))
    return names


def model_arguments(model_dir: Path, max_length: int) -> dict[str, Any]:
    return {
        "pretrained": str(model_dir.resolve()),
        "trust_remote_code": True,
        "max_length": max_length,
        "dtype": "float32",
    }


def run_lm_eval(
    model_dir: Path, folder: Path, names: list[str], max_length: int, device: str, settings: LmEvalParams
) -> dict:
    """lm-eval's figures for each task: {task without the prefix: {metric: value}} (with each metric's
    standard error as `<metric>_stderr` where lm-eval gives one)."""
    # Everything is local (the folder, the documents): nothing may be looked up on the Hub.
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    import lm_eval
    from lm_eval.tasks import TaskManager

    results = lm_eval.simple_evaluate(
        model="hf",
        model_args=model_arguments(model_dir, max_length),
        tasks=names,
        task_manager=TaskManager(include_path=str(folder.resolve()), include_defaults=False),
        batch_size=settings.batch_size,
        device=device,
        limit=settings.limit or None,
        bootstrap_iters=settings.bootstrap_iters,
        log_samples=False,
    )
    return {
        task.removeprefix(PREFIX): {
            metric.split(",")[0]: float(value)
            for metric, value in figures.items()
            if "," in metric and isinstance(value, int | float)
        }
        for task, figures in results["results"].items()
    }


def command_line(model_dir: Path, folder: Path, names: list[str], max_length: int) -> str:
    """The same evaluation by hand, as the README writes it."""
    arguments = ",".join(f"{k}={v}" for k, v in model_arguments(model_dir, max_length).items())
    return (
        f"lm_eval --model hf --model_args {arguments} --tasks {','.join(names)}"
        f" --include_path {folder.resolve()} --device cpu --batch_size 16"
    )
