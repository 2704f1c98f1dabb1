import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parents[2]


@pytest.mark.slow
def test_two_process_gloo_run_matches_single_process(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    worker = ["-m", "tests.lmcore.ddp_worker"]
    subprocess.run([sys.executable, *worker, str(tmp_path / "single.pt")], env=env, cwd=ROOT, check=True, timeout=120)
    subprocess.run(
        [
            sys.executable,
            "-m",
            "torch.distributed.run",
            "--standalone",
            "--nproc_per_node",
            "2",
            *worker,
            str(tmp_path / "ddp.pt"),
        ],
        env=env,
        cwd=ROOT,
        check=True,
        timeout=180,
    )
    single = torch.load(tmp_path / "single.pt", weights_only=True)
    ddp = torch.load(tmp_path / "ddp.pt", weights_only=True)
    assert single.keys() == ddp.keys()
    for key, value in single.items():
        assert torch.allclose(value, ddp[key], atol=1e-5), key
