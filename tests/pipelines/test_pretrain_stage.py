import torch

from lmcore.checkpoint import CHECKPOINT_NAME, save_checkpoint
from pipelines.stages.pretrain import discard_stale_checkpoint


def test_only_a_readable_checkpoint_of_the_same_settings_is_kept_for_resuming(tmp_path):
    checkpoints = tmp_path / "checkpoints"
    save_checkpoint(checkpoints / CHECKPOINT_NAME, {"fingerprint": "abc", "w": torch.ones(2)})
    discard_stale_checkpoint(checkpoints, "abc")
    assert (checkpoints / CHECKPOINT_NAME).exists()

    discard_stale_checkpoint(checkpoints, "other settings")
    assert not checkpoints.exists() and (tmp_path / "checkpoints.stale" / CHECKPOINT_NAME).exists()

    checkpoints.mkdir()
    (checkpoints / CHECKPOINT_NAME).write_bytes(b"half a checkpoint")  # say, a disk that filled up
    discard_stale_checkpoint(checkpoints, "abc")
    assert not checkpoints.exists()
    assert (tmp_path / "checkpoints.stale" / CHECKPOINT_NAME).read_bytes() == b"half a checkpoint"
