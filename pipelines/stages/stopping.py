"""Stopping a stage cleanly: signals, the watch on the launching `dvc repro`, stop requests.

A first SIGINT, SIGTERM or SIGHUP during training asks lmcore's `train` to finish its step and
checkpoint it (`stop_requests`); outside training, or a second time, the stage stops at once
(`StageInterrupted`). DVC does not pass a SIGTERM on to its stage, so each stage also watches the
`dvc repro` that launched it and sends itself a SIGHUP when that exits.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import threading
from collections.abc import Callable, Iterator

import psutil

logger = logging.getLogger("pipelines")
# SIGHUP is also what a stage sends itself when its `dvc repro` dies (see stop_when_launcher_exits).
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)
RECEIVED_SIGNALS: list[int] = []  # for the exit code: 128 + the signal's number
SHELLS = frozenset({"sh", "dash", "bash", "zsh", "ksh", "mksh", "fish"})


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


def install_stop_handlers() -> None:
    """Outside training, a stop signal ends the stage at once (with a cleanup), and so does the
    launcher's exit."""
    for signum in STOP_SIGNALS:  # SIGTERM would otherwise end the process without a word or a cleanup
        signal.signal(signum, _interrupt)
    stop_when_launcher_exits()
