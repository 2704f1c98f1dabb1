"""Prefect adapter: the DVC pipeline as a flow whose tasks are the stages of dvc.yaml.

Each stage is a task run (its own state, logs and duration) that runs `dvc repro --single-item`,
so DVC's cache still decides what is up to date. Flow parameters: `overrides` of params.yaml
keys (applied as `dvc exp run -S` applies them; the run is saved with `dvc exp save` so
`dvc exp show` lists it) and `force_from` (re-run that stage and everything after it).

Transient failures (a killed process, a busy repository, a tracking server that did not answer)
are retried with exponential backoff; a data-validation failure or a stage's refusal of its
config or input is not, and fails the flow with the validation summary or the stage's message.
One pipeline run at a time per checkout: a file lock, waited on for `wait_for_lock_seconds`,
after which the run is skipped (Cancelled), never run beside another.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import filelock
from prefect import flow, get_run_logger, task
from prefect.artifacts import create_markdown_artifact
from prefect.cache_policies import NO_CACHE
from prefect.exceptions import MissingContextError
from prefect.states import Cancelled
from prefect.tasks import exponential_backoff

from pipelines import tracking
from pipelines.dvc_runner import (
    DataValidationFailed,
    StageInputError,
    apply_overrides,
    run_stage,
    stage_order,
    stages_from,
)
from pipelines.layout import outputs
from pipelines.params import load_params

FLOW_NAME = "lmcore-pipeline"
LOCK_FILE = ".dvc/tmp/lmcore-pipeline.lock"


def run_logger() -> logging.Logger | logging.LoggerAdapter:
    """Prefect's run logger inside a flow or task run; a plain logger when called directly."""
    try:
        return get_run_logger()
    except MissingContextError:
        return logging.getLogger(__name__)


def is_transient(task_, task_run, state) -> bool:
    """Retry unless the data or the config is at fault (retrying cannot fix either)."""
    try:
        state.result()
    except (DataValidationFailed, StageInputError):
        return False
    except Exception:
        return True
    return True


@task(
    retries=2,
    retry_delay_seconds=exponential_backoff(backoff_factor=10),
    retry_condition_fn=is_transient,
    cache_policy=NO_CACHE,
)
def run_stage_task(root: str, stage: str, force: bool, env: dict[str, str]) -> dict[str, Any]:
    logger = run_logger()
    start = time.perf_counter()
    result = run_stage(Path(root), stage, force, logger.info, env)
    return {"stage": stage, "ran": result.ran, "seconds": round(time.perf_counter() - start, 1)}


@contextlib.contextmanager
def checkout_lock(root: Path, wait_seconds: float) -> Iterator[bool]:
    """Hold an exclusive lock on the checkout; yields False when it could not be had in time."""
    path = root / LOCK_FILE
    path.parent.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(path)
    try:
        lock.acquire(timeout=wait_seconds)
    except filelock.Timeout:
        yield False
        return
    try:
        yield True
    finally:
        lock.release()


def metrics_markdown(metrics: dict[str, Any], parent_url: str) -> str:
    lines = [f"# lmcore pipeline\n\nMLflow parent run: {parent_url}\n", "| metric | value |", "| --- | --- |"]
    for key, value in tracking.flatten_numbers(metrics).items():
        lines.append(f"| {key} | {value:.4f} |")
    return "\n".join(lines) + "\n"


@flow(name=FLOW_NAME)
def lmcore_pipeline(
    overrides: dict[str, Any] | None = None,
    force_from: str | None = None,
    wait_for_lock_seconds: float = 3600.0,
    project_dir: str | None = None,
):
    """Run every stage of dvc.yaml in order; returns the final metrics."""
    logger = get_run_logger()
    root = Path(project_dir or os.getcwd()).resolve()
    with checkout_lock(root, wait_for_lock_seconds) as locked:
        if not locked:
            message = f"another pipeline run holds {root / LOCK_FILE}; this run was skipped"
            logger.warning(message)
            return Cancelled(message=message)
        params_text = (root / "params.yaml").read_text()
        try:
            patterns = apply_overrides(root, overrides or {})
            params = load_params(root / "params.yaml")  # a bad key fails here, before any stage
            order = stage_order(root)
            forced = stages_from(order, force_from)
            parent = tracking.start_pipeline_run(
                params.tracking.experiment, {"overrides": patterns, "force_from": force_from or ""}
            )
            logger.info("MLflow parent run %s: %s", parent.run_id, parent.url)
            env = {"LMCORE_PIPELINE_GROUP": parent.group, "LMCORE_PARENT_RUN_ID": parent.run_id}
            status = "FAILED"
            try:
                for stage in order:
                    outcome = run_stage_task.with_options(name=stage, task_run_name=stage)(
                        str(root), stage, stage in forced, env
                    )
                    logger.info("stage %s: %s", stage, "ran" if outcome["ran"] else "up to date")
                status = "FINISHED"
            finally:
                metrics_path = outputs("evaluate", root=root).metrics
                metrics = json.loads(metrics_path.read_text()) if status == "FINISHED" and metrics_path.exists() else {}
                tracking.end_pipeline_run(parent.run_id, status, metrics)
            create_markdown_artifact(
                metrics_markdown(metrics, parent.url), key="lmcore-metrics", description="Final metrics"
            )
            if patterns:
                save_experiment(root, logger)
            return metrics
        finally:
            if overrides:
                (root / "params.yaml").write_text(params_text)  # the overrides belong to this run only


def save_experiment(root: Path, logger) -> None:
    """Record the overridden run as a DVC experiment (listed by `dvc exp show`)."""
    result = subprocess.run([sys.executable, "-m", "dvc", "exp", "save"], cwd=root, capture_output=True, text=True)
    if result.returncode == 0:
        logger.info("saved as a DVC experiment: %s", result.stdout.strip())
    else:
        logger.warning("dvc exp save failed: %s", result.stderr.strip()[-500:])


if __name__ == "__main__":
    lmcore_pipeline.serve(name="nightly", cron="0 2 * * *", pause_on_shutdown=False)
