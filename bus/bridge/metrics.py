"""Prometheus metrics of the bridge, in a registry of its own (several bridges per process)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, start_http_server


@dataclass
class BridgeMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.received = Counter(
            "bridge_received", "MQTT messages received", ["channel"], registry=r
        )
        self.forwarded = Counter(
            "bridge_forwarded", "records confirmed by the log", ["channel"], registry=r
        )
        self.rejected = Counter(
            "bridge_rejected", "messages sent to the dead-letter topic", ["reason"], registry=r
        )
        self.downlinked = Counter(
            "bridge_downlinked", "rounds and releases published", ["kind"], registry=r
        )
        self.inflight = Gauge("bridge_inflight", "received, not yet acknowledged", registry=r)
        self.latency = Histogram(
            "bridge_latency_seconds",
            "device send time to log confirmation",
            buckets=(0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
            registry=r,
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
