"""What the end-to-end tests share: the tiny project's stages and tasks, its MLflow runs, strict JSON."""

from __future__ import annotations

import hashlib
import json
import warnings

TASKS = ["sst2", "trec"]  # the tiny project's (tests/pipelines/conftest.py)
TEXT_TASKS = ["translate_en_de", "dailydialog"]  # the tiny project's (params.yaml also has translate_en_fr)


def stage_names(tasks: list[str], text_tasks: list[str] = TEXT_TASKS) -> list[str]:
    """The stages of dvc.yaml for these tasks, in the order DVC runs them."""
    per_task = [f"{stage}@{task}" for stage in ("prepare", "finetune") for task in tasks]
    per_text_task = [f"text_task@{task}" for task in text_tasks]
    return ["ingest", "validate", "tokenizer", "pretrain", *per_task, *per_text_task, "qa", "export", "evaluate"]


STAGES = stage_names(TASKS)


def mlflow_client(project):
    import mlflow

    warnings.filterwarnings("ignore")
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    return mlflow, mlflow.MlflowClient()


def stage_runs(project) -> dict[str, object]:
    mlflow, client = mlflow_client(project)
    experiment = client.get_experiment_by_name("lmcore-test")
    runs = client.search_runs(
        [experiment.experiment_id], "attributes.status = 'FINISHED'", order_by=["attributes.start_time DESC"]
    )
    latest = {}
    for run in runs:
        task = run.data.tags.get("task")
        if run.data.tags["stage"] != "curve":
            latest.setdefault(f"{run.data.tags['stage']}@{task}" if task else run.data.tags["stage"], run)
    return latest


def strict_json(path):
    def refuse(constant):
        raise AssertionError(f"{path} holds {constant}, which is not JSON")

    return json.loads(path.read_text(), parse_constant=refuse)


def digest(path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()
