"""Models for tabular rows (batch, features): logistic regression and a small MLP.

Both return logits of shape (batch, num_classes) — two logits for a binary task, not one — so
every architecture trains with the same cross-entropy loss and exports the same output shape.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from models.config import ArchConfig


class LogRegConfig(ArchConfig):
    """Multinomial logistic regression: one linear layer."""

    in_features: int = Field(ge=1, description="number of input features per row")
    num_classes: int = Field(default=2, ge=2, description="number of classes (logits out)")


class MLPConfig(ArchConfig):
    """A multi-layer perceptron with ReLU between layers."""

    in_features: int = Field(ge=1, description="number of input features per row")
    num_classes: int = Field(default=2, ge=2, description="number of classes (logits out)")
    hidden: tuple[int, ...] = Field(
        default=(64, 32),
        min_length=1,
        max_length=8,
        description="width of each hidden layer, input side first",
    )
    dropout: float = Field(
        default=0.0, ge=0.0, lt=1.0, description="dropout after each hidden layer (train only)"
    )


class LogReg(nn.Module):
    """Logits = x · Wᵀ + b."""

    def __init__(self, config: LogRegConfig) -> None:
        super().__init__()
        self.linear = nn.Linear(config.in_features, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x)  # type: ignore[no-any-return]


class MLP(nn.Module):
    """Linear → ReLU → Dropout per hidden layer, then a linear head."""

    def __init__(self, config: MLPConfig) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        width = config.in_features
        for size in config.hidden:
            layers += [nn.Linear(width, size), nn.ReLU()]
            if config.dropout > 0:
                layers.append(nn.Dropout(config.dropout))
            width = size
        self.body = nn.Sequential(*layers)
        self.head = nn.Linear(width, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))  # type: ignore[no-any-return]


def build_logreg(config: LogRegConfig) -> nn.Module:
    return LogReg(config)


def build_mlp(config: MLPConfig) -> nn.Module:
    return MLP(config)
