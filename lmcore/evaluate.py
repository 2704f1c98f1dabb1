"""Evaluation: language-model metrics on held-out token streams and classification metrics.

Everything here is deterministic: fixed windows, fixed order, seeded bootstrap.
Bits per byte divide the loss by the stream's bytes per token, so tokenizers compare fairly.

Shapes: B batch, T time, V vocab_size, K num_classes, N examples.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lmcore.data import LabeledExamples, iter_eval_batches, iter_labeled_batches


@torch.no_grad()
def evaluate_lm(
    model: nn.Module,
    data: np.ndarray,
    block_size: int,
    batch_size: int = 32,
    num_windows: int = 400,
    bytes_per_token: float | None = None,
) -> dict[str, float]:
    """Loss, perplexity, top-1/top-5 next-token accuracy and (given bytes_per_token) bits per byte."""
    device = next(model.parameters()).device
    total_loss, top1, top5, count = 0.0, 0, 0, 0
    for x, y in iter_eval_batches(data, batch_size, block_size, num_windows):
        x, y = x.to(device), y.to(device)
        logits = model(x).float()  # (B, T, V)
        total_loss += F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        best5 = logits.topk(min(5, logits.size(-1)), dim=-1).indices  # (B, T, 5)
        top1 += (best5[..., 0] == y).sum().item()
        top5 += (best5 == y[..., None]).any(-1).sum().item()
        count += y.numel()
    loss = total_loss / count
    metrics = {
        "loss": loss,
        "perplexity": math.exp(min(loss, 50.0)),
        "top1_accuracy": top1 / count,
        "top5_accuracy": top5 / count,
    }
    if bytes_per_token:
        metrics["bits_per_byte"] = loss / math.log(2) / bytes_per_token
    return metrics


@torch.no_grad()
def predict_classes(
    model: nn.Module, examples: LabeledExamples, pad_id: int, max_len: int, batch_size: int = 64
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels (N,), class probabilities (N, K)) in example order.

    Batches hold texts of similar length (sorted), so little compute goes to padding.
    """
    device = next(model.parameters()).device
    order = np.argsort([len(ids) for ids in examples.ids], kind="stable")
    probs = []
    for idx, lengths, _ in iter_labeled_batches(examples, batch_size, pad_id, max_len, order):
        probs.append(F.softmax(model(idx.to(device), lengths.to(device)).float(), dim=-1).cpu())
    sorted_probs = torch.cat(probs).numpy()  # (N, K) in length order
    p = np.empty_like(sorted_probs)
    p[order] = sorted_probs
    return p.argmax(-1), p


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """Accuracy, macro-F1 and the confusion matrix (rows: true class, columns: predicted)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    tp = np.diag(confusion).astype(float)
    precision = np.divide(tp, confusion.sum(0), out=np.zeros_like(tp), where=confusion.sum(0) > 0)
    recall = np.divide(tp, confusion.sum(1), out=np.zeros_like(tp), where=confusion.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "macro_f1": float(f1.mean()),
        "confusion_matrix": confusion.tolist(),
    }


def bootstrap_accuracy(
    correct: np.ndarray, baseline_correct: np.ndarray | None = None, num_samples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """95% percentile bootstrap interval of accuracy; with a baseline, of the paired difference too."""
    correct = np.asarray(correct, dtype=float)
    rng = np.random.default_rng(seed)
    samples = rng.integers(0, len(correct), size=(num_samples, len(correct)))  # (S, N)
    accuracy = correct[samples].mean(1)
    result = {
        "accuracy": float(correct.mean()),
        "ci_low": float(np.percentile(accuracy, 2.5)),
        "ci_high": float(np.percentile(accuracy, 97.5)),
    }
    if baseline_correct is not None:
        diff = correct - np.asarray(baseline_correct, dtype=float)  # (N,)
        boot = diff[samples].mean(1)
        result.update(
            diff=float(diff.mean()),
            diff_ci_low=float(np.percentile(boot, 2.5)),
            diff_ci_high=float(np.percentile(boot, 97.5)),
        )
    return result
