"""The registered models served by `mlflow models serve` (a real server on 127.0.0.1), asked over
HTTP as a client would: good requests get the same answers as the loaded model, bad ones a 400
that names what is wrong, and the server keeps serving after them."""

from __future__ import annotations

import json
import subprocess
import sys
import urllib.error
import urllib.request

import pandas as pd
import pytest

from tests.pipelines.conftest import ROOT, copy_project, project_env
from tests.pipelines.e2e_helpers import mlflow_client
from tests.pipelines.servers import free_port, start, stop, wait_until_up

pytestmark = pytest.mark.e2e
MODELS = {"classifier": "models:/lmcore-classifier-sst2/1", "lm": "models:/lmcore-lm/1"}


@pytest.fixture(scope="module")
def served(repro_project, tmp_path_factory):
    """Both registered models of a copy of the tiny project, each behind its own server."""
    base = tmp_path_factory.mktemp("serving")
    project = copy_project(repro_project, base / "project")
    env = {**project_env(project), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    servers, urls = [], {}
    try:
        for name, uri in MODELS.items():
            port, log = free_port(), base / f"{name}.log"
            command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", uri, "--env-manager", "local"]
            servers.append(start([*command, "--host", "127.0.0.1", "--port", str(port)], env, project, log))
            urls[name] = f"http://127.0.0.1:{port}"
            wait_until_up(f"{urls[name]}/ping", servers[-1], log)
        yield project, urls
    finally:
        for server in servers:
            stop(server)


def ask(url: str, body: object) -> tuple[int, dict]:
    request = urllib.request.Request(
        f"{url}/invocations", json.dumps(body).encode(), {"Content-Type": "application/json"}
    )
    try:
        with urllib.request.urlopen(request, timeout=120) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as error:
        return error.code, json.loads(error.read())


def texts(*rows: object) -> dict:
    return {"dataframe_split": {"columns": ["text"], "data": [[r] for r in rows]}}


def test_served_classifier_answers_as_the_loaded_model(served):
    project, urls = served
    mlflow, _ = mlflow_client(project)
    reviews = ["a fine film .", "boring .", "x" * 1_000_000]  # the 1 MB text is scored on its last tokens
    status, answer = ask(urls["classifier"], texts(*reviews))
    assert status == 200, answer
    loaded = mlflow.pyfunc.load_model(MODELS["classifier"]).predict(pd.DataFrame({"text": reviews}))
    assert [p["label"] for p in answer["predictions"]] == list(loaded["label"])
    assert [p["probability"] for p in answer["predictions"]] == pytest.approx(list(loaded["probability"]), abs=1e-6)
    batch = [f"review number {i} was {'good' if i % 2 else 'bad'} ." for i in range(1000)]
    status, answer = ask(urls["classifier"], texts(*batch))
    assert status == 200 and len(answer["predictions"]) == 1000
    assert {p["label"] for p in answer["predictions"]} <= {"negative", "positive"}


@pytest.mark.parametrize(
    "body, message",
    [
        ({"dataframe_split": {"columns": ["review"], "data": [["a fine film ."]]}}, "missing inputs ['text']"),
        (texts("a fine film .", ""), "text is empty in row(s) 1"),
        (texts("a fine film .", 5), "text is not a string in row(s) 1"),
        ({"inputs": "not a table"}, "schema"),
    ],
)
def test_bad_requests_get_a_400_naming_the_problem_and_the_server_keeps_serving(served, body, message):
    _, urls = served
    status, answer = ask(urls["classifier"], body)
    assert status == 400, answer
    assert message in answer["message"]
    status, answer = ask(urls["classifier"], texts("still serving ."))
    assert status == 200 and len(answer["predictions"]) == 1


def test_served_language_model_samples_deterministically_and_refuses_bad_settings(served):
    _, urls = served
    body = {**texts("This movie"), "params": {"max_new_tokens": 8, "temperature": 0.8, "top_p": 0.9, "seed": 3}}
    first, second = ask(urls["lm"], body), ask(urls["lm"], body)
    assert first[0] == 200 and first == second
    assert isinstance(first[1]["predictions"][0]["generated"], str)
    for bad, message in (({"max_new_tokens": 10**6}, "max_new_tokens must be at most"), ({"top_p": 0.0}, "top_p")):
        status, answer = ask(urls["lm"], {**body, "params": {**body["params"], **bad}})
        assert status == 400 and message in answer["message"], answer


def test_the_serving_bench_reports_throughput_and_latency(served):
    project, _ = served
    command = [sys.executable, str(ROOT / "bench/serving.py"), "--requests", "5", "--batch", "4"]
    env = {**project_env(project), "MLFLOW_TRACKING_URI": f"sqlite:///{project / 'mlflow.db'}"}
    result = subprocess.run(command, cwd=project, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    figures = json.loads(result.stdout)
    assert (figures["single"]["requests"], figures["batched"]["rows_per_request"]) == (5, 4)
    for mode in ("single", "batched"):
        assert 0 < figures[mode]["p50_ms"] <= figures[mode]["p99_ms"] and figures[mode]["requests_per_s"] > 0
