"""The bus's exception tree: every failure of the protocol or a transport surfaces as one of these.

    FleetlearnError
     └── BusError
          ├── ProtocolError            bytes or fields that are not a valid fleetlearn message
          │    ├── FrameError          the binary frame: magic, version, lengths, compression
          │    ├── ValidationError     a header or tensor field that breaks the schema or a limit
          │    └── CodecError          an update codec that cannot encode or decode the tensors
          ├── TransportError           a broker, log or store could not do what was asked
          │    ├── ConnectError        could not reach or authenticate with the service
          │    ├── PublishError        a message was not accepted (not acknowledged, too large)
          │    │    └── NoSubscriberError  accepted, but no subscriber took it (MQTT 5 reason 16)
          │    └── TimeoutError        no answer in time
          ├── LogError                 the durable log (Kafka or the embedded one)
          ├── ObjectStoreError         the object store (S3 or a directory)
          │    └── ObjectNotFound      no object under that key
          └── ConfigError              a URL or option that cannot be used

Third-party exceptions (paho, confluent-kafka, botocore, sqlite3, pydantic) never escape an
adapter: they are mapped into this tree with the cause chained, so callers catch one family.
"""

from __future__ import annotations


class FleetlearnError(Exception):
    """Root of every error fleetlearn raises on purpose."""


class BusError(FleetlearnError):
    """A failure in the wire protocol or a transport."""


class ProtocolError(BusError):
    """Bytes or fields that are not a valid fleetlearn message.

    ``where`` names the field or byte range at fault (``"header.device_id"``,
    ``"payload.tensors['fc.weight'].shape"``), so a rejection can say exactly what was wrong.
    """

    def __init__(self, message: str, *, where: str | None = None) -> None:
        self.where = where
        self.reason = message
        super().__init__(f"{where}: {message}" if where else message)


class FrameError(ProtocolError):
    """The binary frame is broken: magic, version, lengths or compression."""


class ValidationError(ProtocolError):
    """A header or tensor field breaks the schema or a limit."""


class CodecError(ProtocolError):
    """An update codec cannot encode or decode the given tensors."""


class TransportError(BusError):
    """A broker, log or store could not do what was asked."""


class ConnectError(TransportError):
    """The service could not be reached or refused the credentials."""


class PublishError(TransportError):
    """A message was not accepted: not acknowledged, too large, or the client is closed."""


class NoSubscriberError(PublishError):
    """The broker acknowledged the message with reason code 16, "No matching subscribers": it
    took the message and dropped it, because nothing subscribes to the topic right now (e.g.
    after a broker restart, before a bridge has subscribed again). Raised only for publishes
    that ask for a subscriber (`MqttClient.publish(..., require_subscriber=True)`); MQTT 3.1.1
    has no reason codes, so it is never raised there."""


class TimeoutError(TransportError):  # noqa: A001 - deliberately ours, scoped to the bus
    """No answer arrived in time."""


class LogError(BusError):
    """The durable log (Kafka or the embedded SQLite log) failed."""


class ObjectStoreError(BusError):
    """The object store (S3 or a local directory) failed."""


class ObjectNotFound(ObjectStoreError):
    """No object exists under the requested key."""


class ConfigError(BusError):
    """A URL or option that cannot be used; the message says which and why."""
