"""Evaluation: language-model metrics on held-out token streams and classification metrics.

Everything here is deterministic: fixed windows, fixed order, seeded bootstrap.
Bits per byte divide the loss by the stream's bytes per token, so tokenizers compare fairly.
Inside `shared_across_ranks` (the training loop's evaluations under torchrun) each rank takes
every world_size-th batch and the sums are all-reduced, so every rank gets the single-process
figures for 1/world_size of the work.

Shapes: B batch, T time, V vocab_size, K num_classes, N examples.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator
from contextvars import ContextVar

import numpy as np
import torch
import torch.distributed as dist
import torch.nn as nn
import torch.nn.functional as F

from lmcore.data import LabeledExamples, iter_eval_batches, pad_batch

_RANK_SHARE: ContextVar[tuple[int, int]] = ContextVar("lmcore_evaluation_rank_share", default=(0, 1))


@contextlib.contextmanager
def shared_across_ranks(rank: int, world_size: int) -> Iterator[None]:
    """Evaluations inside split their batches over the process group's ranks.

    Every rank must then make the same evaluation calls in the same order (they all-reduce).
    Outside, an evaluation on one rank alone does all the work and needs no other rank.
    """
    token = _RANK_SHARE.set((rank, world_size))
    try:
        yield
    finally:
        _RANK_SHARE.reset(token)


def _reduce_over_ranks(values: np.ndarray, device: torch.device, op: str = "sum") -> np.ndarray:
    """`values` summed (or maxed) over the ranks sharing this evaluation, in float64."""
    if _RANK_SHARE.get()[1] == 1:
        return values
    total = torch.from_numpy(np.ascontiguousarray(values, dtype=np.float64)).to(device)
    dist.all_reduce(total, op=dist.ReduceOp.SUM if op == "sum" else dist.ReduceOp.MAX)
    return total.cpu().numpy()


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
    rank, world_size = _RANK_SHARE.get()
    total_loss, top1, top5, count = 0.0, 0, 0, 0
    for x, y in iter_eval_batches(data, batch_size, block_size, num_windows, rank, world_size):
        x, y = x.to(device), y.to(device)
        logits = model(x).float()  # (B, T, V)
        total_loss += F.cross_entropy(logits.view(-1, logits.size(-1)), y.reshape(-1), reduction="sum").item()
        best5 = logits.topk(min(5, logits.size(-1)), dim=-1).indices  # (B, T, 5)
        top1 += (best5[..., 0] == y).sum().item()
        top5 += (best5 == y[..., None]).any(-1).sum().item()
        count += y.numel()
    total_loss, top1, top5, count = _reduce_over_ranks(np.array([total_loss, top1, top5, count]), device).tolist()
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
    model: nn.Module,
    examples: LabeledExamples,
    pad_id: int,
    max_len: int,
    batch_size: int = 64,
    temperature: float = 1.0,
) -> tuple[np.ndarray, np.ndarray]:
    """(predicted labels (N,), class probabilities (N, K)) in example order; the probabilities are
    softmax(logits / temperature) (a fitted temperature calibrates them, see fit_temperature).

    Batches hold texts of similar length (sorted), so little compute goes to padding.
    """
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}")
    if len(examples) == 0:
        raise ValueError("predict_classes got no examples")
    device = next(model.parameters()).device
    rank, world_size = _RANK_SHARE.get()
    order = np.argsort([len(ids) for ids in examples.ids], kind="stable")
    p = None  # (N, K) in example order; rows of other ranks' batches stay 0
    for i, start in enumerate(range(0, len(order), batch_size)):
        if i % world_size != rank:
            continue
        rows = order[start : start + batch_size]
        idx, lengths, _ = pad_batch(examples, rows, pad_id, max_len)
        logits = model(idx.to(device), lengths.to(device)).float() / temperature  # (B, K)
        probs = F.softmax(logits, dim=-1).cpu().numpy()
        if p is None:
            p = np.zeros((len(examples), probs.shape[1]), dtype=np.float64)
        p[rows] = probs
    if world_size > 1:
        # A rank with no batch (fewer batches than ranks) joins the sum with zeros.
        num_classes = int(_reduce_over_ranks(np.array([0 if p is None else p.shape[1]]), device, "max")[0])
        p = _reduce_over_ranks(np.zeros((len(examples), num_classes)) if p is None else p, device)
    return p.argmax(-1), p.astype(np.float32)


def calibration_error(probs: np.ndarray, labels: np.ndarray, bins: int = 15) -> float:
    """Expected calibration error (Guo et al. 2017): over equal-width bins of the top class's
    probability, |accuracy - mean probability|, weighted by the share of examples in the bin."""
    confidence, correct = probs.max(1), probs.argmax(1) == np.asarray(labels)
    which = np.minimum((confidence * bins).astype(int), bins - 1)  # (N,) bin of each example
    error = 0.0
    for b in np.unique(which):
        in_bin = which == b
        error += in_bin.mean() * abs(correct[in_bin].mean() - confidence[in_bin].mean())
    return float(error)


def with_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(probs) / temperature): the same as dividing the logits (log-probabilities differ
    from the logits by a constant per row)."""
    log_p = np.log(np.clip(probs.astype(np.float64), 1e-30, None)) / temperature
    log_p -= log_p.max(1, keepdims=True)
    scaled = np.exp(log_p)
    return (scaled / scaled.sum(1, keepdims=True)).astype(np.float32)


def fit_temperature(probs: np.ndarray, labels: np.ndarray) -> float:
    """Temperature scaling (Guo et al. 2017): the one T > 0 minimizing the negative log-likelihood
    of `labels` under with_temperature(probs, T), fitted by L-BFGS on log T (deterministic)."""
    log_p = torch.log(torch.as_tensor(probs, dtype=torch.float64).clamp_min(1e-30))  # (N, K)
    targets = torch.as_tensor(np.asarray(labels), dtype=torch.long)
    log_t = torch.zeros((), dtype=torch.float64, requires_grad=True)
    optimizer = torch.optim.LBFGS([log_t], lr=0.5, max_iter=200, line_search_fn="strong_wolfe")

    def closure() -> torch.Tensor:
        optimizer.zero_grad()
        loss = F.cross_entropy(log_p / log_t.exp(), targets)
        loss.backward()
        return loss

    optimizer.step(closure)
    return float(log_t.detach().exp())


def classification_metrics(y_true: np.ndarray, y_pred: np.ndarray, num_classes: int) -> dict:
    """Accuracy, macro-F1, per-class precision and recall, and the confusion matrix (rows: true
    class, columns: predicted)."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"{len(y_true)} true labels but {len(y_pred)} predictions")
    for name, labels in (("true", y_true), ("predicted", y_pred)):
        outside = labels[(labels < 0) | (labels >= num_classes)]
        if outside.size:
            raise ValueError(f"{name} label {outside[0]} is outside 0..{num_classes - 1} (num_classes={num_classes})")
    confusion = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(confusion, (y_true, y_pred), 1)
    tp = np.diag(confusion).astype(float)
    precision = np.divide(tp, confusion.sum(0), out=np.zeros_like(tp), where=confusion.sum(0) > 0)
    recall = np.divide(tp, confusion.sum(1), out=np.zeros_like(tp), where=confusion.sum(1) > 0)
    f1 = np.divide(2 * precision * recall, precision + recall, out=np.zeros_like(tp), where=(precision + recall) > 0)
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "macro_f1": float(f1.mean()),
        "precision": precision.tolist(),
        "recall": recall.tolist(),
        "confusion_matrix": confusion.tolist(),
    }


def bootstrap_accuracy(
    correct: np.ndarray, baseline_correct: np.ndarray | None = None, num_samples: int = 2000, seed: int = 0
) -> dict[str, float]:
    """95% percentile bootstrap interval of accuracy; with a baseline, of the paired difference too."""
    if num_samples < 1:
        raise ValueError(f"num_samples must be at least 1, got {num_samples}")
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
