"""Test-wide settings: CPU only, one torch thread (a 2-thread step is 5x slower next to a busy process)."""

import atexit
import os
import shutil
import tempfile

os.environ.setdefault("OMP_NUM_THREADS", "1")
# The suite runs on CPU, as in CI, so its exact-equality checks hold on a GPU machine too.
# LMCORE_TEST_CUDA=1 (bench/gpu.sh) leaves the GPU visible for tests/lmcore/test_cuda.py.
if os.environ.get("LMCORE_TEST_CUDA") != "1":
    os.environ["CUDA_VISIBLE_DEVICES"] = ""
# Hugging Face libraries (transformers, datasets, lm-eval) offline, with their caches (remote code,
# datasets) in a folder of this run rather than the user's home.
os.environ.update(HF_HUB_OFFLINE="1", HF_DATASETS_OFFLINE="1", TRANSFORMERS_VERBOSITY="error")
if "HF_HOME" not in os.environ:
    os.environ["HF_HOME"] = tempfile.mkdtemp(prefix="lmcore-tests-hf-")
    atexit.register(shutil.rmtree, os.environ["HF_HOME"], True)

import pytest  # noqa: E402
import torch  # noqa: E402

torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def seeded_torch() -> None:
    """Each test starts from one global torch RNG state, whatever ran before it: a model built
    without a seed would otherwise draw its init from what earlier tests left behind."""
    torch.manual_seed(0)


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
