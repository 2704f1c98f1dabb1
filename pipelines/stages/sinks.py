"""Where a stage's training metrics go (MLflow, a TSV for `dvc plots`, the terminal or the log)
and how it times its own work."""

from __future__ import annotations

import contextlib
import csv
import logging
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from tqdm import tqdm

from lmcore.train import LogFn

logger = logging.getLogger("pipelines")


def fan_out(*sinks: LogFn) -> LogFn:
    def log(step: int, metrics: dict[str, float]) -> None:
        for sink in sinks:
            sink(step, metrics)

    return log


class CurveWriter:
    """Per-step training metrics as a TSV for `dvc plots` (one row per logged step)."""

    def __init__(self, path: Path, columns: list[str]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.file = open(path, "w", newline="")
        self.columns = columns
        self.writer = csv.DictWriter(self.file, fieldnames=["step", *columns], delimiter="\t", extrasaction="ignore")
        self.writer.writeheader()

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        row = {k: metrics[k] for k in self.columns if k in metrics}
        if row:
            self.writer.writerow({"step": step, **row})
            self.file.flush()

    def close(self) -> None:
        self.file.close()


class Progress:
    """A tqdm bar on a terminal; plain periodic log lines otherwise (CI, Prefect, DVC logs), since
    tqdm on a pipe writes its carriage-return frames into those logs."""

    def __init__(self, total_steps: int, label: str, every_seconds: float = 10.0) -> None:
        self.total, self.label, self.every = total_steps, label, every_seconds
        self.start = self.last_print = time.perf_counter()
        self.bar = tqdm(total=total_steps, desc=label, unit="step", dynamic_ncols=True) if sys.stderr.isatty() else None
        self.loss = float("nan")
        self.tokens_per_sec = 0.0

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        self.loss = metrics.get("train/loss", self.loss)
        self.tokens_per_sec = metrics.get("train/tokens_per_sec", self.tokens_per_sec)
        val = {k: round(v, 4) for k, v in metrics.items() if k.startswith("val/") and isinstance(v, float)}
        if self.bar is not None:
            self.bar.update(step - self.bar.n)
            self.bar.set_postfix(loss=f"{self.loss:.4f}", tok_s=f"{self.tokens_per_sec:,.0f}", **val)
            if val:
                self.bar.write(f"{self.label} step {step}: {val}")
            if step >= self.total:
                self.bar.close()
            return
        now = time.perf_counter()
        if val or step >= self.total or now - self.last_print >= self.every:
            elapsed = now - self.start
            remaining = elapsed / max(step, 1) * (self.total - step)
            shown = "".join(f" {k}={v:.4f}" for k, v in val.items())
            logger.info(
                "%s step %d/%d loss %.4f %s tok/s elapsed %.0fs left %.0fs%s",
                self.label, step, self.total, self.loss, f"{self.tokens_per_sec:,.0f}", elapsed, remaining, shown,
            )  # fmt: skip
            self.last_print = now


class ComputeClock:
    """Seconds a stage spends on its real work (reading and encoding data, training, evaluating),
    logged as `timing/compute_seconds`; the rest of a run is overhead (bench/pipeline_overhead.py)."""

    def __init__(self) -> None:
        self.seconds = 0.0

    @contextlib.contextmanager
    def measure(self) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds += time.perf_counter() - start

    def metrics(self) -> dict[str, float]:
        return {"timing/compute_seconds": self.seconds}


class MetricHistory:
    """Keeps every logged value per metric (medians of speed for the metrics file)."""

    def __init__(self) -> None:
        self.values: dict[str, list[float]] = {}

    def __call__(self, step: int, metrics: dict[str, float]) -> None:
        for key, value in metrics.items():
            self.values.setdefault(key, []).append(float(value))

    def median(self, key: str) -> float | None:
        """None where nothing was logged: a run that replays a finished checkpoint trains no step."""
        values = sorted(self.values.get(key, []))
        return values[len(values) // 2] if values else None
