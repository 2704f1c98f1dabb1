"""What every stage shares: output paths, logging, progress display, metric sinks, the entry point."""

from __future__ import annotations

import contextlib
import csv
import hashlib
import json
import logging
import os
import select
import shutil
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import psutil
from tqdm import tqdm

from lmcore.train import LogFn

OUTPUTS = Path("outputs")
# A stage's last exit under DVC, as JSON for orchestrators (pipelines/dvc_runner.py reads it): not a
# DVC output, so DVC never deletes it before the stage runs.
OUTCOMES = OUTPUTS / "outcomes"
logger = logging.getLogger("pipelines")
# SIGHUP is also what a stage sends itself when its `dvc repro` dies (see stop_when_launcher_exits).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
RECEIVED_SIGNALS: list[int] = []  # for the exit code: 128 + the signal's number
SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "fish"})
INPUT_ERROR_EXIT = 2  # a bad config value or input file: one clear line, never worth a retry
VALIDATION_FAILED_EXIT = 3  # the data failed its expectations


def stage_dir(stage: str) -> Path:
    return OUTPUTS / stage


def task_argument(params) -> str:
    """The task a foreach stage runs for (`python -m pipelines.stages.finetune sst2`): a key of params.tasks."""
    if len(sys.argv) != 2 or sys.argv[1] not in params.tasks:
        given = " ".join(sys.argv[1:]) or "nothing"
        raise ValueError(f"{sys.argv[0]} takes one task of params.yaml's tasks {sorted(params.tasks)}, got {given}")
    return sys.argv[1]


def fresh_dir(out: Path) -> Path:
    """An empty sibling folder to build a stage's outputs in, before `swap_in`."""
    tmp = out.with_name(out.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    return tmp


def swap_in(tmp: Path, out: Path) -> None:
    """Replace `out` by the finished `tmp`; until this point the last good outputs stay."""
    old = out.with_name(out.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if out.exists():
        out.rename(old)
    tmp.rename(out)
    shutil.rmtree(old, ignore_errors=True)


class ValidationFailed(Exception):
    """The data failed its expectations: the stage exits 3 with the failures in its outcome."""

    def __init__(self, message: str, failures: list[str]) -> None:
        super().__init__(message)
        self.failures = failures


def write_outcome(exit_code: int, kind: str, message: str, failures: list[str] | None = None) -> None:
    """outputs/outcomes/<dvc stage>.json: how the stage ended (only when DVC runs it)."""
    stage = os.environ.get("DVC_STAGE")
    if not stage:
        return
    OUTCOMES.mkdir(parents=True, exist_ok=True)
    outcome = {"stage": stage, "exit_code": exit_code, "kind": kind, "message": message, "failures": failures or []}
    tmp = OUTCOMES / f"{stage}.json.tmp"
    tmp.write_text(json.dumps(outcome, indent=2) + "\n")
    os.replace(tmp, OUTCOMES / f"{stage}.json")


class StageInterrupted(KeyboardInterrupt):
    """A stop signal outside training, or a second SIGINT or SIGTERM during it: the stage stops at once."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"{signal.Signals(signum).name} received")
        self.signum = signum


def _interrupt(signum: int, frame: object) -> None:
    RECEIVED_SIGNALS.append(signum)
    raise StageInterrupted(signum)


@contextlib.contextmanager
def stop_requests() -> Iterator[Callable[[], bool]]:
    """A `should_stop` for lmcore's `train`: inside, a first SIGINT, SIGTERM or SIGHUP asks
    training to finish its step and checkpoint it (where the stage keeps checkpoints) before stopping.

    A cluster's preemption, a Prefect cancellation, a Ctrl-C or a killed `dvc repro` then loses no
    finished step; a second SIGINT or SIGTERM stops at once. A repeated SIGHUP does not: it says that
    the launching `dvc repro` or the terminal went away (both may, one after the other), not that
    someone is in a hurry.
    """
    requested = threading.Event()

    def ask(signum: int, frame: object) -> None:
        if requested.is_set():
            if signum == signal.SIGHUP:
                return
            _interrupt(signum, frame)
        RECEIVED_SIGNALS.append(signum)
        requested.set()
        logger.warning(
            "%s: stopping after the current training step; a second SIGINT or SIGTERM stops at once",
            signal.Signals(signum).name,
        )

    previous = {signum: signal.signal(signum, ask) for signum in STOP_SIGNALS}
    try:
        yield requested.is_set
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def stop_when_launcher_exits() -> None:
    """On Linux, send this process a SIGHUP when the process that launched it (`dvc repro`) exits.

    DVC does not pass a SIGTERM on to the stage it runs: a killed `dvc repro` left its stage
    training on, orphaned, writing outputs that DVC no longer recorded. DVC runs the stage through
    `$SHELL -c`, and a shell that does not exec its one command (dash, Debian's /bin/sh) stays alive
    in between, so under DVC the process watched is the nearest ancestor that is not a shell.
    """
    if not hasattr(os, "pidfd_open"):
        return
    launcher = psutil.Process().parent()
    try:
        if "DVC_STAGE" in os.environ:  # set by DVC for the commands it runs
            # up to PID 1, which may be dvc in a container
            while launcher is not None and launcher.name() in SHELLS and launcher.ppid() > 0:
                launcher = launcher.parent()
        if launcher is None:
            raise ProcessLookupError
        watched = os.pidfd_open(launcher.pid)
    except (ProcessLookupError, psutil.NoSuchProcess):  # gone already
        os.kill(os.getpid(), signal.SIGHUP)
        return
    except OSError as error:  # say, a kernel older than 5.3
        logger.warning(
            "cannot watch the process that launched this stage (%s): killing it will not stop the stage", error
        )
        return
    threading.Thread(target=_signal_on_exit, args=(watched, launcher.pid), name="launcher-watch", daemon=True).start()


def _signal_on_exit(pidfd: int, pid: int) -> None:
    select.select([pidfd], [], [])  # readable once that process has exited
    logger.warning("the process that launched this stage (pid %d) exited", pid)
    os.kill(os.getpid(), signal.SIGHUP)


def resumable_checkpoints(checkpoint_dir: Path, *inputs: object) -> str:
    """The fingerprint of a run's settings and inputs (JSON values), with the checkpoints under
    `checkpoint_dir` that were made for another fingerprint, or are unreadable, moved aside.

    Each checkpoint carries the returned fingerprint (as checkpoint_extra) to be resumed later.
    """
    fingerprint = hashlib.sha256(json.dumps(list(inputs), sort_keys=True).encode()).hexdigest()
    discard_stale_checkpoints(checkpoint_dir, fingerprint)
    return fingerprint


def discard_stale_checkpoints(checkpoint_dir: Path, fingerprint: str) -> None:
    """Move aside checkpoints that this run must not resume: made with other settings, or unreadable.

    `fingerprint` names the settings and inputs; every checkpoint under `checkpoint_dir` (one per
    training phase) carries the one it was made with. One stale phase makes the whole folder stale.
    """
    from lmcore.checkpoint import CHECKPOINT_NAME, load_checkpoint

    reason = None
    for path in sorted(checkpoint_dir.rglob(CHECKPOINT_NAME)):
        try:
            if load_checkpoint(path).get("fingerprint") != fingerprint:
                reason = f"{path} was made with other settings"
        except ValueError:
            reason = f"{path} is unreadable"
        if reason:
            stale = checkpoint_dir.with_name(checkpoint_dir.name + ".stale")
            shutil.rmtree(stale, ignore_errors=True)
            checkpoint_dir.rename(stale)
            logger.warning("not resuming: %s; moved %s to %s", reason, checkpoint_dir, stale)
            return


def run_stage(main: Callable[[], None]) -> None:
    """Run a stage's main. A user error prints one clear line and exits 2, failed validation exits
    3, a lost connection exits 1, a stop signal exits 128 + the signal's number after the MLflow
    run is marked KILLED; each also leaves its outcome as JSON in outputs/outcomes/."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    for noisy in ("alembic", "mlflow", "great_expectations", "urllib3", "httpx"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    for signum in STOP_SIGNALS:  # SIGTERM would otherwise end the process without a word or a cleanup
        signal.signal(signum, _interrupt)
    stop_when_launcher_exits()
    try:
        main()
    except ValueError as error:
        logger.error("%s", error)
        write_outcome(INPUT_ERROR_EXIT, "input_error", str(error))
        sys.exit(INPUT_ERROR_EXIT)
    except ValidationFailed as failed:
        logger.error("%s\n%s", failed, "\n".join(f"  - {line}" for line in failed.failures))
        write_outcome(VALIDATION_FAILED_EXIT, "validation_failed", str(failed), failed.failures)
        sys.exit(VALIDATION_FAILED_EXIT)
    except ConnectionError as error:  # say, the tracking server: worth retrying, so not exit 2
        logger.error("%s", error)
        write_outcome(1, "connection_error", str(error))
        sys.exit(1)
    except KeyboardInterrupt as stop:  # lmcore's TrainingInterrupted, or StageInterrupted
        signum = RECEIVED_SIGNALS[-1] if RECEIVED_SIGNALS else signal.SIGINT
        logger.error("stopped: %s", stop or signal.Signals(signum).name)
        write_outcome(128 + signum, "interrupted", str(stop or signal.Signals(signum).name))
        sys.exit(128 + signum)
    write_outcome(0, "success", "")


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


def open_stream(name: str, tokenizer_sha256: str):
    """A token stream of the tokenizer stage, checked against the tokenizer in use."""
    from lmcore.data import load_token_stream

    path = stage_dir("tokenizer") / "streams" / f"{name}.bin"
    data, meta = load_token_stream(path)
    if meta.tokenizer_sha256 != tokenizer_sha256:
        raise ValueError(
            f"{path} was encoded by tokenizer {meta.tokenizer_sha256[:12]}, not {tokenizer_sha256[:12]}: re-run the tokenizer stage"
        )
    return data, meta


def lm_evaluator(stream: str, tokenizer_sha256: str, block_size: int, params) -> Callable:
    """`evaluate(model) -> metrics` on a fixed set of windows of one token stream (with bits/byte)."""
    from lmcore.data import check_block_size
    from lmcore.evaluate import evaluate_lm

    data, meta = open_stream(stream, tokenizer_sha256)
    check_block_size(data, block_size, f"{stream} stream's")  # before any work, naming the stream
    return lambda model: evaluate_lm(
        model, data, block_size, params.evaluate.batch_size, params.evaluate.num_windows, meta.bytes_per_token
    )


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
