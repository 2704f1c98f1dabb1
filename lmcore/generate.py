"""Sampling from any language model that offers `init_state` and `forward_step`.

GPT carries a KV cache, recurrent models their hidden state: each new token costs one step, not
a pass over the whole prefix. When a GPT's context fills up, the window slides and the cache is
rebuilt from the last block_size // 2 tokens.

Shapes: B batch (1 here), T time, V vocab_size.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn as nn
import torch.nn.functional as F

# The sampling a served model or the command line uses unless told otherwise (in one place).
GENERATION_DEFAULTS = {"max_new_tokens": 64, "temperature": 0.8, "top_k": 50, "top_p": 1.0, "seed": 0}


def check_sampling(
    max_new_tokens: int, temperature: float, top_k: int, top_p: float, repetition_penalty: float = 1.0
) -> None:
    """Sampling settings in range, as a ValueError naming the argument."""
    if max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be >= 0, got {max_new_tokens}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 is greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 keeps every token), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0 (1 is none), got {repetition_penalty}")


def penalize_repeats(logits: torch.Tensor, seen: list[int], penalty: float) -> torch.Tensor:
    """CTRL's repetition penalty (Keskar et al. 2019, as in transformers): the logit of every token
    already in the text is divided by `penalty` where positive and multiplied where negative."""
    if penalty == 1.0 or not seen:
        return logits
    index = torch.tensor(sorted(set(seen)), device=logits.device)
    chosen = logits[index]
    return logits.index_put((index,), torch.where(chosen > 0, chosen / penalty, chosen * penalty))


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
    *,
    repetition_penalty: float = 1.0,
    stop: Callable[[list[int]], bool] | None = None,
) -> list[int]:
    """New token ids after `prompt_ids` (prompt not included); stops at `eot_id`, or once
    `stop(new_ids)` is true (the token that made it true is kept: a caller cutting at a stop
    string decodes and cuts)."""
    if not prompt_ids:
        raise ValueError("generation needs a non-empty prompt (use the end-of-text id to start fresh)")
    check_sampling(max_new_tokens, temperature, top_k, top_p, repetition_penalty)
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
        next_logits = penalize_repeats(logits[0, -1], list(prompt_ids) + new, repetition_penalty)
        token = sample_next(next_logits, temperature, top_k, top_p, generator)
        if eot_id is not None and token == eot_id:
            break
        new.append(token)
        if stop is not None and stop(new):
            break
        tokens.append(token)
        if context is not None and len(tokens) > context:
            tokens = tokens[-(context // 2) :]
            state = model.init_state(1)
            logits, state = model.forward_step(torch.tensor([tokens], device=device), state)
        else:
            logits, state = model.forward_step(torch.tensor([[token]], device=device), state)
    return new


@torch.no_grad()
def beam_search(
    model: nn.Module,
    prompt_ids: list[int],
    max_new_tokens: int,
    beam_size: int,
    eot_id: int,
    length_penalty: float = 1.0,
) -> list[int]:
    """The best continuation of `prompt_ids` (prompt and end-of-text not included) under beam
    search: `beam_size` running hypotheses, each ranked by its summed log-probability divided by
    its length ** length_penalty (the end-of-text counted; 0 ranks by probability alone, 1 by the
    mean per token). It stops once `beam_size` hypotheses have ended, as transformers'
    `early_stopping=True`; when none ends within max_new_tokens, the best running one is taken.
    The beams run as one batch, their states reordered by the model's `reorder_state`."""
    if not prompt_ids:
        raise ValueError("beam search needs a non-empty prompt")
    if beam_size < 1:
        raise ValueError(f"beam_size must be >= 1, got {beam_size}")
    check_sampling(max_new_tokens, 0.0, 0, 1.0)
    model.eval()
    device = next(model.parameters()).device
    context = model.context_length
    window = torch.tensor([prompt_ids[-context:] if context is not None else prompt_ids], device=device)  # (K, T)
    logits, state = model.forward_step(window, model.init_state(1))  # (1, T, V)
    scores = torch.zeros(1, device=device)  # (K,) summed log-probabilities of the running beams
    new = torch.zeros((1, 0), dtype=torch.long, device=device)  # (K, step - 1) the beams' new ids
    ended = []  # (normalized score, new ids)
    for step in range(1, max_new_tokens + 1):
        candidates = scores[:, None] + F.log_softmax(logits[:, -1].float(), dim=-1)  # (K, V)
        top = candidates.view(-1).topk(min(2 * beam_size, candidates.numel()))
        keep_rows, keep_tokens, keep_scores = [], [], []
        for score, flat in zip(top.values.tolist(), top.indices.tolist(), strict=True):
            row, token = divmod(flat, candidates.size(1))
            if token == eot_id:
                ended.append((score / step**length_penalty, new[row].tolist()))
            elif len(keep_rows) < beam_size:
                keep_rows.append(row), keep_tokens.append(token), keep_scores.append(score)
        if len(ended) >= beam_size or not keep_rows:
            break
        rows = torch.tensor(keep_rows, device=device)
        new_tokens = torch.tensor(keep_tokens, device=device)[:, None]  # (K, 1)
        new, scores = torch.cat((new[rows], new_tokens), dim=1), torch.tensor(keep_scores, device=device)
        window = torch.cat((window[rows], new_tokens), dim=1)
        if context is not None and window.size(1) > context:
            # The window slides as in `generate`: every beam is rebuilt from its last context // 2 tokens.
            window = window[:, -(context // 2) :]
            logits, state = model.forward_step(window, model.init_state(len(keep_rows)))
        else:
            logits, state = model.forward_step(new_tokens, model.reorder_state(state, rows))
    if not ended:
        return new[int(scores.argmax())].tolist()
    return max(ended, key=lambda hypothesis: hypothesis[0])[1]
