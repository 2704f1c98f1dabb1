"""Benchmark: character-level Tiny Shakespeare with lmcore, against nanoGPT's documented CPU run.

Split as nanoGPT: first 90% of characters train, last 10% validation; vocabulary = the 65
characters of the file. Validation loss is measured on a fixed set of windows (default 400 x
64 characters), not nanoGPT's 240 fresh random windows (which read about 0.01 lower).

  python bench/shakespeare.py --preset nanogpt-char            # throughput and final loss
  python bench/shakespeare.py --preset lstm-fast-char --target 1.886 --eval-interval 50
  python bench/shakespeare.py --preset gpt-fast-char --device cuda --gpt2-small   # GPU MFU
  torchrun --standalone --nproc_per_node 2 bench/shakespeare.py --threads 1   # DDP, same global batch
  python bench/shakespeare.py --set train.batch_threads=2   # each batch as 2 row shards on 2 threads

Prints tokens/s, ms/step (median), MFU against a matmul peak measured here, the validation loss
and, with --target, the wall time (training and evaluation) to reach it.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import resource
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from lmcore.config import config_from_dict
from lmcore.data import get_batch
from lmcore.evaluate import evaluate_lm
from lmcore.models import build_model, build_model_config
from lmcore.presets import get_preset
from lmcore.runtime import measure_peak_flops, resolve_dtype, setup_distributed
from lmcore.train import TrainConfig, lm_loss, train

ROOT = Path(__file__).resolve().parents[1]
TINY_SHAKESPEARE = ROOT / "data/tinyshakespeare/input.txt"


class TargetReached(Exception):
    pass


def load_char_data(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    text = path.read_text()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((stoi[c] for c in text), dtype=np.uint16, count=len(text))
    n = int(0.9 * len(ids))
    return ids[:n], ids[n:], len(chars)


def parse_value(text: str) -> Any:
    """A --set value as JSON (0.003, true, 2), else the bare string (model.mlp=relu2)."""
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="nanogpt-char")
    parser.add_argument("--steps", type=int, default=0, help="override the preset's max_steps")
    parser.add_argument("--target", type=float, default=0.0, help="stop when validation loss <= target")
    parser.add_argument(
        "--eval-interval", type=int, default=0, help="evaluate every N steps (default: only at the end)"
    )
    parser.add_argument("--eval-windows", type=int, default=400)
    parser.add_argument("--data", type=Path, default=TINY_SHAKESPEARE, help="any text file (default: %(default)s)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--gpt2-small", action="store_true", help="GPT-2-small shape (12x768, block 1024) for GPU MFU")
    parser.add_argument("--compile", action="store_true")
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="override a preset value, e.g. --set train.learning_rate=0.004 --set model.n_layer=6",
    )
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    return parser.parse_args()


def preset_values(args: argparse.Namespace, preset: dict, vocab_size: int) -> tuple[dict, dict]:
    """The preset's model and train values with the command line's changes."""
    model_values = {**preset["model"], "vocab_size": vocab_size}
    train_values = dict(preset["train"])
    if args.gpt2_small:
        model_values.update(block_size=1024, n_layer=12, n_head=12, n_embd=768)
        # GPT-2 small's own rates: the char presets' 3e-3 is tuned for 4x128 models.
        train_values.update(batch_size=16, learning_rate=6e-4, min_lr=6e-5)
    if args.steps:
        train_values.update(max_steps=args.steps, lr_decay_steps=args.steps)
    for item in args.set:
        key, _, value = item.partition("=")
        section, _, name = key.partition(".")
        if section not in ("model", "train") or not name:
            raise ValueError(f"--set takes model.KEY=VALUE or train.KEY=VALUE, got {item!r}")
        (model_values if section == "model" else train_values)[name] = parse_value(value)
    return model_values, train_values


def bench_config(args: argparse.Namespace, train_values: dict, world_size: int, device) -> TrainConfig:
    """The run's TrainConfig: under torchrun the preset's batch stays the global batch (each rank
    takes its share), and the peak for MFU is measured on this device."""
    if train_values["batch_size"] % world_size:
        raise ValueError(f"train.batch_size={train_values['batch_size']} does not split over {world_size} ranks")
    eval_interval = args.eval_interval or train_values["max_steps"]
    config = config_from_dict(
        TrainConfig,
        {
            **train_values,
            "batch_size": train_values["batch_size"] // world_size,
            "eval_interval": eval_interval,
            "checkpoint_interval": 10**9,
            "log_interval": min(10, eval_interval),  # a log before the first evaluation, which can stop the run
            "device": args.device,
            "compile": args.compile,
            "seed": 1337,
        },
        "train",
    )
    dtype = resolve_dtype(config.dtype, device)
    peak = measure_peak_flops(device, dtype, size=4096 if device.type == "cuda" else 2048, repeats=10)
    return dataclasses.replace(config, peak_flops=peak)


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    preset = get_preset(args.preset)
    train_ids, val_ids, vocab_size = load_char_data(args.data)
    model_values, train_values = preset_values(args, preset, vocab_size)
    rank, world_size, device = setup_distributed(args.device)  # device: this rank's GPU under torchrun
    config = bench_config(args, train_values, world_size, device)
    torch.manual_seed(1337)
    model = build_model(preset["arch"], build_model_config(preset["arch"], model_values))
    block_size, batch_size = model_values["block_size"], config.batch_size

    logs: list[dict] = []
    evals: list[tuple[int, float, float]] = []
    start = time.perf_counter()

    def evaluate(m: torch.nn.Module) -> dict[str, float]:
        # Every rank gets the same (all-reduced) loss, so every rank stops at the target together.
        metrics = evaluate_lm(m, val_ids, block_size, 64, args.eval_windows)
        elapsed = time.perf_counter() - start
        step = min((len(evals) + 1) * config.eval_interval, config.max_steps)  # train's schedule
        evals.append((step, metrics["loss"], elapsed))
        if rank == 0:
            print(f"step {step:5d} val {metrics['loss']:.4f} at {elapsed:.1f}s", flush=True)
        if args.target and metrics["loss"] <= args.target:
            raise TargetReached
        return metrics

    def log(step: int, metrics: dict[str, float]) -> None:
        if "train/loss" in metrics:
            logs.append(metrics)

    reached = False
    try:
        train(model, config, lambda g: get_batch(train_ids, batch_size, block_size, g), lm_loss, evaluate, log)
    except TargetReached:
        reached = True
    if rank == 0:  # rank 0 reports
        figures = report(args, preset, model, config, device, world_size, logs, evals, reached, start)
        print(json.dumps(figures, indent=2))
        if args.json:
            args.json.write_text(json.dumps(figures, indent=2) + "\n")


def report(args, preset, model, config, device, world_size, logs, evals, reached, start) -> dict:
    """The run's figures: medians over the logged steps (the first, with its warm-up, left out)."""
    wall = time.perf_counter() - start
    steady = logs[1:] or logs
    dtype = resolve_dtype(config.dtype, device)
    return {
        "preset": args.preset,
        "arch": preset["arch"],
        "params": model.num_params(),
        "device": str(device),
        "dtype": str(dtype).replace("torch.", ""),
        "threads": args.threads,
        "ranks": world_size,
        "batch_threads": config.batch_threads,
        "steps": evals[-1][0] if evals else None,
        "tokens_per_sec": round(statistics.median(m["train/tokens_per_sec"] for m in steady)),
        "ms_per_step": round(statistics.median(m["train/step_ms"] for m in steady), 2),
        "mfu": round(statistics.median(m["train/mfu"] for m in steady), 4),
        "peak_gflops": round(config.peak_flops / 1e9, 1),
        "final_val_loss": round(evals[-1][1], 4) if evals else None,
        "wall_seconds": round(wall, 1),
        "target": args.target or None,
        "target_reached": reached if args.target else None,
        "time_to_target_s": round(evals[-1][2], 1) if reached else None,
        # the whole process's peak resident memory (Python, torch and data included), as nanoGPT's 387 MB
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
        "peak_cuda_mb": round(torch.cuda.max_memory_allocated(device) / 2**20) if device.type == "cuda" else None,
    }


if __name__ == "__main__":
    main()
