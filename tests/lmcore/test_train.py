"""The training loop: schedule, resume, stop requests, precision, divergence, accumulation."""

import pytest
import torch

from lmcore.checkpoint import CHECKPOINT_NAME, load_checkpoint
from lmcore.data import get_batch
from lmcore.evaluate import evaluate_lm
from lmcore.train import (
    TrainConfig,
    TrainingDivergedError,
    TrainingInterrupted,
    get_lr,
    lm_loss,
    train,
)
from tests.lmcore.helpers import BASE, DATA, lm_batches, run, tiny_model, token_stream


def test_get_lr_warmup_then_cosine():
    cfg = TrainConfig(max_steps=100, learning_rate=1.0, min_lr=0.1, warmup_steps=10)
    assert get_lr(0, cfg) == pytest.approx(0.1)
    assert get_lr(9, cfg) == pytest.approx(1.0)
    assert get_lr(55, cfg) == pytest.approx(0.55)
    assert get_lr(100, cfg) == pytest.approx(0.1)


def test_training_reduces_validation_loss_and_logs_metrics():
    torch.manual_seed(0)
    model = tiny_model("gpt")
    before = evaluate_lm(model, DATA, 16, num_windows=64)["loss"]
    cfg = TrainConfig(**{**BASE.__dict__, "max_steps": 60})
    result, logs = run(model, cfg, evaluate=lambda m: evaluate_lm(m, DATA, 16, num_windows=64))
    assert result.eval_metrics["loss"] < before - 0.5
    step_metrics = [m for _, m in logs if "train/loss" in m]
    assert set(step_metrics[-1]) == {
        "train/loss",
        "train/lr",
        "train/grad_norm",
        "train/tokens_per_sec",
        "train/step_ms",
        "train/mfu",
    }
    assert all(m["train/tokens_per_sec"] > 0 and m["train/mfu"] > 0 for m in step_metrics)
    assert [s for s, m in logs if "val/loss" in m] == [5 * i for i in range(1, 13)]


@pytest.mark.parametrize(
    "name,dtype,batch_threads,layered",
    [
        ("gpt", "float32", 1, {}),
        ("lstm", "float32", 1, {}),
        ("gpt", "float16", 1, {}),
        ("gpt", "float32", 2, {}),
        ("lstm", "float32", 1, {"layer_lr_decay": 2.6, "unfreeze_interval": 4}),
    ],
)
def test_resume_after_interruption_is_exact(tmp_path, name, dtype, batch_threads, layered):
    cfg = TrainConfig(
        **{**BASE.__dict__, "max_steps": 16, "dtype": dtype, "device": "cpu", "batch_threads": batch_threads, **layered}
    )
    dropout = 0.1 if batch_threads == 1 else 0.0  # threads refuse dropout
    torch.manual_seed(0)
    reference = tiny_model(name, dropout=dropout)
    _, ref_logs = run(reference, cfg, checkpoint_dir=tmp_path / "ref")

    torch.manual_seed(0)
    calls = {"n": 0}

    def crashing_batches(generator):
        calls["n"] += 1
        if calls["n"] == 13:  # step 12, after the checkpoint at step 10
            raise KeyboardInterrupt
        return lm_batches(generator)

    interrupted = tiny_model(name, dropout=dropout)
    with pytest.raises(KeyboardInterrupt):
        train(interrupted, cfg, crashing_batches, lm_loss, checkpoint_dir=tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["step"] == 10

    torch.manual_seed(123)  # a fresh process: nothing carried over but the checkpoint
    resumed = tiny_model(name, dropout=dropout)
    _, resumed_logs = run(resumed, cfg, checkpoint_dir=tmp_path / "run")
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    ref_losses = {s: m["train/loss"] for s, m in ref_logs if s > 10 and "train/loss" in m}
    assert ref_losses == {s: m["train/loss"] for s, m in resumed_logs if "train/loss" in m}
    # fp16's loss scaler counts steps since its last overflow: 16 only if the count was restored.
    scaler_state = load_checkpoint(tmp_path / "run" / CHECKPOINT_NAME)["scaler"]
    assert scaler_state == load_checkpoint(tmp_path / "ref" / CHECKPOINT_NAME)["scaler"]
    if dtype == "float16":
        assert scaler_state["_growth_tracker"] == 16


def test_a_stop_request_checkpoints_the_finished_step_and_resumes_exactly(tmp_path):
    """As a SIGTERM handler would: the step in progress ends, is checkpointed, and training stops."""
    cfg = TrainConfig(**{**BASE.__dict__, "max_steps": 16, "checkpoint_interval": 100, "device": "cpu"})

    def evaluate(model):
        return evaluate_lm(model, DATA, 16, num_windows=8)

    torch.manual_seed(0)
    reference = tiny_model("gpt")
    _, ref_logs = run(reference, cfg, evaluate=evaluate)

    asked = []

    def stop_during_step_7():
        asked.append(len(asked))
        return len(asked) == 8  # asked once per step, after its backward: steps 0..7 run

    torch.manual_seed(0)
    with pytest.raises(TrainingInterrupted, match=r"stopped on request at step 8; checkpoint .* resumes it") as stop:
        run(tiny_model("gpt"), cfg, evaluate=evaluate, checkpoint_dir=tmp_path, should_stop=stop_during_step_7)
    assert stop.value.step == 8 and isinstance(stop.value, KeyboardInterrupt)
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 8  # no periodic checkpoint before step 100

    torch.manual_seed(123)
    resumed = tiny_model("gpt")
    _, resumed_logs = run(resumed, cfg, evaluate=evaluate, checkpoint_dir=tmp_path, should_stop=lambda: False)
    for key, value in reference.state_dict().items():
        assert torch.equal(value, resumed.state_dict()[key]), key
    ref_losses = {s: m["train/loss"] for s, m in ref_logs if s > 8 and "train/loss" in m}
    assert ref_losses == {s: m["train/loss"] for s, m in resumed_logs if "train/loss" in m}
    ref_evals = {s: m for s, m in ref_logs if "val/loss" in m}
    assert {s: m for s, m in resumed_logs if "val/loss" in m} == {s: m for s, m in ref_evals.items() if s >= 10}


def test_a_stop_request_without_a_checkpoint_dir_still_stops_at_a_step_boundary():
    model = tiny_model("lstm")
    with pytest.raises(TrainingInterrupted, match="at step 1; no checkpoint_dir, nothing saved"):
        run(model, BASE, should_stop=lambda: True)
    finished = run(tiny_model("lstm"), TrainConfig(**{**BASE.__dict__, "max_steps": 1}), should_stop=lambda: True)
    assert finished[0].step == 1  # a request during the last step changes nothing


@pytest.mark.parametrize("dtype", ["bfloat16", "float16"])
@pytest.mark.parametrize("name", ["gpt", "gpt_classic", "lstm", "gru"])
def test_mixed_precision_computes_in_low_precision_and_keeps_fp32_weights(name, dtype):
    """The CUDA path's autocast and loss scaling, run on CPU (where lmcore's default is fp32)."""
    torch.manual_seed(0)
    model = tiny_model(name)
    evaluate = lambda m: evaluate_lm(m, DATA, 16, num_windows=64)  # noqa: E731
    before = evaluate(model)["loss"]
    head_output_dtypes, rnn_output_dtypes = set(), set()
    model.lm_head.register_forward_hook(lambda module, inputs, output: head_output_dtypes.add(output.dtype))
    # The recurrence runs in fp32 on CPU, but for an LSTM in bf16 where oneDNN has that kernel
    # (AVX-512 BF16 or AMX); CPU autocast itself keeps the GRU in fp32.
    if hasattr(model, "rnn"):
        model.rnn.register_forward_hook(lambda module, inputs, output: rnn_output_dtypes.add(output[0].dtype))
    cfg = TrainConfig(
        **{**BASE.__dict__, "max_steps": 60, "batch_size": 8, "eval_interval": 60, "dtype": dtype, "device": "cpu"}
    )
    result = train(model, cfg, lambda g: get_batch(DATA, 8, 16, g), lm_loss, evaluate)
    assert head_output_dtypes == {getattr(torch, dtype)}
    native_bf16 = dtype == "bfloat16" and name == "lstm" and torch.ops.mkldnn._is_mkldnn_bf16_supported()
    assert rnn_output_dtypes == ({torch.bfloat16 if native_bf16 else torch.float32} if hasattr(model, "rnn") else set())
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert result.eval_metrics["loss"] < before - 1.5


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    calls = {"n": 0}

    def loss_that_explodes(model, batch):
        calls["n"] += 1
        loss = lm_loss(model, batch)
        return loss * float("nan") if calls["n"] == 8 else loss

    model = tiny_model("gpt")
    with pytest.raises(TrainingDivergedError, match="loss is nan at step 7"):
        train(model, BASE, lm_batches, loss_that_explodes, checkpoint_dir=tmp_path)
    state = load_checkpoint(tmp_path / CHECKPOINT_NAME)
    assert state["step"] == 5
    assert all(torch.isfinite(v).all() for v in state["model"].values())


def test_grad_accumulation_matches_a_bigger_batch():
    torch.manual_seed(0)
    a, b = tiny_model("gpt"), tiny_model("gpt")
    b.load_state_dict(a.state_dict())
    data = token_stream()
    big = TrainConfig(max_steps=3, batch_size=8, warmup_steps=1, peak_flops=1e9)
    fixed = get_batch(data, 8, 16, torch.Generator().manual_seed(0))
    calls = {"n": 0}

    def micro(generator):  # the two halves of `fixed`, alternately
        half = slice(4 * (calls["n"] % 2), 4 * (calls["n"] % 2) + 4)
        calls["n"] += 1
        return fixed[0][half], fixed[1][half]

    train(a, big, lambda g: fixed, lm_loss)
    train(b, TrainConfig(**{**big.__dict__, "batch_size": 4, "grad_accum_steps": 2}), micro, lm_loss)
    for key, value in a.state_dict().items():
        assert torch.allclose(value, b.state_dict()[key], atol=1e-5), key


def test_compiled_training_matches_eager_and_checkpoints_plain_names(tmp_path):
    """torch.compile (inductor, about 15 s here) trains the same weights as eager mode."""
    cfg = TrainConfig(**{**BASE.__dict__, "max_steps": 10, "device": "cpu"})
    torch.manual_seed(0)
    eager = tiny_model("gpt")
    torch.manual_seed(0)
    compiled = tiny_model("gpt")
    run(eager, cfg)
    run(compiled, TrainConfig(**{**cfg.__dict__, "compile": True}), checkpoint_dir=tmp_path)
    for key, value in eager.state_dict().items():
        assert torch.allclose(value, compiled.state_dict()[key], atol=1e-5), key
    assert set(load_checkpoint(tmp_path / CHECKPOINT_NAME)["model"]) == set(eager.state_dict())


def test_resume_refuses_a_checkpoint_of_another_model(tmp_path):
    cfg = TrainConfig(**{**BASE.__dict__, "max_steps": 5})
    run(tiny_model("gpt"), cfg, checkpoint_dir=tmp_path)
    with pytest.raises(
        ValueError, match=r"checkpoint.pt does not fit .*wte.weight is \(48, 32\) there but \(40, 32\) here"
    ):
        run(
            tiny_model("gpt", vocab_size=40), TrainConfig(**{**BASE.__dict__, "max_steps": 10}), checkpoint_dir=tmp_path
        )
    assert load_checkpoint(tmp_path / CHECKPOINT_NAME)["step"] == 5  # left as it was


def test_early_stopping_without_its_metric_is_named():
    watching = TrainConfig(**{**BASE.__dict__, "early_stopping_patience": 2, "early_stopping_metric": "acc"})
    with pytest.raises(ValueError, match="early_stopping_patience=2 needs an `evaluate` function"):
        run(tiny_model("lstm"), watching)
    with pytest.raises(
        ValueError, match=r"early_stopping_metric='acc' is not among the evaluation's metrics \['loss'\]"
    ):
        run(tiny_model("lstm"), watching, evaluate=lambda model: {"loss": 1.0})


def test_resume_with_changed_settings_says_which(tmp_path, caplog):
    run(tiny_model("lstm"), TrainConfig(**{**BASE.__dict__, "max_steps": 5}), checkpoint_dir=tmp_path)
    with caplog.at_level("WARNING", logger="lmcore.train"):
        result, _ = run(
            tiny_model("lstm"),
            TrainConfig(**{**BASE.__dict__, "max_steps": 8, "learning_rate": 1e-3}),
            checkpoint_dir=tmp_path,
        )
    assert result.step == 8
    assert "changed since the checkpoint: max_steps 5 -> 8; learning_rate 0.003 -> 0.001" in caplog.text


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_a_device_this_machine_lacks_is_refused_before_any_step():
    model = tiny_model("gpt")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match="device='cuda:1', but this torch sees no CUDA GPU"):
        run(model, TrainConfig(**{**BASE.__dict__, "device": "cuda:1"}))
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())
