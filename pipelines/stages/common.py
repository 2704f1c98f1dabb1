"""What every stage shares: output paths, swapping outputs in, outcomes, checkpoint fingerprints,
the token streams of the tokenizer stage, the entry point (`run_stage`)."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import signal
import sys
from collections.abc import Callable
from pathlib import Path

from pipelines.layout import outputs
from pipelines.stages.stopping import RECEIVED_SIGNALS, install_stop_handlers

logger = logging.getLogger("pipelines")
INPUT_ERROR_EXIT = 2  # a bad config value or input file: one clear line, never worth a retry
VALIDATION_FAILED_EXIT = 3  # the data failed its expectations


def task_argument(params, section: str = "tasks") -> str:
    """The task a foreach stage runs for (`python -m pipelines.stages.finetune sst2`): a key of
    params.tasks (or of the section named)."""
    names = sorted(getattr(params, section))
    if len(sys.argv) != 2 or sys.argv[1] not in names:
        given = " ".join(sys.argv[1:]) or "nothing"
        raise ValueError(f"{sys.argv[0]} takes one task of params.yaml's {section} {names}, got {given}")
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
    """<outcomes>/<dvc stage>.json: how the stage ended (only when DVC runs it), as JSON for
    orchestrators (pipelines/dvc_runner.py reads it). Not a DVC output, so DVC never deletes it
    before the stage runs."""
    stage = os.environ.get("DVC_STAGE")
    if not stage:
        return
    folder = outputs("outcomes").dir
    folder.mkdir(parents=True, exist_ok=True)
    outcome = {"stage": stage, "exit_code": exit_code, "kind": kind, "message": message, "failures": failures or []}
    tmp = folder / f"{stage}.json.tmp"
    tmp.write_text(json.dumps(outcome, indent=2) + "\n")
    os.replace(tmp, folder / f"{stage}.json")


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
    install_stop_handlers()
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


def open_stream(name: str, tokenizer_sha256: str):
    """A token stream of the tokenizer stage, checked against the tokenizer in use."""
    from lmcore.data import load_token_stream

    path = outputs("tokenizer").streams / f"{name}.bin"
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


def load_backbone(params, init: str, tokenizer_sha256: str, vocab_size: int, arch: str | None = None) -> tuple:
    """The model a finetuning stage starts from: (model, arch, config values). `init` "pretrained"
    is the pretrain stage's model, checked against the tokenizer; "scratch" is random weights of
    `arch` (default model.arch) in params.yaml's shape, drawn from torch's global generator."""
    from lmcore.checkpoint import load_model
    from lmcore.models import build_model, build_model_config

    if init == "pretrained":
        path = outputs("pretrain").model
        model, config = load_model(path)
        if config.get("tokenizer_sha256") != tokenizer_sha256:
            raise ValueError(f"{path} was trained with another tokenizer (vocab mismatch): re-run pretrain")
        return model, config["arch"], config["model"]
    arch = arch or params.model.arch
    values = {**getattr(params.model, arch), "vocab_size": vocab_size}
    return build_model(arch, build_model_config(arch, values, f"model.{arch}")), arch, values


def json_dump(path: Path, payload: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n")
    os.replace(tmp, path)
