"""The CUDA path: bf16 autocast, fused AdamW, checkpoints that move between GPU and CPU.

They run with LMCORE_TEST_CUDA=1 on a machine with a CUDA GPU: `bash bench/gpu.sh` runs them
before the GPU benchmark. Elsewhere (CI has no GPU) they skip, and the CPU tests cover the same
code with autocast on CPU.
"""

import dataclasses

import pytest
import torch

from lmcore.checkpoint import CHECKPOINT_NAME, export_model, load_checkpoint, load_model
from lmcore.data import get_batch
from lmcore.evaluate import evaluate_lm
from lmcore.generate import generate
from lmcore.runtime import measure_peak_flops, resolve_device, resolve_dtype
from lmcore.train import lm_loss, train
from tests.lmcore.helpers import ARCH_OF, BASE, DATA, TINY, tiny_model

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU and LMCORE_TEST_CUDA=1")

# the CPU tests' short run, longer and on the GPU; MFU against the GPU's measured peak
CONFIG = dataclasses.replace(
    BASE, max_steps=60, batch_size=8, eval_interval=60, checkpoint_interval=20, log_interval=10, device="cuda",
    peak_flops=0.0,
)  # fmt: skip


def test_auto_device_and_dtype_pick_cuda_and_bf16():
    device = resolve_device("auto")
    assert device.type == "cuda"
    assert resolve_dtype("auto", device) == torch.bfloat16
    assert measure_peak_flops(device, torch.bfloat16) > 10e12


@pytest.mark.parametrize("name", ["gpt", "gpt_classic", "gpt_swiglu", "lstm", "gru"])
def test_training_on_cuda_computes_in_bf16_and_reports_mfu(name):
    torch.manual_seed(0)
    model = tiny_model(name)
    before = evaluate_lm(model, DATA, 16, num_windows=64)["loss"]
    head_output_dtypes, rnn_output_dtypes = set(), set()
    model.lm_head.register_forward_hook(lambda module, inputs, output: head_output_dtypes.add(output.dtype))
    if hasattr(model, "rnn"):  # autocast alone would run cuDNN's RNN in fp16, unscaled in a bf16 run
        model.rnn.register_forward_hook(lambda module, inputs, output: rnn_output_dtypes.add(output[0].dtype))
    logs = []
    result = train(
        model,
        CONFIG,
        lambda g: get_batch(DATA, 8, 16, g),
        lm_loss,
        lambda m: evaluate_lm(m, DATA, 16, num_windows=64),
        log=lambda step, metrics: logs.append(metrics),
    )
    assert head_output_dtypes == {torch.bfloat16}
    assert rnn_output_dtypes == ({torch.float32} if hasattr(model, "rnn") else set())
    assert {p.device.type for p in model.parameters()} == {"cuda"}
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert result.eval_metrics["loss"] < before - 1.5
    assert all(0 < m["train/mfu"] < 1 for m in logs if "train/mfu" in m)


@pytest.mark.parametrize("name", ["gpt", "lstm"])
def test_cuda_run_resumes_and_its_files_load_on_cpu(tmp_path, name):
    torch.manual_seed(0)
    reference = tiny_model(name)
    train(reference, CONFIG, lambda g: get_batch(DATA, 8, 16, g), lm_loss)

    calls = {"n": 0}

    def crashing_batches(generator):
        calls["n"] += 1
        if calls["n"] == 31:  # step 30, after the checkpoint at step 20
            raise KeyboardInterrupt
        return get_batch(DATA, 8, 16, generator)

    torch.manual_seed(0)
    with pytest.raises(KeyboardInterrupt):
        train(tiny_model(name), CONFIG, crashing_batches, lm_loss, checkpoint_dir=tmp_path)
    torch.manual_seed(123)
    resumed = tiny_model(name)
    train(resumed, CONFIG, lambda g: get_batch(DATA, 8, 16, g), lm_loss, checkpoint_dir=tmp_path)
    for key, value in reference.state_dict().items():
        # bf16 and atomic-add kernels make GPU runs reproducible to rounding, not bit for bit
        torch.testing.assert_close(resumed.state_dict()[key], value, rtol=1e-2, atol=1e-3, msg=key)

    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert {v.device.type for v in state["model"].values()} == {"cpu"}
    on_cpu, _ = load_model(export_model(tmp_path / "model", resumed, ARCH_OF[name], TINY[name]))
    x = torch.from_numpy(DATA[:16].astype("int64"))[None]  # (1, 16)
    # TF32 matmuls on the GPU: close, not equal
    torch.testing.assert_close(on_cpu(x), resumed.eval()(x.cuda()).cpu(), rtol=1e-2, atol=1e-2)
    assert len(generate(resumed, x[0].tolist(), 20, temperature=0.8, seed=1)) == 20
