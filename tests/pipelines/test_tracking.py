import socket
import time

import pytest

from pipelines import tracking


def test_a_tracking_server_that_does_not_answer_fails_in_seconds(monkeypatch):
    with socket.socket() as probe:  # a port on which nothing listens
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    monkeypatch.setenv("MLFLOW_TRACKING_URI", f"http://127.0.0.1:{port}")
    start = time.monotonic()
    with pytest.raises(tracking.TrackingServerUnavailable, match=f"127.0.0.1:{port} .* does not answer"):
        tracking.configure("lmcore-test")
    assert time.monotonic() - start < tracking.SERVER_CHECK_SECONDS  # MLflow's own retries take minutes


def test_local_stores_are_not_probed():
    tracking.check_server("sqlite:///nowhere/mlflow.db")
    tracking.check_server("file:///nowhere/mlruns")
