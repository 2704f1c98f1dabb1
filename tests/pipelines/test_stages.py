import os
import signal

import numpy as np
import pytest
import torch

from lmcore.checkpoint import CHECKPOINT_NAME, save_checkpoint
from lmcore.data import write_token_stream
from pipelines.stages.common import StageInterrupted, discard_stale_checkpoints, lm_evaluator, stop_requests


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
        os.kill(os.getpid(), signal.SIGHUP)  # the kernel's parent-death signal, maybe more than once
        os.kill(os.getpid(), signal.SIGHUP)
        assert should_stop()
        with pytest.raises(StageInterrupted, match="SIGTERM received"):
            os.kill(os.getpid(), signal.SIGTERM)
    assert signal.getsignal(signal.SIGTERM) is outside
