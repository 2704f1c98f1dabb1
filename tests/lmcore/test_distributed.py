import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from lmcore.checkpoint import CHECKPOINT_NAME

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_process_gloo_run_matches_single_process_and_shares_evaluation(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    worker = ["-m", "tests.lmcore.ddp_worker"]
    subprocess.run([sys.executable, *worker, str(tmp_path / "single.pt")], env=env, cwd=ROOT, check=True, timeout=120)
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", *worker]
    subprocess.run([*torchrun, str(tmp_path / "ddp.pt")], env=env, cwd=ROOT, check=True, timeout=180)
    single = torch.load(tmp_path / "single.pt", weights_only=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert single.keys() == ddp.keys()
    for key, value in single.items():
        assert torch.allclose(value, ddp[key], atol=1e-5), key

    # Each rank evaluates every other batch of 8 and still gets the single-process figures.
    alone = json.loads((tmp_path / "single.pt.rank0.json").read_text())
    ranks = [json.loads((tmp_path / f"ddp.pt.rank{r}.json").read_text()) for r in (0, 1)]
    assert len(alone["evaluations"]) == 2  # steps 3 and 6
    for shared in ranks:
        for expected, got in zip(alone["evaluations"], shared["evaluations"], strict=True):
            assert got["lm"] == pytest.approx(expected["lm"], rel=1e-5)
            np.testing.assert_allclose(got["probs"], expected["probs"], atol=1e-5)
    assert alone["rows_seen"] == {"windows": 80, "texts": 74}  # 40 windows and 37 texts, twice
    assert [r["rows_seen"] for r in ranks] == [{"windows": 48, "texts": 42}, {"windows": 32, "texts": 32}]

    # Rank 1 alone asks to stop during step 4: both ranks stop after it, rank 0 checkpoints step 5,
    # and the resumed run ends on the single process's weights.
    stopped = tmp_path / "stopped.pt"
    checkpoints = tmp_path / "checkpoints"
    subprocess.run([*torchrun, str(stopped), str(checkpoints), "1"], env=env, cwd=ROOT, check=True, timeout=180)
    assert [(tmp_path / f"stopped.pt.rank{r}.stopped").read_text() for r in (0, 1)] == ["5", "5"]
    assert torch.load(checkpoints / CHECKPOINT_NAME, weights_only=True)["step"] == 5
    resumed = tmp_path / "resumed.pt"
    subprocess.run([*torchrun, str(resumed), str(checkpoints)], env=env, cwd=ROOT, check=True, timeout=180)
    for key, value in torch.load(resumed, weights_only=True).items():
        assert torch.allclose(value, single[key], atol=1e-5), key
