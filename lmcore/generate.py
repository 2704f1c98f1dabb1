"""Sampling from any language model that offers `init_state` and `forward_step`.

GPT carries a KV cache, recurrent models their hidden state: each new token costs one step, not
a pass over the whole prefix. When a GPT's context fills up, the window slides and the cache is
rebuilt from the last block_size // 2 tokens.

Shapes: B batch (1 here), T time, V vocab_size.
"""

from __future__ import annotations

import torch
import torch.nn as nn

# The sampling a served model or the command line uses unless told otherwise (in one place).
GENERATION_DEFAULTS = {"max_new_tokens": 64, "temperature": 0.8, "top_k": 50, "top_p": 1.0, "seed": 0}


def check_sampling(max_new_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    """Sampling settings in range, as a ValueError naming the argument."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 keeps every token), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")


def sample_next(logits: torch.Tensor, temperature: float, top_k: int, top_p: float, generator: torch.Generator) -> int:
    """One token id from logits (V,); temperature 0 is greedy."""
    if temperature <= 0:
        return int(logits.argmax())
    logits = logits.float() / temperature
    if top_k > 0:
        kth = torch.topk(logits, min(top_k, logits.numel())).values[-1]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    probs = torch.softmax(logits, dim=-1)
    if top_p < 1.0:
        sorted_probs, order = probs.sort(descending=True)
        # Keep the smallest prefix whose mass reaches top_p (the first token is always kept).
        drop = sorted_probs.cumsum(0) - sorted_probs >= top_p
        sorted_probs[drop] = 0.0
        probs = torch.zeros_like(probs).scatter(0, order, sorted_probs)
    return int(torch.multinomial(probs.cpu(), 1, generator=generator))


@torch.no_grad()
def generate(
    model: nn.Module,
    prompt_ids: list[int],
    max_new_tokens: int,
    temperature: float = 1.0,
    top_k: int = 0,
    top_p: float = 1.0,
    seed: int = 0,
    eot_id: int | None = None,
) -> list[int]:
    """New token ids after `prompt_ids` (prompt not included); stops at `eot_id`."""
    if not prompt_ids:
        raise ValueError("generation needs a non-empty prompt (use the end-of-text id to start fresh)")
    check_sampling(max_new_tokens, temperature, top_k, top_p)
    model.eval()
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    context = model.context_length
    tokens = list(prompt_ids)
    if context is not None:
        tokens = tokens[-context:]
    state = model.init_state(1)
    logits, state = model.forward_step(torch.tensor([tokens], device=device), state)  # (1, T, V)
    new: list[int] = []
    for _ in range(max_new_tokens):
        token = sample_next(logits[0, -1], temperature, top_k, top_p, generator)
        if eot_id is not None and token == eot_id:
            break
        new.append(token)
        tokens.append(token)
        if context is not None and len(tokens) > context:
            tokens = tokens[-(context // 2) :]
            state = model.init_state(1)
            logits, state = model.forward_step(torch.tensor([tokens], device=device), state)
        else:
            logits, state = model.forward_step(torch.tensor([[token]], device=device), state)
    return new
