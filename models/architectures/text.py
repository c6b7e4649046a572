"""A small text classifier over token ids (batch, max_len), int64, 0 = padding.

Embedding, then a mean over the non-padding positions, then a linear head (fastText-style).
The mask is built with plain tensor ops instead of EmbeddingBag offsets, so the model exports to
ONNX with a dynamic batch.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from models.config import ArchConfig

PAD = 0


class TextClassifierConfig(ArchConfig):
    """Embedding + masked mean + optional hidden layer + linear head."""

    vocab_size: int = Field(ge=2, description="token ids run from 0 (padding) to vocab_size - 1")
    num_classes: int = Field(default=3, ge=2, description="number of classes (logits out)")
    embed_dim: int = Field(default=64, ge=1, le=4096, description="width of each token embedding")
    hidden: int = Field(
        default=0, ge=0, le=4096, description="width of a ReLU layer before the head; 0 = none"
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout before the head")


class TextClassifier(nn.Module):
    """See TextClassifierConfig. A row of padding only pools to zeros (logits = the bias)."""

    def __init__(self, config: TextClassifierConfig) -> None:
        super().__init__()
        self.embedding = nn.Embedding(config.vocab_size, config.embed_dim, padding_idx=PAD)
        width = config.embed_dim
        layers: list[nn.Module] = []
        if config.hidden:
            layers += [nn.Linear(width, config.hidden), nn.ReLU()]
            width = config.hidden
        layers.append(nn.Dropout(config.dropout))
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, config.num_classes)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        mask = (tokens != PAD).unsqueeze(-1).to(self.embedding.weight.dtype)
        summed = (self.embedding(tokens) * mask).sum(dim=1)
        pooled = summed / mask.sum(dim=1).clamp(min=1.0)
        return self.head(self.body(pooled))  # type: ignore[no-any-return]


def build_textclf(config: TextClassifierConfig) -> nn.Module:
    return TextClassifier(config)
