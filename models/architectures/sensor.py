"""A 1D-CNN for windows of motion-sensor samples (batch, channels, window), e.g. 6-axis IMU.

Convolutions over time, then a mean over the time axis: the model accepts any window length at
least as long as its receptive field, and the mean exports to ONNX as a plain ReduceMean.
"""

from __future__ import annotations

import torch
from pydantic import Field
from torch import nn

from models.config import ArchConfig


class CNN1DConfig(ArchConfig):
    """Conv1d blocks (conv → [batch norm] → ReLU → max-pool 2), global mean, linear head."""

    in_channels: int = Field(default=6, ge=1, description="sensor axes per sample (6 = acc+gyro)")
    num_classes: int = Field(default=7, ge=2, description="number of classes (logits out)")
    channels: tuple[int, ...] = Field(
        default=(32, 64),
        min_length=1,
        max_length=6,
        description="output channels of each conv block; each block halves the time axis",
    )
    kernel_size: int = Field(
        default=5, ge=1, le=31, description="conv kernel length (odd keeps length)"
    )
    batch_norm: bool = Field(
        default=True,
        description="batch norm after each conv: IMU axes differ in scale (m/s² vs rad/s); its "
        "running mean/var are float buffers and travel with the parameters",
    )
    dropout: float = Field(default=0.0, ge=0.0, lt=1.0, description="dropout before the head")


class CNN1D(nn.Module):
    """See CNN1DConfig."""

    def __init__(self, config: CNN1DConfig) -> None:
        super().__init__()
        blocks: list[nn.Module] = []
        width = config.in_channels
        for size in config.channels:
            blocks.append(
                nn.Conv1d(width, size, config.kernel_size, padding=config.kernel_size // 2)
            )
            if config.batch_norm:
                blocks.append(nn.BatchNorm1d(size))
            blocks += [nn.ReLU(), nn.MaxPool1d(2)]
            width = size
        self.features = nn.Sequential(*blocks)
        self.dropout = nn.Dropout(config.dropout)
        self.head = nn.Linear(width, config.num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        pooled = self.features(x).mean(dim=-1)
        return self.head(self.dropout(pooled))  # type: ignore[no-any-return]


def build_cnn1d(config: CNN1DConfig) -> nn.Module:
    return CNN1D(config)
