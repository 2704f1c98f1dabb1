"""Row-shard threads on CPU: exact, deterministic, refused where they cannot be exact."""

import threading

import pytest
import torch

from lmcore.data import get_labeled_batch
from lmcore.models import SequenceClassifier
from lmcore.sharding import resolve_batch_threads
from lmcore.train import (
    TrainConfig,
    TrainingDivergedError,
    classification_loss,
    lm_loss,
    train,
)
from tests.lmcore.helpers import BASE, lm_batches, make_labeled, run, tiny_model


@pytest.mark.parametrize("name", ["gpt", "lstm", "gru", "classifier"])
def test_batch_threads_train_the_whole_batch_deterministically(name):
    labeled = make_labeled(64)

    def trained(batch_threads):
        torch.manual_seed(0)
        cfg = TrainConfig(
            max_steps=4, batch_size=4, grad_accum_steps=2, warmup_steps=1, peak_flops=1e9, batch_threads=batch_threads
        )
        if name == "classifier":  # padded batches of texts of different lengths
            model = SequenceClassifier(tiny_model("lstm"), 2)
            train(model, cfg, lambda g: get_labeled_batch(labeled, 4, 0, 16, g), classification_loss)
        else:
            model = tiny_model(name)
            train(model, cfg, lm_batches, lm_loss)
        return model.state_dict()

    torch.set_num_threads(2)  # the caller's intra-op setting, which the shard threads must not change
    try:
        whole, split, again = trained(1), trained(3), trained(3)  # shards of 2, 1 and 1 rows
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    for key, value in whole.items():
        assert torch.allclose(value, split[key], atol=1e-5), key  # shard losses weighted by rows
        assert torch.equal(split[key], again[key]), key  # gradients summed in shard order


def test_batch_threads_step_on_one_main_thread_and_evaluate_on_the_callers():
    seen = {"batch": set(), "eval": set()}

    def batches(generator):
        seen["batch"].add(torch.get_num_threads())  # the main thread, during a step
        return lm_batches(generator)

    def evaluate(model):
        seen["eval"].add(torch.get_num_threads())
        return {"loss": 1.0}

    torch.set_num_threads(2)
    try:
        train(
            tiny_model("gpt"),
            TrainConfig(**{**BASE.__dict__, "max_steps": 6, "batch_threads": 2}),
            batches,
            evaluate=evaluate,
        )
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(1)
    assert seen == {"batch": {1}, "eval": {2}}


@pytest.mark.parametrize(
    "changes, dropout, message",
    [
        ({}, 0.1, "^batch_threads=2 needs dropout 0"),
        ({"compile": True}, 0.0, "^batch_threads=2 cannot be combined with compile=true"),
        ({"device": "meta"}, 0.0, "^batch_threads=2 runs on CPU only, the device is meta"),
    ],
)
def test_batch_threads_refuse_what_they_cannot_split_exactly(changes, dropout, message):
    cfg = TrainConfig(**{**BASE.__dict__, "batch_threads": 2, **changes})
    model = tiny_model("gpt", dropout=dropout)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    with pytest.raises(ValueError, match=message):
        run(model, cfg)
    assert all(torch.equal(v, model.state_dict()[k]) for k, v in before.items())  # refused before any step


def test_auto_batch_threads_use_torch_threads_where_the_run_allows():
    auto = TrainConfig(**{**BASE.__dict__, "batch_threads": 0})
    cpu = torch.device("cpu")
    torch.set_num_threads(2)
    try:
        assert resolve_batch_threads(tiny_model("gpt"), auto, cpu, 1) == 2
        assert resolve_batch_threads(tiny_model("gpt", dropout=0.1), auto, cpu, 1) == 1
        assert resolve_batch_threads(tiny_model("gpt"), auto, torch.device("cuda"), 1) == 1
        assert resolve_batch_threads(tiny_model("gpt"), auto, cpu, 2) == 1
    finally:
        torch.set_num_threads(1)
    assert resolve_batch_threads(tiny_model("gpt"), auto, cpu, 1) == 1


def test_shard_threads_end_with_training_even_when_it_fails():
    calls: list[int] = []

    def diverging(model, batch):
        calls.append(1)
        loss = lm_loss(model, batch)
        return loss * float("nan") if len(calls) > 6 else loss  # two shards a step: NaN from step 3

    with pytest.raises(TrainingDivergedError, match="at step 3"):
        train(tiny_model("gpt"), TrainConfig(**{**BASE.__dict__, "batch_threads": 2}), lm_batches, diverging)
    assert not [t.name for t in threading.enumerate() if t.name.startswith("lmcore-shard")]
