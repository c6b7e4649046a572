"""Whether this device takes part in a round: the shared rule lives in the wire protocol, so the
cloud coordinator computes the same answer (`bus.protocol.selection`)."""

from bus.protocol.selection import draw, selected

__all__ = ["draw", "selected"]
