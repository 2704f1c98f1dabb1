import contextlib
import os
import shlex
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
import torch

from lmcore.checkpoint import CHECKPOINT_NAME, save_checkpoint
from lmcore.data import write_token_stream
from pipelines.stages.common import discard_stale_checkpoints, lm_evaluator
from pipelines.stages.stopping import StageInterrupted, stop_requests


def test_an_evaluation_stream_shorter_than_a_window_is_named_before_any_work(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    streams = tmp_path / "outputs" / "tokenizer" / "streams"
    streams.mkdir(parents=True)
    write_token_stream(streams / "pretrain_test.bin", np.arange(10), 16, 10, "abc")
    with pytest.raises(
        ValueError, match="block_size=32 is larger than the pretrain_test stream's data \\(10 tokens\\)"
    ):
        lm_evaluator("pretrain_test", "abc", 32, params=None)
    with pytest.raises(ValueError, match="was encoded by tokenizer abc"):
        lm_evaluator("pretrain_test", "another tokenizer", 4, params=None)


def test_only_a_readable_checkpoint_of_the_same_settings_is_kept_for_resuming(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    save_checkpoint(checkpoints / CHECKPOINT_NAME, {"fingerprint": "abc", "w": torch.ones(2)})
    discard_stale_checkpoints(checkpoints, "abc")
    assert (checkpoints / CHECKPOINT_NAME).exists()

    discard_stale_checkpoints(checkpoints, "other settings")
    assert not checkpoints.exists() and (tmp_path / "checkpoints.stale" / CHECKPOINT_NAME).exists()

    checkpoints.mkdir()
    (checkpoints / CHECKPOINT_NAME).write_bytes(b"half a checkpoint")  # say, a disk that filled up
    discard_stale_checkpoints(checkpoints, "abc")
    assert not checkpoints.exists()
    assert (tmp_path / "checkpoints.stale" / CHECKPOINT_NAME).read_bytes() == b"half a checkpoint"

    # Phases (finetune's lm, classifier, scratch): one stale phase makes the whole folder stale.
    save_checkpoint(checkpoints / "lm" / CHECKPOINT_NAME, {"fingerprint": "abc"})
    save_checkpoint(checkpoints / "classifier" / CHECKPOINT_NAME, {"fingerprint": "abc"})
    discard_stale_checkpoints(checkpoints, "abc")
    assert (checkpoints / "classifier" / CHECKPOINT_NAME).exists()
    save_checkpoint(checkpoints / "scratch" / CHECKPOINT_NAME, {"fingerprint": "older settings"})
    discard_stale_checkpoints(checkpoints, "abc")
    assert not checkpoints.exists() and (tmp_path / "checkpoints.stale" / "lm" / CHECKPOINT_NAME).exists()


def test_a_first_stop_signal_asks_training_to_stop_and_a_second_stops_at_once():
    outside = signal.getsignal(signal.SIGTERM)
    with stop_requests() as should_stop:
        assert not should_stop()
        os.kill(os.getpid(), signal.SIGHUP)  # the launcher died, then the terminal hung up
        os.kill(os.getpid(), signal.SIGHUP)
        assert should_stop()
        with pytest.raises(StageInterrupted, match="SIGTERM received"):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is outside


STAGE = """
import time
from pipelines.stages.stopping import stop_requests, stop_when_launcher_exits
stop_when_launcher_exits()
with stop_requests() as should_stop:
    print("training", flush=True)
    while not should_stop():
        time.sleep(0.01)
print("stopped", flush=True)
"""
# What DVC does: run the stage's command through a shell, here one that cannot exec it (it has more
# to do after), so the shell outlives a killed launcher, as dash (Debian's /bin/sh) does.
LAUNCHER = """
import subprocess, sys
subprocess.run(["/bin/sh", "-c", sys.argv[1] + "; exit $?"])
"""


@pytest.mark.skipif(not hasattr(os, "pidfd_open"), reason="Linux only")
def test_a_stage_stops_when_its_launcher_dies_even_behind_a_shell(tmp_path):
    (tmp_path / "stage.py").write_text(textwrap.dedent(STAGE))
    stage_command = f"{shlex.quote(sys.executable)} {shlex.quote(str(tmp_path / 'stage.py'))}"
    env = {**os.environ, "DVC_STAGE": "train", "PYTHONPATH": str(Path(__file__).parents[2])}
    launcher = subprocess.Popen(
        [sys.executable, "-c", LAUNCHER, stage_command],
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        assert launcher.stdout.readline() == "training\n"
        launcher.kill()  # as dvc dies, by any signal: nothing reaches the stage from it
        rest = launcher.communicate(timeout=30)[0]  # the pipe closes when the stage exits
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(launcher.pid, signal.SIGKILL)
    assert "SIGHUP: stopping after the current training step" in rest
    assert rest.endswith("stopped\n")
