"""Prometheus metrics of the edge agent, in a registry of its own (tests run several agents)."""

from __future__ import annotations

from dataclasses import dataclass, field

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


@dataclass
class EdgeMetrics:
    registry: CollectorRegistry = field(default_factory=CollectorRegistry)

    def __post_init__(self) -> None:
        r = self.registry
        self.samples = Counter(
            "edge_samples_collected", "samples written to the buffer", ["collector"], registry=r
        )
        self.collector_errors = Counter(
            "edge_collector_errors", "batches the buffer refused", ["collector"], registry=r
        )
        self.rounds = Counter(
            "edge_rounds", "round announcements by what the device did", ["outcome"], registry=r
        )
        self.updates_sent = Counter(
            "edge_updates_acknowledged", "updates the broker acknowledged", registry=r
        )
        self.releases = Counter(
            "edge_releases", "release messages by outcome", ["outcome"], registry=r
        )
        self.buffer_rows = Gauge("edge_buffer_rows", "samples held", registry=r)
        self.outbox_messages = Gauge("edge_outbox_messages", "updates not yet acked", registry=r)
        self.model_version = Gauge("edge_model_version", "active model version", registry=r)
        self.connected = Gauge("edge_connected", "1 while the broker connection is up", registry=r)
        self.data_samples_queued = Counter(
            "edge_data_samples_queued",
            "raw samples put in the outbox for the data topic",
            ["stream"],
            registry=r,
        )
        self.data_batches_queued = Counter(
            "edge_data_batches_queued", "data batches put in the outbox", ["stream"], registry=r
        )
        self.data_batches_sent = Counter(
            "edge_data_batches_acknowledged", "data batches the broker acknowledged", registry=r
        )
        self.data_samples_skipped = Counter(
            "edge_data_samples_skipped",
            "samples the upload passes over (unlabelled, shape, label)",
            ["stream", "reason"],
            registry=r,
        )
        self.data_waits = Counter(
            "edge_data_upload_waits",
            "looks that left samples waiting in the buffer (cap, queue, outbox_full)",
            ["reason"],
            registry=r,
        )
        self.data_batches_waiting = Gauge(
            "edge_data_batches_waiting", "data batches in the outbox, not yet acked", registry=r
        )

    def serve(self, port: int, host: str = "127.0.0.1") -> None:
        start_http_server(port, addr=host, registry=self.registry)
