"""Whether a device takes part in a round: a pure function of the announcement and its id.

The draw is a hash, not a random number, so the device and the cloud coordinator compute the
same answer without talking: the coordinator knows whom to wait for, and a device that restarts
mid-round decides the same way again. The hash covers the round id, so a different subset of
the fleet trains each round, and the seed lets an operator reshuffle. `min_devices` is the
coordinator's concern (how many updates it waits for), not the device's.
"""

from __future__ import annotations

import hashlib

from bus.protocol.envelopes import RoundAnnouncement

_MANTISSA = 53  # bits of a float64 mantissa: the draw is an exact multiple of 2**-53 in [0, 1)
_SCALE = float(1 << _MANTISSA)


def draw(seed: int, round_id: str, device_id: str) -> float:
    """sha256(f"{seed}:{round_id}:{device_id}") as a number in [0, 1), uniform over devices.

    The top 53 bits of the digest over 2**53: exact in a float64, so it can never round to 1.0.
    """
    digest = hashlib.sha256(f"{seed}:{round_id}:{device_id}".encode()).digest()
    return (int.from_bytes(digest[:8], "big") >> (64 - _MANTISSA)) / _SCALE


def selected(announcement: RoundAnnouncement, device_id: str) -> bool:
    """True if `device_id` trains in this round.

    An explicit `sampling.devices` list decides by membership (an empty list selects no one);
    otherwise a device is in when its draw is below `sampling.rate`.
    """
    sampling = announcement.sampling
    if sampling.devices is not None:
        return device_id in sampling.devices
    return draw(sampling.seed, announcement.round_id, device_id) < sampling.rate
