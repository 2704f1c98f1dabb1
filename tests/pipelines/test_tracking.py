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
    assert time.monotonic() - start < 10  # MLflow's default retries take about 4 minutes
