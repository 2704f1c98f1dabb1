"""MLflow adapter: one run per stage execution, with params, metrics, tags, inputs and artifacts.

The only place (with `pyfunc_model.py` beside it) that imports mlflow. By default every stage
writes to one SQLite store and one artifact folder at the project root, also when DVC runs an
experiment in a temporary copy; MLFLOW_TRACKING_URI points everything at a server instead.

Runs are linked: each stage writes `run.json` (its run id and group) into its output folder and
downstream stages tag the runs they used (`upstream.<stage>`) and inherit the group, so the UI
can filter one pipeline lineage with `tags.pipeline_group = '...'`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import subprocess
import time
import uuid
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import mlflow
import pandas as pd
import psutil
import requests

from pipelines.layout import run_file, stage_definition
from pipelines.params import ROOT, flatten, read_yaml

logger = logging.getLogger(__name__)
warnings.filterwarnings("ignore", module="sqlalchemy")
warnings.filterwarnings("ignore", message=".*Pandas4Warning.*")
warnings.filterwarnings("ignore", category=UserWarning, module=r"mlflow\..*")


class TrackingServerUnavailable(ConnectionError):
    """MLFLOW_TRACKING_URI names a server that does not answer (transient: the stage exits 1)."""


# MLflow's own request settings, unless the user set them: a server that does not answer stops
# the stage within about half a minute (3 tries of at most 10 s), not after MLflow's 4 minutes of
# retries, while a blip in a long run is still retried.
REQUEST_SETTINGS = {"MLFLOW_HTTP_REQUEST_MAX_RETRIES": "2", "MLFLOW_HTTP_REQUEST_TIMEOUT": "10"}


def project_root(cwd: Path | None = None) -> Path:
    """The user's checkout, also from inside DVC's temporary experiment copies."""
    cwd = (cwd or Path.cwd()).resolve()
    parts = cwd.parts
    for i in range(len(parts) - 2):
        if parts[i : i + 3] == (".dvc", "tmp", "exps"):
            return Path(*parts[:i])
    return cwd


def configure(experiment: str) -> str:
    """Point MLflow at the tracking store and return the experiment id."""
    root = project_root()
    # Read before set_tracking_uri: MLflow 3 exports the URI it is given to MLFLOW_TRACKING_URI.
    embedded = "MLFLOW_TRACKING_URI" not in os.environ
    if embedded:
        mlflow.set_tracking_uri(f"sqlite:///{root / 'mlflow.db'}")
    for name, value in REQUEST_SETTINGS.items():
        os.environ.setdefault(name, value)
    try:
        existing = mlflow.get_experiment_by_name(experiment)
    except mlflow.exceptions.MlflowException as error:
        if isinstance(error.__context__, requests.ConnectionError | requests.Timeout):
            raise TrackingServerUnavailable(
                f"the MLflow tracking server {mlflow.get_tracking_uri()} (MLFLOW_TRACKING_URI) does not answer"
                f" ({type(error.__context__).__name__}): start it, or unset MLFLOW_TRACKING_URI to track in"
                " the project's mlflow.db"
            ) from None
        raise
    if existing is not None:
        mlflow.set_experiment(experiment_id=existing.experiment_id)
        return existing.experiment_id
    artifact_location = (root / "mlartifacts").as_uri() if embedded else None
    experiment_id = mlflow.create_experiment(experiment, artifact_location=artifact_location)
    mlflow.set_experiment(experiment_id=experiment_id)
    return experiment_id


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], capture_output=True, text=True, check=True, cwd=ROOT).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return ""


def dependency_hashes(stage: str, task: str | None = None) -> dict[str, str]:
    """The DVC hash of each input of `stage` (for a foreach stage, its `task` entry's): from
    dvc.lock for upstream outputs, md5 for files."""
    deps = stage_definition(f"{stage}@{task}" if task else stage).get("deps", [])
    lock_path = ROOT / "dvc.lock"
    lock = read_yaml(lock_path) if lock_path.exists() else {}
    recorded = {}
    for entry in (lock or {}).get("stages", {}).values():
        for out in entry.get("outs", []):
            recorded[out["path"]] = out.get("md5", "")
    hashes = {}
    for dep in deps:
        path = ROOT / dep
        if dep in recorded:
            hashes[dep] = recorded[dep]
        elif path.is_file():
            hashes[dep] = hashlib.md5(path.read_bytes()).hexdigest()
    return hashes


def read_run_info(stage_dir: Path) -> dict[str, str] | None:
    path = run_file(stage_dir)
    return json.loads(path.read_text()) if path.exists() else None


@contextlib.contextmanager
def stage_run(
    stage: str,
    experiment: str,
    params: dict[str, Any],
    out_dir: Path,
    upstream: dict[str, Path] | None = None,
    task: str | None = None,
) -> Iterator[mlflow.ActiveRun]:
    """An MLflow run for one stage execution (of one task, for `prepare@<task>` and
    `finetune@<task>`: tagged `task`); writes `<out_dir>/run.json` when it succeeds."""
    configure(experiment)
    links = {name: read_run_info(path) for name, path in (upstream or {}).items()}
    # An orchestrated run (Prefect) names the group; a plain `dvc repro` inherits its upstream's.
    group = (
        os.environ.get("LMCORE_PIPELINE_GROUP")
        or next((info["group"] for info in links.values() if info), None)
        or uuid.uuid4().hex[:12]
    )
    parent = os.environ.get("LMCORE_PARENT_RUN_ID")
    tags = {
        "stage": stage,
        "pipeline_group": group,
        "git_commit": _git("rev-parse", "HEAD"),
        "git_dirty": str(bool(_git("status", "--porcelain", "--untracked-files=no"))).lower(),
        **{f"upstream.{name}": info["run_id"] for name, info in links.items() if info},
        **{f"dvc.dep.{path}": digest for path, digest in dependency_hashes(stage, task).items()},
        **({"task": task} if task else {}),
    }
    run_name = f"{stage}@{task}" if task else stage
    with mlflow.start_run(run_name=run_name, tags=tags, parent_run_id=parent) as run:
        flat = {k: json.dumps(v) if isinstance(v, list | dict) else v for k, v in flatten(params).items()}
        items = list(flat.items())
        for start in range(0, len(items), 100):  # MLflow takes at most 100 params per batch
            mlflow.log_params(dict(items[start : start + 100]))
        try:
            yield run
        except KeyboardInterrupt:  # Ctrl-C, SIGTERM, a stop request: MLflow's own exit would say FAILED
            mlflow.end_run("KILLED")
            raise
        # Whole process time (interpreter start, imports, tracking, the work): set against the
        # stage's own `timing/compute_seconds` to measure what is spent outside model computation.
        mlflow.log_metric("timing/process_seconds", time.time() - psutil.Process().create_time())
        out_dir.mkdir(parents=True, exist_ok=True)
        run_file(out_dir).write_text(json.dumps({"run_id": run.info.run_id, "group": group, "stage": stage}) + "\n")
        mlflow.log_artifact(str(run_file(out_dir)))


@dataclasses.dataclass
class PipelineRun:
    run_id: str
    group: str
    url: str


def run_url(experiment_id: str, run_id: str) -> str:
    uri = mlflow.get_tracking_uri()
    base = uri.rstrip("/") if uri.startswith("http") else "http://127.0.0.1:5000"  # `make mlflow-ui`
    return f"{base}/#/experiments/{experiment_id}/runs/{run_id}"


def start_pipeline_run(experiment: str, params: dict[str, Any]) -> PipelineRun:
    """The parent run of one orchestrated pipeline execution; stages attach to it."""
    experiment_id = configure(experiment)
    group = uuid.uuid4().hex[:12]
    client = mlflow.MlflowClient()
    run = client.create_run(
        experiment_id,
        run_name="pipeline",
        tags={"stage": "pipeline", "pipeline_group": group, "git_commit": _git("rev-parse", "HEAD")},
    )
    for key, value in flatten(params).items():
        client.log_param(run.info.run_id, key, json.dumps(value) if isinstance(value, list | dict) else value)
    return PipelineRun(run.info.run_id, group, run_url(experiment_id, run.info.run_id))


def end_pipeline_run(run_id: str, status: str, metrics: dict[str, Any]) -> None:
    client = mlflow.MlflowClient()
    numbers = flatten_numbers(metrics)
    if numbers:
        client.log_batch(
            run_id, metrics=[mlflow.entities.Metric(k, v, int(1000 * time.time()), 0) for k, v in numbers.items()]
        )
    client.set_terminated(run_id, status=status)


def flatten_numbers(metrics: dict[str, Any]) -> dict[str, float]:
    return {k: float(v) for k, v in flatten(metrics).items() if isinstance(v, int | float) and not isinstance(v, bool)}


def metric_logger(prefix: str = "") -> Callable[[int, dict[str, float]], None]:
    """A `log(step, metrics)` sink for lmcore: one batched call per step."""

    def log(step: int, metrics: dict[str, float]) -> None:
        mlflow.log_metrics({f"{prefix}{k}": float(v) for k, v in metrics.items()}, step=step)

    return log


def log_child_run(task: str) -> Callable[[dict[str, Any]], None]:
    """A sink for the label-budget curve: each point a nested run under the stage's run, with its
    labels, seed and model as params and its scores as metrics."""
    parent = mlflow.active_run()

    def log(point: dict[str, Any]) -> None:
        name = f"{task} {point['model']} labels={point['labels']} seed={point['seed']}"
        tags = {"stage": "curve", "task": task, "pipeline_group": parent.data.tags.get("pipeline_group", "")}
        with mlflow.start_run(run_name=name, nested=True, tags=tags):
            mlflow.log_params({k: point[k] for k in ("labels", "seed", "model")})
            mlflow.log_metrics({k: v for k, v in point.items() if k not in ("labels", "seed", "model")})

    return log


def log_metrics(metrics: dict[str, float], prefix: str = "") -> None:
    mlflow.log_metrics({f"{prefix}{k}": v for k, v in flatten_numbers(metrics).items()})


def log_artifacts(*paths: Path, artifact_path: str | None = None) -> None:
    for path in paths:
        if path.is_dir():
            mlflow.log_artifacts(str(path), artifact_path=artifact_path or path.name)
        elif path.exists():
            mlflow.log_artifact(str(path), artifact_path=artifact_path)


def log_table_input(frame: pd.DataFrame, source: Path, name: str, context: str) -> None:
    """Record a table this run read, with its digest, as an MLflow dataset input."""
    dataset = mlflow.data.from_pandas(frame, source=str(source), name=name)
    mlflow.log_input(dataset, context=context)


def log_lmcore_model(
    model_dir: Path,
    name: str,
    registered_name: str | None,
    input_example: pd.DataFrame,
    params: dict[str, Any] | None = None,
) -> str | None:
    """Log an exported lmcore model folder as a pyfunc model; register it when a name is given.

    The model is defined from code (`pyfunc_model.py`) and carries lmcore itself, so loading it
    needs neither this project's pipelines nor its training code.
    """
    info = mlflow.pyfunc.log_model(
        name=name,
        python_model=str(Path(__file__).with_name("pyfunc_model.py")),
        artifacts={"model_dir": str(model_dir)},
        code_paths=[str(ROOT / "lmcore")],
        pip_requirements=["torch", "numpy", "tokenizers", "safetensors", "pandas"],
        # (frame, params) declares the inference params (max_new_tokens, temperature...) in the signature
        input_example=(input_example, params) if params else input_example,
        registered_model_name=registered_name,
    )
    return getattr(info, "registered_model_version", None)
