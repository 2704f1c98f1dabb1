import math

import numpy as np
import pytest
import torch

from lmcore.data import LabeledExamples
from lmcore.evaluate import (
    bootstrap_accuracy,
    calibration_error,
    classification_metrics,
    evaluate_lm,
    fit_temperature,
    predict_classes,
    with_temperature,
)
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


def test_calibration_error_is_the_gap_between_confidence_and_accuracy():
    probs = np.tile([[0.9, 0.1]], (10, 1))
    labels = np.array([0] * 6 + [1] * 4)  # 90% confident, 60% right
    assert calibration_error(probs, labels) == pytest.approx(0.3)
    honest = np.array([[0.75, 0.25]] * 4)
    assert calibration_error(honest, np.array([0, 0, 0, 1])) == pytest.approx(0.0)


def test_temperature_scaling_recovers_an_overconfident_models_temperature():
    rng = np.random.default_rng(0)
    logits = rng.normal(0, 1.5, (4000, 3))
    true_p = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    labels = np.array([rng.choice(3, p=row) for row in true_p])
    overconfident = with_temperature(true_p, 1 / 3)  # logits times 3
    temperature = fit_temperature(overconfident, labels)
    assert temperature == pytest.approx(3.0, rel=0.1)
    calibrated = with_temperature(overconfident, temperature)
    assert calibration_error(calibrated, labels) < 0.03 < calibration_error(overconfident, labels)
    assert (calibrated.argmax(1) == overconfident.argmax(1)).all()  # a temperature never changes a prediction


def test_predict_classes_divides_the_logits_by_the_temperature():
    torch.manual_seed(0)
    model = SequenceClassifier(tiny_model("lstm"), 3).eval()
    torch.nn.init.normal_(model.head.weight, std=1.0)
    examples = LabeledExamples(ids=[[3, 4, 5], [7, 8], [9]], labels=[0, 1, 2])
    _, plain = predict_classes(model, examples, pad_id=0, max_len=16)
    _, hot = predict_classes(model, examples, pad_id=0, max_len=16, temperature=2.5)
    assert np.allclose(hot, with_temperature(plain, 2.5), atol=1e-5) and not np.allclose(hot, plain, atol=1e-3)
    with pytest.raises(ValueError, match="temperature must be > 0"):
        predict_classes(model, examples, pad_id=0, max_len=16, temperature=0.0)
