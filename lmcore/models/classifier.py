"""Sequence classification: a linear head on pooled hidden states of any backbone.

Pooling respects padding: `mean` averages only real tokens, `last` takes the last real token
(the one that has seen the whole text in a causal model), `concat` joins last, max and mean
(ULMFiT's concat pooling: the head sees 3C features).

Shapes: B batch, T time, C backbone width, K num_classes.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn as nn

POOLINGS = ("mean", "last", "concat")


class SequenceClassifier(nn.Module):
    def __init__(
        self,
        backbone: nn.Module,
        num_classes: int,
        pooling: Literal["mean", "last", "concat"] = "mean",
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        if num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if pooling not in POOLINGS:
            raise ValueError(f"pooling must be one of {list(POOLINGS)}, got {pooling!r}")
        self.backbone = backbone
        self.backbone_frozen = False
        self.pooling = pooling
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(backbone.n_embd * (3 if pooling == "concat" else 1), num_classes)
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)

    def forward(self, idx: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
        """Class logits (B, K) for right-padded ids (B, T) with true lengths (B,)."""
        h = self.backbone.features(idx)  # (B, T, C)
        positions = torch.arange(idx.size(1), device=idx.device)  # (T,)
        mask = positions[None, :] < lengths[:, None]  # (B, T)
        last = h[torch.arange(idx.size(0), device=idx.device), (lengths - 1).clamp(min=0)]  # (B, C)
        if self.pooling == "last":
            return self.head(self.dropout(last))
        mean = (h * mask[:, :, None].to(h.dtype)).sum(1) / lengths[:, None].clamp(min=1).to(h.dtype)  # (B, C)
        if self.pooling == "mean":
            return self.head(self.dropout(mean))
        peak = h.masked_fill(~mask[:, :, None], torch.finfo(h.dtype).min).amax(1)  # (B, C)
        return self.head(self.dropout(torch.cat([last, peak, mean], dim=-1)))  # (B, 3C)

    def freeze_backbone(self) -> None:
        """A linear probe: only the head trains, on the backbone's deterministic features."""
        for p in self.backbone.parameters():
            p.requires_grad_(False)
        self.backbone_frozen = True
        self.backbone.eval()

    def train(self, mode: bool = True) -> SequenceClassifier:
        # A frozen backbone stays in eval mode: with its dropout on, the head would train on
        # noisy features and be evaluated on clean ones.
        super().train(mode)
        if self.backbone_frozen:
            self.backbone.eval()
        return self

    def layer_groups(self) -> list[list[nn.Parameter]]:
        """The backbone's groups bottom to top, then the head."""
        return [*self.backbone.layer_groups(), list(self.head.parameters())]

    def num_params(self, non_embedding: bool = True) -> int:
        return self.backbone.num_params(non_embedding) + sum(p.numel() for p in self.head.parameters())

    def flops_per_token(self) -> float:
        return self.backbone.flops_per_token()
