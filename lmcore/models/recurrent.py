"""Recurrent language models: multi-layer LSTM or GRU over token embeddings.

The output head is tied to the embedding when n_embd == n_hidden; otherwise a projection maps
the hidden state down to n_embd first so the head can still be tied. Generation carries the
hidden state forward instead of recomputing the prefix.

Shapes: B batch, T time, E n_embd, H n_hidden, L n_layer, V vocab_size.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from lmcore.config import check_choices

RecurrentState = torch.Tensor | tuple[torch.Tensor, torch.Tensor] | None


@dataclass(frozen=True)
class RecurrentConfig:
    cell: Literal["lstm", "gru"] = "lstm"
    vocab_size: int = 4096
    n_layer: int = 2
    n_embd: int = 128
    n_hidden: int = 256
    dropout: float = 0.0
    # Training windows; recurrent models have no hard context limit, this sizes the batches.
    block_size: int = 256

    def __post_init__(self) -> None:
        for name in ("vocab_size", "n_layer", "n_embd", "n_hidden", "block_size"):
            if getattr(self, name) <= 0:
                raise ValueError(f"{name} must be positive, got {getattr(self, name)}")
        check_choices(self)
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {self.dropout}")


def _recurrence_in_fp32(device: str) -> bool:
    """Under autocast, whether the recurrence must leave it and run in fp32 (TF32 on CUDA).

    On CPU, oneDNN builds a bf16 LSTM/GRU kernel only where the CPU has AVX-512 BF16 or AMX, and the
    call fails elsewhere; where it exists, a 2x256 LSTM steps 1.35x faster than with an fp32
    recurrence, at the same loss (docs/findings.md). On CUDA, autocast runs cuDNN's RNN in fp16
    whatever its dtype, and a bf16 run has no loss scaler to keep fp16 gradients from underflowing;
    under fp16 autocast (with its scaler) cuDNN's fp16 RNN is what was asked for.
    """
    if not torch.is_autocast_enabled(device):
        return False
    dtype = torch.get_autocast_dtype(device)
    if device == "cpu":
        return dtype != torch.bfloat16 or not torch.ops.mkldnn._is_mkldnn_bf16_supported()
    return dtype == torch.bfloat16


class RecurrentLM(nn.Module):
    def __init__(self, config: RecurrentConfig) -> None:
        super().__init__()
        self.config = config
        self.n_embd = config.n_hidden
        rnn_class = nn.LSTM if config.cell == "lstm" else nn.GRU
        self.wte = nn.Embedding(config.vocab_size, config.n_embd)
        self.drop = nn.Dropout(config.dropout)
        self.rnn = rnn_class(
            config.n_embd,
            config.n_hidden,
            num_layers=config.n_layer,
            dropout=config.dropout if config.n_layer > 1 else 0.0,
            batch_first=True,
        )
        self.down = nn.Linear(config.n_hidden, config.n_embd, bias=False) if config.n_hidden != config.n_embd else None
        self.lm_head = nn.Linear(config.n_embd, config.vocab_size, bias=True)
        self.lm_head.weight = self.wte.weight  # tied input/output embeddings
        # Unit-variance embeddings (PyTorch's default), not GPT's 0.02: with small inputs the
        # LSTM gates barely move and character-level training needed 3x the steps.
        nn.init.zeros_(self.lm_head.bias)

    def _run(self, idx: torch.Tensor, state: RecurrentState) -> tuple[torch.Tensor, RecurrentState]:
        x = self.drop(self.wte(idx))  # (B, T, E)
        if _recurrence_in_fp32(x.device.type):
            with torch.autocast(x.device.type, enabled=False):
                h, state = self.rnn(x.float(), state)  # (B, T, H)
        else:
            h, state = self.rnn(x, state)  # (B, T, H)
        return self.drop(h), state

    def features(self, idx: torch.Tensor) -> torch.Tensor:
        """Hidden states of the top layer (B, T, H)."""
        return self._run(idx, None)[0]

    def _head(self, h: torch.Tensor) -> torch.Tensor:
        if self.down is not None:
            h = self.down(h)  # (B, T, E)
        return self.lm_head(h)  # (B, T, V)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """Logits (B, T, V) for token ids (B, T)."""
        return self._head(self.features(idx))

    def init_state(self, batch_size: int) -> RecurrentState:
        return None

    def forward_step(self, idx: torch.Tensor, state: RecurrentState) -> tuple[torch.Tensor, RecurrentState]:
        """Logits (B, T, V) of new tokens continuing from `state`, and the new state."""
        h, state = self._run(idx, state)
        return self._head(h), state

    def reorder_state(self, state: RecurrentState, rows: torch.Tensor) -> RecurrentState:
        """The state of the given batch rows (B',), in that order: (L, B, H) tensors, one for a GRU,
        (h, c) for an LSTM."""
        if state is None:
            return None
        if isinstance(state, tuple):
            return tuple(part[:, rows] for part in state)
        return state[:, rows]

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """Parameters bottom to top, for discriminative learning rates and gradual unfreezing: the
        embedding, then each recurrent layer, the output projection with the last."""
        layers = [
            [p for name, p in self.rnn.named_parameters() if name.endswith(f"_l{k}")]
            for k in range(self.config.n_layer)
        ]
        layers[-1] += [*(self.down.parameters() if self.down is not None else []), self.lm_head.bias]
        return [[self.wte.weight], *layers]

    @property
    def context_length(self) -> int | None:
        return None

    def num_params(self, non_embedding: bool = True) -> int:
        return sum(p.numel() for p in self.parameters())

    def flops_per_token(self) -> float:
        # Every weight does one multiply-add per token forward and two backward (6 FLOPs); the
        # tied embedding is counted once, for its use as the output head.
        return 6 * self.num_params()
