"""A plain re-implementation of nanoGPT's documented CPU run, for side-by-side timing.

Written for this benchmark (no code copied): the model and loop that nanoGPT's README describes
for character-level Tiny Shakespeare on a CPU: LayerNorm without bias, exact GELU, learned
positions, SDPA causal attention, tied embeddings, GPT-2 init; AdamW with PyTorch's default CPU
implementation (nanoGPT asks for the fused kernel only on CUDA), betas (0.9, 0.99), weight decay
0.1 on matrices, clip 1.0, warmup 100 then cosine to 1e-4; batches gathered window by window
from a fresh np.memmap, as nanoGPT's get_batch does.

  python bench/nanogpt_reference.py --steps 300 --threads 1
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
N_LAYER, N_HEAD, N_EMBD, BLOCK, BATCH = 4, 4, 128, 64, 12


class Attention(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.c_attn = nn.Linear(N_EMBD, 3 * N_EMBD, bias=False)
        self.c_proj = nn.Linear(N_EMBD, N_EMBD, bias=False)

    def forward(self, x):
        B, T, C = x.size()
        q, k, v = self.c_attn(x).split(C, dim=2)
        q, k, v = (t.view(B, T, N_HEAD, C // N_HEAD).transpose(1, 2) for t in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.c_proj(y.transpose(1, 2).contiguous().view(B, T, C))


class Block(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.ln_1, self.ln_2 = nn.LayerNorm(N_EMBD, bias=False), nn.LayerNorm(N_EMBD, bias=False)
        self.attn = Attention()
        self.mlp = nn.Sequential(
            nn.Linear(N_EMBD, 4 * N_EMBD, bias=False), nn.GELU(), nn.Linear(4 * N_EMBD, N_EMBD, bias=False)
        )

    def forward(self, x):
        x = x + self.attn(self.ln_1(x))
        return x + self.mlp(self.ln_2(x))


class ReferenceGPT(nn.Module):
    def __init__(self, vocab_size: int) -> None:
        super().__init__()
        self.wte, self.wpe = nn.Embedding(vocab_size, N_EMBD), nn.Embedding(BLOCK, N_EMBD)
        self.h = nn.ModuleList(Block() for _ in range(N_LAYER))
        self.ln_f = nn.LayerNorm(N_EMBD, bias=False)
        self.lm_head = nn.Linear(N_EMBD, vocab_size, bias=False)
        self.wte.weight = self.lm_head.weight
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, std=0.02)
        for name, p in self.named_parameters():
            if name.endswith("c_proj.weight") or name.endswith("mlp.2.weight"):
                nn.init.normal_(p, std=0.02 / math.sqrt(2 * N_LAYER))

    def forward(self, idx, targets):
        x = self.wte(idx) + self.wpe(torch.arange(idx.size(1)))
        for block in self.h:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.reshape(-1))


def write_char_data(text_file: Path, train_path: Path) -> tuple[np.ndarray, int]:
    """Characters as ids: the first 90% written to `train_path`, the rest returned; and the vocab size."""
    text = text_file.read_text()
    chars = sorted(set(text))
    stoi = {c: i for i, c in enumerate(chars)}
    ids = np.fromiter((stoi[c] for c in text), dtype=np.uint16, count=len(text))
    split = int(0.9 * len(ids))
    ids[:split].tofile(train_path)
    return ids[split:], len(chars)


def validation_loss(model: nn.Module, val: np.ndarray, num_windows: int) -> float:
    """Mean loss over `num_windows` evenly spaced windows of the held-out ids."""
    model.eval()
    starts = np.linspace(0, len(val) - BLOCK - 1, num_windows).round().astype(np.int64)
    with torch.no_grad():
        windows = torch.from_numpy(val[starts[:, None] + np.arange(BLOCK + 1)].astype(np.int64))
        return float(np.mean([model(w[:, :-1], w[:, 1:]).item() for w in windows.split(64)]))


def lr_at(step: int) -> float:
    """nanoGPT's shakespeare-char schedule: 100 warmup steps, cosine from 1e-3 to 1e-4 by step 2000."""
    if step < 100:
        return 1e-3 * (step + 1) / 101
    ratio = (step - 100) / (2000 - 100)
    return 1e-4 + 0.5 * (1 + math.cos(math.pi * min(ratio, 1.0))) * (1e-3 - 1e-4)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--eval-windows", type=int, default=400)
    parser.add_argument("--data", type=Path, default=ROOT / "data/tinyshakespeare/input.txt")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(1337)
    workdir = tempfile.TemporaryDirectory()  # removed at exit; a fixed name would collide between runs
    path = Path(workdir.name) / "train.bin"
    val, vocab_size = write_char_data(args.data, path)

    def get_batch():
        data = np.memmap(path, dtype=np.uint16, mode="r")  # fresh memmap per batch, as nanoGPT
        ix = torch.randint(len(data) - BLOCK, (BATCH,))
        x = torch.stack([torch.from_numpy(data[i : i + BLOCK].astype(np.int64)) for i in ix])
        y = torch.stack([torch.from_numpy(data[i + 1 : i + 1 + BLOCK].astype(np.int64)) for i in ix])
        return x, y

    model = ReferenceGPT(vocab_size)
    decay = [p for p in model.parameters() if p.dim() >= 2]
    no_decay = [p for p in model.parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}], lr=1e-3, betas=(0.9, 0.99)
    )

    times = []
    start = time.perf_counter()
    for step in range(args.steps):
        t0 = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        x, y = get_batch()
        loss = model(x, y)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        loss.item()
        times.append(time.perf_counter() - t0)
    wall = time.perf_counter() - start
    val_loss = validation_loss(model, val, args.eval_windows)
    step_s = statistics.median(times[10:] or times)
    print(
        json.dumps(
            {
                "reference": "nanogpt (re-implemented)",
                "threads": args.threads,
                "steps": args.steps,
                "ms_per_step": round(1000 * step_s, 2),
                "tokens_per_sec": round(BATCH * BLOCK / step_s),
                "final_val_loss": round(val_loss, 4),
                "wall_seconds": round(wall, 1),
                "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024),
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
