import math

import numpy as np
import pytest
import torch

from lmcore.data import LabeledExamples
from lmcore.evaluate import bootstrap_accuracy, classification_metrics, evaluate_lm, predict_classes
from lmcore.models import SequenceClassifier
from tests.lmcore.helpers import VOCAB, tiny_model, token_stream


def test_lm_metrics_are_deterministic_and_consistent():
    model = tiny_model("gpt").eval()
    data = token_stream(2000)
    a = evaluate_lm(model, data, 16, batch_size=7, num_windows=50, bytes_per_token=2.0)
    b = evaluate_lm(model, data, 16, batch_size=13, num_windows=50, bytes_per_token=2.0)
    assert a == pytest.approx(b)
    assert a["perplexity"] == pytest.approx(math.exp(a["loss"]))
    assert a["bits_per_byte"] == pytest.approx(a["loss"] / math.log(2) / 2.0)
    assert 0 <= a["top1_accuracy"] <= a["top5_accuracy"] <= 1
    assert a["loss"] == pytest.approx(math.log(VOCAB), abs=0.3)  # untrained: near uniform


def test_uniform_model_has_exact_loss():
    model = tiny_model("lstm").eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()
        model.lm_head.bias.zero_()
    metrics = evaluate_lm(model, token_stream(500), 16, num_windows=10)
    assert metrics["loss"] == pytest.approx(math.log(VOCAB), rel=1e-5)


def test_classification_metrics():
    m = classification_metrics(np.array([0, 0, 1, 1, 2]), np.array([0, 1, 1, 1, 0]), 3)
    assert m["accuracy"] == pytest.approx(0.6)
    assert m["confusion_matrix"] == [[1, 1, 0], [0, 2, 0], [1, 0, 0]]
    # F1 per class: 0.5, 0.8, 0.0
    assert m["macro_f1"] == pytest.approx((0.5 + 0.8 + 0.0) / 3)
    with pytest.raises(ValueError, match=r"true label 3 is outside 0..2 \(num_classes=3\)"):
        classification_metrics(np.array([0, 3]), np.array([0, 1]), 3)
    with pytest.raises(ValueError, match="predicted label -1"):
        classification_metrics(np.array([0, 1]), np.array([0, -1]), 3)
    with pytest.raises(ValueError, match="2 true labels but 3 predictions"):
        classification_metrics(np.array([0, 1]), np.array([0, 1, 1]), 3)


def test_bootstrap_interval_and_paired_difference():
    rng = np.random.default_rng(0)
    correct = rng.random(872) < 0.8
    baseline = rng.random(872) < 0.5
    r = bootstrap_accuracy(correct, baseline, seed=1)
    assert r["ci_low"] < r["accuracy"] < r["ci_high"]
    assert 0.02 < r["ci_high"] - r["ci_low"] < 0.07  # about +-1.4 points at n=872
    assert r["diff_ci_low"] > 0.2 and r == bootstrap_accuracy(correct, baseline, seed=1)


def test_predictions_come_back_in_example_order():
    torch.manual_seed(0)
    model = SequenceClassifier(tiny_model("gpt"), 2).eval()
    examples = LabeledExamples(ids=[[3] * n for n in (9, 2, 5, 1, 7)], labels=[0, 1, 0, 1, 0])
    _, probs = predict_classes(model, examples, pad_id=0, max_len=16, batch_size=2)
    one_by_one = [predict_classes(model, LabeledExamples([ids], [0]), 0, 16)[1][0] for ids in examples.ids]
    assert np.allclose(probs, np.stack(one_by_one), atol=1e-5)
