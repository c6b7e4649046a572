"""A small CNN for square single-channel images (batch, 1, size, size): 28×28 MNIST, 8×8 digits.

The input size is a config field rather than adaptive pooling: the flattened feature map keeps
where strokes are (a global mean would not), and fixed pooling exports to ONNX on every opset.
"""

from __future__ import annotations

from typing import Self

import torch
from pydantic import Field, model_validator
from torch import nn

from models.config import ArchConfig


class CNNConfig(ArchConfig):
    """Conv2d blocks (conv 3×3 → [batch norm] → ReLU → max-pool 2), flatten, linear head."""

    in_channels: int = Field(default=1, ge=1, description="image channels (1 = grayscale)")
    input_size: int = Field(
        default=28,
        ge=2,
        le=512,
        description="height = width of the input in pixels (28 MNIST, 8 digits)",
    )
    num_classes: int = Field(default=10, ge=2, description="number of classes (logits out)")
    channels: tuple[int, ...] = Field(
        default=(16, 32),
        min_length=1,
        max_length=6,
        description="output channels of each conv block; each block halves height and width",
    )
    batch_norm: bool = Field(default=False, description="batch norm after each conv")
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout before the head")

    @model_validator(mode="after")
    def _fits(self) -> Self:
        if self.feature_size < 1:
            raise ValueError(
                f"{len(self.channels)} pooling blocks shrink a {self.input_size}-pixel input to "
                "nothing; use fewer channels entries or a larger input_size"
            )
        return self

    @property
    def feature_size(self) -> int:
        """Height = width of the last feature map (each max-pool floors the size by half)."""
        return self.input_size >> len(self.channels)


class CNN(nn.Module):
    """See CNNConfig."""

    def __init__(self, config: CNNConfig) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = config.in_channels
        for size in config.channels:
            blocks.append(nn.Conv2d(width, size, 3, padding=1))
            if config.batch_norm:
                blocks.append(nn.BatchNorm2d(size))
            blocks += [nn.ReLU(), nn.MaxPool2d(2)]
            width = size
        self.features = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(width * config.feature_size**2, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        flat = torch.flatten(self.features(x), start_dim=1)
        return self.head(self.dropout(flat))  # type: ignore[no-any-return]


def build_cnn(config: CNNConfig) -> nn.Module:
    return CNN(config)
