"""The deployment for real: a Prefect server on 127.0.0.1, `prefect deploy`, a process worker,
`prefect deployment run --watch` on the tiny project; every process is stopped afterwards."""

from __future__ import annotations

import asyncio
import json
import re
import shutil
import subprocess
import sys

import pytest

from tests.pipelines.conftest import ROOT, make_project, project_env
from tests.pipelines.e2e_helpers import STAGES
from tests.pipelines.servers import free_port, start, stop, wait_until_up

pytestmark = pytest.mark.e2e
DEPLOYMENT = "lmcore-pipeline/nightly"


@pytest.fixture(scope="module")
def deployed(tmp_path_factory):
    """A tiny project deployed to a fresh server, with a worker serving its pool."""
    base = tmp_path_factory.mktemp("prefect")
    project = make_project(base / "project")
    shutil.copy(ROOT / "prefect.yaml", project / "prefect.yaml")
    port = free_port()
    env = project_env(project)
    env.update(
        PREFECT_HOME=str(base / "prefect_home"),
        PREFECT_API_URL=f"http://127.0.0.1:{port}/api",
        PREFECT_SERVER_ANALYTICS_ENABLED="false",
        PREFECT_UI_ENABLED="false",
        LMCORE_PROJECT_DIR=str(project),
    )
    prefect = [sys.executable, "-m", "prefect"]
    server = start(
        [*prefect, "server", "start", "--host", "127.0.0.1", "--port", str(port)], env, project, base / "server.log"
    )
    worker = None
    try:
        wait_until_up(f"http://127.0.0.1:{port}/api/health", server, base / "server.log")

        def cli(*args: str) -> subprocess.CompletedProcess:
            return subprocess.run([*prefect, *args], env=env, cwd=project, capture_output=True, text=True, timeout=900)

        created = cli("work-pool", "create", "lmcore-process", "--type", "process")
        assert created.returncode == 0, created.stdout + created.stderr
        deploy = cli("--no-prompt", "deploy", "--all")
        assert deploy.returncode == 0, deploy.stdout + deploy.stderr
        worker = start([*prefect, "worker", "start", "--pool", "lmcore-process"], env, project, base / "worker.log")
        yield project, cli, env
    finally:
        if worker is not None:
            stop(worker)
        stop(server)


def flow_run_details(env: dict[str, str], flow_run_id: str) -> tuple[object, list[object], list[object]]:
    """The flow run, its task runs and artifacts, read from the test's server.

    An explicit client: Prefect reads PREFECT_API_URL once, at import, so a get_client() here
    would start a temporary server of its own (on the same SQLite file) instead.
    """
    from prefect.client.orchestration import PrefectClient
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterId

    async def fetch():
        async with PrefectClient(api=env["PREFECT_API_URL"]) as client:
            run = await client.read_flow_run(flow_run_id)
            runs_filter = FlowRunFilter(id=FlowRunFilterId(any_=[run.id]))
            tasks = await client.read_task_runs(flow_run_filter=runs_filter)
            artifacts = await client.read_artifacts(flow_run_filter=runs_filter)
            return run, tasks, artifacts

    return asyncio.run(fetch())


def find_key(node: object, key: str) -> list[dict]:
    """Every value stored under `key` anywhere in a JSON document."""
    found = []
    if isinstance(node, dict):
        for k, v in node.items():
            if k == key and isinstance(v, dict):
                found.append(v)
            found.extend(find_key(v, key))
    elif isinstance(node, list):
        for item in node:
            found.extend(find_key(item, key))
    return found


def run_id_from(output: str) -> str:
    for line in output.splitlines():
        if "UUID:" in line:
            return line.split("UUID:")[1].strip()
    raise AssertionError(f"no flow run id in:\n{output}")


def test_deployment_run_completes_every_stage_and_tracks_in_mlflow(deployed):
    project, cli, env = deployed
    # force_from=ingest: every stage runs and logs a run, even where another test's flow run came first
    result = cli("deployment", "run", DEPLOYMENT, "--param", "force_from=ingest", "--watch", "--watch-timeout", "800")
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    run, tasks, artifacts = flow_run_details(env, run_id_from(result.stdout))
    assert run.state.is_completed()
    markdown = [a for a in artifacts if a.key == "lmcore-metrics"]
    assert len(markdown) == 1 and "tasks_mean.finetuned" in markdown[0].data
    names = sorted(t.name for t in tasks if t.state.is_completed())
    assert names == sorted(STAGES)

    import mlflow

    # This flow run's parent run, named by its artifact: other tests' flow runs may have run before.
    parent_id = re.search(r"MLflow parent run: \S+/runs/(\w+)", markdown[0].data)[1]
    mlflow.set_tracking_uri(f"sqlite:///{project / 'mlflow.db'}")
    parent = mlflow.get_run(parent_id)
    assert parent.data.tags["stage"] == "pipeline" and parent.info.status == "FINISHED"
    runs = mlflow.search_runs(experiment_names=["lmcore-test"], output_format="list")
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent_id]
    stages = [
        f"{r.data.tags['stage']}@{r.data.tags['task']}" if "task" in r.data.tags else r.data.tags["stage"]
        for r in children
    ]
    assert sorted(s for s in stages if not s.startswith("curve")) == names
    assert "tasks_mean.finetuned" in parent.data.metrics


def test_validation_failure_fails_the_flow_run_with_the_summary(deployed):
    project, cli, env = deployed
    overrides = json.dumps({"validate.min_docs_per_split": 10**9})
    result = cli(
        "deployment", "run", DEPLOYMENT, "--param", f"overrides={overrides}", "--watch", "--watch-timeout", "600"
    )
    assert result.returncode != 0
    run, tasks, _ = flow_run_details(env, run_id_from(result.stdout))
    assert run.state.is_failed()
    assert "expect_table_row_count_to_be_between" in run.state.message
    validate = [t for t in tasks if t.name == "validate"]
    assert len(validate) == 1 and validate[0].run_count == 1  # not retried
    assert "min_docs_per_split: 1000000000" not in (project / "params.yaml").read_text()  # overrides undone


def test_overridden_run_is_a_dvc_experiment(deployed):
    project, cli, env = deployed
    overrides = json.dumps({"evaluate.samples.max_new_tokens": 7})
    result = cli(
        "deployment", "run", DEPLOYMENT, "--param", f"overrides={overrides}", "--watch", "--watch-timeout", "600"
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    shown = subprocess.run(
        [sys.executable, "-m", "dvc", "exp", "show", "--json"],
        cwd=project,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert any(samples.get("max_new_tokens") == 7 for samples in find_key(json.loads(shown.stdout), "samples"))
    assert "max_new_tokens: 7" not in (project / "params.yaml").read_text()  # workspace params restored
