"""Test-wide settings: one torch thread (a 2-thread step is 5x slower next to a busy process)."""

import os

os.environ.setdefault("OMP_NUM_THREADS", "1")

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture
def shakespeare_text() -> str:
    """A small, varied, self-made corpus (tests never read the bundled data)."""
    lines = [
        "First Citizen:\nBefore we proceed any further, hear me speak.\n",
        "All:\nSpeak, speak.\n",
        "First Citizen:\nYou are all resolved rather to die than to famish?\n",
        "MENENIUS:\nWhat work's, my countrymen, in hand? where go you\nWith bats and clubs?\n",
    ]
    return "\n".join(lines * 40)
