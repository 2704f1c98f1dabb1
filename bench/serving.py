"""Requests per second and latency of a registered model behind `mlflow models serve`, for single
texts and for batches, from a client on the same machine.

    python bench/serving.py                                    # lmcore-classifier-sst2, version 1
    python bench/serving.py --model models:/lmcore-lm/1 --requests 20 --batch 4 --params '{"max_new_tokens": 16}'

Runs in a project after `dvc repro` (its MLflow store: mlflow.db, or MLFLOW_TRACKING_URI); the
server gets `--workers` processes on 127.0.0.1 and is stopped at the end. Prints one JSON object:
per mode, requests/s, texts/s, and p50/p99 latency in ms.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

REVIEWS = [
    "a fine film , warm and funny .",
    "two hours i will never get back .",
    "the cast is good but the script goes nowhere .",
    "one of the best films of the year .",
]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def serve(model: str, port: int, workers: int) -> subprocess.Popen:
    env = dict(os.environ)
    env.setdefault("MLFLOW_TRACKING_URI", f"sqlite:///{Path.cwd() / 'mlflow.db'}")
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"  # the server execs uvicorn
    command = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model, "--env-manager", "local"]
    command += ["--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    server = subprocess.Popen(
        command, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True
    )
    deadline = time.monotonic() + 120
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/ping", timeout=2)
            return server
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                os.killpg(server.pid, signal.SIGKILL)
                raise RuntimeError(f"mlflow models serve did not start:\n{server.stderr.read()[-3000:]}") from None
            time.sleep(0.5)


def timed_requests(url: str, rows: list[str], count: int, params: dict) -> dict:
    body = json.dumps({"dataframe_split": {"columns": ["text"], "data": [[r] for r in rows]}, "params": params})
    latencies = []
    start = time.perf_counter()
    for _ in range(count):
        request = urllib.request.Request(url, body.encode(), {"Content-Type": "application/json"})
        sent = time.perf_counter()
        with urllib.request.urlopen(request, timeout=300) as response:
            response.read()
        latencies.append(1000 * (time.perf_counter() - sent))
    wall = time.perf_counter() - start
    latencies.sort()
    return {
        "rows_per_request": len(rows),
        "requests": count,
        "requests_per_s": round(count / wall, 2),
        "texts_per_s": round(count * len(rows) / wall, 1),
        "p50_ms": round(statistics.median(latencies), 1),
        "p99_ms": round(latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))], 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", default="models:/lmcore-classifier-sst2/1")
    parser.add_argument("--requests", type=int, default=200)
    parser.add_argument("--batch", type=int, default=64, help="rows per batched request")
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--params", default="{}", help="inference params as JSON (a language model's sampling)")
    args = parser.parse_args()
    port = free_port()
    server = serve(args.model, port, args.workers)
    url, params = f"http://127.0.0.1:{port}/invocations", json.loads(args.params)
    try:
        timed_requests(url, REVIEWS[:1], 3, params)  # the first requests load and warm the model
        batch = [REVIEWS[i % len(REVIEWS)] for i in range(args.batch)]
        figures = {
            "model": args.model,
            "workers": args.workers,
            "single": timed_requests(url, REVIEWS[:1], args.requests, params),
            "batched": timed_requests(url, batch, max(1, args.requests // 10), params),
        }
    finally:
        os.killpg(server.pid, signal.SIGTERM)  # the server and its workers
        server.wait(timeout=30)
    print(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
