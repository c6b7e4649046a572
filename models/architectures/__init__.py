"""The built-in architectures: a typed config and a builder each, registered in models.registry."""

from models.architectures.image import CNN, CNNConfig, build_cnn
from models.architectures.sensor import CNN1D, CNN1DConfig, build_cnn1d
from models.architectures.tabular import (
    MLP,
    LogReg,
    LogRegConfig,
    MLPConfig,
    build_logreg,
    build_mlp,
)
from models.architectures.text import TextClassifier, TextClassifierConfig, build_textclf

__all__ = [
    "CNN",
    "CNN1D",
    "MLP",
    "CNN1DConfig",
    "CNNConfig",
    "LogReg",
    "LogRegConfig",
    "MLPConfig",
    "TextClassifier",
    "TextClassifierConfig",
    "build_cnn",
    "build_cnn1d",
    "build_logreg",
    "build_mlp",
    "build_textclf",
]
