"""How much an update computed on an old model counts: FedBuff's polynomial staleness weighting.

In asynchronous rounds (Nguyen et al. 2022, "Federated Learning with Buffered Asynchronous
Aggregation") an update trained from a model `s` versions behind the current one still helps, but
less; its aggregation weight is multiplied by (1 + s)^(−exponent). The default exponent 0.5 is the
paper's: an update one version late counts ~0.71, three versions late 0.5.
"""

from __future__ import annotations

import math

from cloud_trainer.strategies.base import StrategyError


def staleness_weight(staleness: int, exponent: float = 0.5) -> float:
    """(1 + staleness)^(−exponent): 1.0 for a fresh update, decreasing with every version behind.

    `staleness` is the number of global model versions between the one the device trained from and
    the one being aggregated into (≥ 0); `exponent` must be finite and ≥ 0 (0 turns weighting off).
    """
    if isinstance(staleness, bool) or not isinstance(staleness, int) or staleness < 0:
        raise StrategyError(f"staleness must be an integer >= 0, got {staleness!r}")
    if not math.isfinite(exponent) or exponent < 0:
        raise StrategyError(f"staleness exponent must be finite and >= 0, got {exponent!r}")
    return float((1.0 + staleness) ** -exponent)
