"""The one MQTT client of fleetlearn (paho-mqtt 2.x lives only here): QoS 1, persistent
sessions, reconnect with backoff, publishes that can be awaited until the broker's PUBACK, and
manual acknowledgements for callers that must not lose a message.

Two ways to run the network loop: a background thread (default), or `threaded=False` where
the caller calls `loop()` itself, e.g. between Kafka polls in the bridge's single thread.
"""

from __future__ import annotations

import contextlib
import logging
import socket
import ssl
import threading
import time
from collections.abc import Callable, Mapping
from typing import Any

import paho.mqtt.client as paho
from paho.mqtt.enums import CallbackAPIVersion
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties
from paho.mqtt.subscribeoptions import SubscribeOptions

from bus import errors
from bus.errors import ConfigError, ConnectError, NoSubscriberError, PublishError
from bus.mqtt import fast_decode
from bus.mqtt.message import MqttMessage, UserProperties, Will, check_topic_filter
from bus.mqtt.options import MqttOptions, tls_context

log = logging.getLogger(__name__)
fast_decode.install()  # paho's PUBLISH decoding, without its per-message cost (see there)


Handler = Callable[[MqttMessage], None]

NO_MATCHING_SUBSCRIBERS = 16  # MQTT 5 PUBACK reason: accepted, and dropped for want of a subscriber


class PublishHandle:
    """Completes when the broker acknowledged the message (PUBACK for QoS 1)."""

    def __init__(
        self, client: MqttClient, topic: str, qos: int, *, require_subscriber: bool = False
    ) -> None:
        self._client = client
        self.topic = topic
        self.qos = qos
        self.require_subscriber = require_subscriber
        self._done = threading.Event()
        self._error: PublishError | None = None
        self._info: paho.MQTTMessageInfo | None = None

    def _paho_says_published(self) -> bool:
        """paho's own record, for an ack that arrived before the handle was registered.

        Only a successful one: paho calls on_publish before it marks the message published,
        and a PUBACK with any other reason code that came before the registration is kept by
        the client (`MqttClient._early_acks`) and applied at registration, before this can run.
        """
        if self._info is None:
            return False
        try:
            published = self._info.is_published()
        except (RuntimeError, ValueError):  # sent while disconnected: the callback will tell
            return False
        if published:
            self._finish()
        return published

    def _finish(self, error: PublishError | None = None) -> None:
        self._error = error
        self._done.set()

    @property
    def acknowledged(self) -> bool:
        if not self._done.is_set():
            self._paho_says_published()
        return self._done.is_set() and self._error is None

    @property
    def error(self) -> PublishError | None:
        """Why it failed (`NoSubscriberError` when no subscriber took it), once it has."""
        return self._error if self._done.is_set() else None

    @property
    def failed(self) -> bool:
        """The broker refused it, or the client was closed before its PUBACK."""
        return self._done.is_set() and self._error is not None

    def wait(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while not self._done.is_set() and not self._paho_says_published():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise errors.TimeoutError(
                    f"no acknowledgement for {self.topic!r} within {timeout} s"
                )
            if self._client.threaded:
                self._done.wait(min(remaining, 0.05))
            else:
                self._client.loop(min(remaining, 0.1))
        if self._error is not None:
            raise self._error


class MqttClient:
    """One broker connection with a stable client id and a persistent session.

    Built unconnected; `connect()` (or `connect_mqtt`) opens it. paho's types, threads and
    exceptions stay inside: callers see `MqttMessage`, `PublishHandle` and `bus.errors`.
    """

    def __init__(
        self, options: MqttOptions, *, will: Will | None = None, threaded: bool = True
    ) -> None:
        self.options = options
        self.threaded = threaded
        self._lock = threading.RLock()
        self._handlers: dict[str, tuple[int, Handler]] = {}
        self._pending: dict[int, PublishHandle] = {}
        # PUBACK reason codes other than Success for packet ids not (yet) in `_pending`: the
        # ack of a publish that came back before `publish` registered its handle. Success is
        # not kept (paho's own record says it, and QoS 0 "acks" would pile up here); an entry
        # lives from the PUBACK until the registration a moment later.
        self._early_acks: dict[int, Any] = {}
        self._connected = threading.Event()
        self._refused: str | None = None
        self._closed = False
        self._next_reconnect = 0.0
        self._backoff = options.reconnect_min_s
        # Bumped on every CONNACK: an ack taken on an earlier connection is dropped, because
        # a packet id names a message only within its connection (the broker redelivers it).
        self._generation = 0
        self._received = 0
        self._routes: dict[str, Handler | None] = {}  # topic -> handler, cleared on subscribe
        # SUBSCRIBEs the broker has not answered (packet id -> filter), and its answers: a
        # refused subscription (an ACL, a bad shared group) must not look like a quiet topic.
        self._subscribing: dict[int, str] = {}
        self._subacks: dict[int, list[str]] = {}
        self._sent_on_connect: dict[int, str] = {}
        self._paho = self._build(will)

    @property
    def client_id(self) -> str:
        return self.options.client_id

    def _build(self, will: Will | None) -> paho.Client:
        o = self.options
        protocol = paho.MQTTv5 if o.protocol == 5 else paho.MQTTv311
        kwargs: dict[str, Any] = {"manual_ack": o.manual_ack}
        if o.protocol == 311:
            kwargs["clean_session"] = o.clean_start
        client = paho.Client(
            CallbackAPIVersion.VERSION2, client_id=o.client_id, protocol=protocol, **kwargs
        )
        if o.username is not None:
            client.username_pw_set(o.username, o.password)
        if o.tls:
            client.tls_set_context(tls_context(o))
        if will is not None:
            try:
                client.will_set(will.topic, will.payload, will.qos, will.retain)
            except ValueError as exc:
                raise ConfigError(f"Last Will on {will.topic!r} refused: {exc}") from exc
        client.max_inflight_messages_set(o.max_inflight)
        client.max_queued_messages_set(o.max_queued)
        client.reconnect_delay_set(
            max(1, round(o.reconnect_min_s)), max(1, round(o.reconnect_max_s))
        )
        if not self.threaded:
            # Queue acks and publishes instead of writing each at once; `loop` writes them
            # together, one send for a batch of PUBACKs rather than one per message.
            client.on_socket_register_write = _defer_writes
        client.on_connect = self._on_connect
        client.on_disconnect = self._on_disconnect
        client.on_message = self._on_message
        client.on_publish = self._on_publish
        client.on_subscribe = self._on_subscribe
        return client

    # -- connection -------------------------------------------------------------------------

    def connect(self, timeout: float = 10.0) -> MqttClient:
        """Connect and wait for the broker's CONNACK; refusal or silence is a ConnectError."""
        o = self.options
        try:
            if o.protocol == 5:
                properties = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
                properties.SessionExpiryInterval = o.session_expiry
                self._paho.connect(
                    o.host, o.port, o.keepalive, clean_start=o.clean_start, properties=properties
                )
            else:
                self._paho.connect(o.host, o.port, o.keepalive)
        except (OSError, ssl.SSLError) as exc:
            raise ConnectError(f"cannot reach {o.url} as {o.client_id!r}: {exc}") from exc
        if self.threaded:
            self._paho.loop_start()
        deadline = time.monotonic() + timeout
        while not self._connected.is_set() and self._refused is None:
            if time.monotonic() > deadline:
                self._stop_loop()
                raise ConnectError(f"{o.url} did not answer CONNECT within {timeout} s")
            if self.threaded:
                self._connected.wait(0.05)
            else:
                self._paho.loop(0.05)
        if self._refused is not None:
            self._stop_loop()
            raise ConnectError(f"{o.url} refused {o.client_id!r}: {self._refused}")
        try:
            self._await_subacks(self._sent_on_connect, deadline)
        except ConnectError:
            self._stop_loop()
            raise
        return self

    @property
    def connected(self) -> bool:
        return self._connected.is_set()

    def wait_connected(self, timeout: float) -> bool:
        """Wait until connected and the subscriptions sent on connecting are acknowledged."""
        deadline = time.monotonic() + timeout
        while not (self._connected.is_set() and self.subscribed) and time.monotonic() < deadline:
            if self.threaded:
                self._connected.wait(0.05)
            else:
                self.loop(0.05)
        return self._connected.is_set() and self.subscribed

    @property
    def subscribed(self) -> bool:
        """True once the broker has answered every SUBSCRIBE sent on this connection."""
        with self._lock:
            return not self._subscribing

    def _on_connect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        if reason.is_failure:
            self._refused = str(reason)
            client.disconnect()  # stop paho from retrying with credentials that will not work
            return
        self._backoff = self.options.reconnect_min_s
        self._generation += 1
        with self._lock:
            self._subscribing.clear()  # a SUBSCRIBE of an earlier connection gets no answer now
            self._subacks.clear()
            handlers = [(f, qos) for f, (qos, _) in self._handlers.items()]
        # On MQTT 5 every filter is sent again, so a filter added since the session began is
        # not missed; retain handling 1 keeps retained messages from coming twice. On 3.1.1
        # that option does not exist: a kept session keeps its subscriptions.
        sent: dict[int, str] = {}
        if not flags.session_present or self.options.protocol == 5:
            for topic_filter, qos in handlers:
                mid = self._send_subscribe(client, topic_filter, qos)
                if mid is not None:
                    sent[mid] = topic_filter
        self._sent_on_connect = sent
        self._connected.set()
        log.info(
            "mqtt connected", extra={"url": self.options.url, "client_id": self.options.client_id}
        )

    def _on_disconnect(
        self, client: paho.Client, userdata: Any, flags: Any, reason: Any, properties: Any
    ) -> None:
        self._connected.clear()
        if not self._closed and self._refused is None:
            log.warning("mqtt disconnected", extra={"url": self.options.url, "reason": str(reason)})

    def loop(self, timeout: float = 0.1, *, max_messages: int = 1) -> int:
        """Run the network loop once (for `threaded=False`); reconnects with backoff.

        Reads up to `max_messages` messages that are already waiting, not just one as paho's
        loop does, so a busy caller pays for one select per batch. Returns how many arrived.
        """
        if self._closed:
            return 0
        if not self._connected.is_set() and self._refused is None and self._paho.socket() is None:
            now = time.monotonic()
            if now < self._next_reconnect:
                time.sleep(min(timeout, self._next_reconnect - now))
                return 0
            try:
                self._paho.reconnect()
            except (OSError, ssl.SSLError):
                self._next_reconnect = now + self._backoff
                self._backoff = min(self._backoff * 2, self.options.reconnect_max_s)
                return 0
        before = self._received
        self._paho.loop(timeout)
        while self._received - before < max_messages:
            seen = self._received
            if self._paho.loop_read() != paho.MQTT_ERR_SUCCESS or self._received == seen:
                break  # nothing more waiting (or the connection dropped: the next loop tells)
        self.flush_writes()
        return self._received - before

    def flush_writes(self) -> None:
        """Send what is queued (acks, publishes) now, without waiting for the next loop."""
        if not self.threaded and self._paho.want_write():
            self._paho.loop_write()

    # -- publish ----------------------------------------------------------------------------

    def publish(
        self,
        topic: str,
        payload: bytes,
        *,
        qos: int = 1,
        retain: bool = False,
        user_properties: Mapping[str, str] | None = None,
        require_subscriber: bool = False,
    ) -> PublishHandle:
        """Queue a message; `wait()` on the handle returns once the broker has it (PUBACK).

        Publishing while disconnected queues: QoS 1 messages wait in this process's memory
        (up to `max_queued`, then PublishError) and go out after the reconnect, so `wait()`
        returns only once the broker really holds the message. They are lost if the process
        dies first, which is why the edge outbox keeps each message on disk until `wait()`
        returns. `user_properties` need MQTT 5; on 3.1.1 they are refused, not dropped.

        A PUBACK with reason code 16 ("No matching subscribers") means the broker took the
        message and dropped it: nobody subscribes to the topic, e.g. after a broker restart
        that lost the shared subscriptions, before the bridge subscribed again. By default
        that still counts as acknowledged (it is what a status message wants); with
        `require_subscriber=True` the handle fails with `NoSubscriberError`, so a sender that
        keeps its message (the edge outbox) keeps it and tries again. On MQTT 3.1.1 a PUBACK
        carries no reason code: the broker cannot say, the option detects nothing and a
        dropped message looks acknowledged. It needs QoS 1 to mean anything (QoS 0 has no ack).
        """
        if self._closed:
            raise PublishError(f"publish to {topic!r} on a closed client")
        properties = self._publish_properties(topic, user_properties)
        handle = PublishHandle(self, topic, qos, require_subscriber=require_subscriber)
        # Our lock is never held while calling into paho: paho holds its own while it calls
        # on_publish, and the opposite order deadlocks under load. An ack that arrives before
        # the registration below is still seen through paho's own record of the message.
        try:
            info = self._paho.publish(topic, payload, qos=qos, retain=retain, properties=properties)
        except ValueError as exc:  # bad topic, QoS or a payload over 256 MiB
            raise PublishError(f"publish to {topic!r} refused: {exc}") from exc
        if info.rc == paho.MQTT_ERR_QUEUE_SIZE:
            raise PublishError(f"publish to {topic!r}: the outgoing queue is full")
        if info.rc not in (paho.MQTT_ERR_SUCCESS, paho.MQTT_ERR_NO_CONN):
            raise PublishError(f"publish to {topic!r} failed: {paho.error_string(info.rc)}")
        if qos == 0:
            handle._finish()
            return handle
        handle._info = info
        with self._lock:
            early = self._early_acks.pop(info.mid, None)
            if early is None:
                self._pending[info.mid] = handle
        if early is not None:  # its PUBACK came first, and it was not a plain Success
            self._finish(handle, early)
        return handle

    def _publish_properties(
        self, topic: str, user_properties: Mapping[str, str] | None
    ) -> Properties | None:
        if not user_properties:
            return None
        if self.options.protocol != 5:
            raise ConfigError(
                f"publish to {topic!r}: user properties need MQTT 5, "
                f"but {self.options.url} is used with 3.1.1"
            )
        properties = Properties(PacketTypes.PUBLISH)  # type: ignore[no-untyped-call]
        properties.UserProperty = list(user_properties.items())
        return properties

    def _on_publish(
        self, client: paho.Client, userdata: Any, mid: int, reason: Any, properties: Any
    ) -> None:
        with self._lock:
            handle = self._pending.pop(mid, None)
            if handle is None and _reason_value(reason) != 0:
                self._early_acks[mid] = reason  # `publish` has not registered it yet
        if handle is not None:
            self._finish(handle, reason)

    @staticmethod
    def _finish(handle: PublishHandle, reason: Any) -> None:
        if reason is not None and getattr(reason, "is_failure", False):
            handle._finish(
                PublishError(f"broker refused the message on {handle.topic!r}: {reason}")
            )
        elif handle.require_subscriber and _reason_value(reason) == NO_MATCHING_SUBSCRIBERS:
            handle._finish(
                NoSubscriberError(
                    f"no subscriber took the message on {handle.topic!r}: the broker "
                    f"acknowledged it with reason code 16 ({reason}) and dropped it"
                )
            )
        else:
            handle._finish()

    # -- subscribe --------------------------------------------------------------------------

    def subscribe(
        self, topic_filter: str, handler: Handler, *, qos: int = 1, timeout: float = 10.0
    ) -> None:
        """Route `topic_filter` to `handler`; on a live connection, wait for the SUBACK.

        Subscribe before `connect()` when resuming a persistent session: the messages the
        broker kept arrive right after CONNACK, and `connect()` waits for the SUBACKs.
        A subscription the broker refuses is a ConnectError naming the filter.
        """
        check_topic_filter(topic_filter)
        with self._lock:
            self._handlers[topic_filter] = (qos, handler)
            self._routes.clear()
        if not self._connected.is_set():
            return  # sent on connect unless the broker still holds the session
        mid = self._send_subscribe(self._paho, topic_filter, qos)
        if mid is not None:
            self._await_subacks({mid: topic_filter}, time.monotonic() + timeout)

    def _send_subscribe(self, client: paho.Client, topic_filter: str, qos: int) -> int | None:
        """Send one SUBSCRIBE; its packet id, or None without a connection (on_connect sends
        it then). Called without our lock: paho takes its own inside (see `publish`)."""
        options = None
        if self.options.protocol == 5:
            options = SubscribeOptions(qos=qos, retainHandling=1)
        try:
            if options is None:
                result, mid = client.subscribe(topic_filter, qos)
            else:
                result, mid = client.subscribe(topic_filter, options=options)
        except ValueError as exc:
            raise ConfigError(f"subscribe to {topic_filter!r} refused: {exc}") from exc
        if result == paho.MQTT_ERR_SUCCESS and mid is not None:
            with self._lock:
                if mid not in self._subacks:  # the SUBACK may already be in
                    self._subscribing[mid] = topic_filter
            return mid
        if result != paho.MQTT_ERR_NO_CONN:
            raise ConnectError(f"subscribe to {topic_filter!r} failed: {paho.error_string(result)}")
        return None

    def _on_subscribe(
        self, client: paho.Client, userdata: Any, mid: int, reason_codes: Any, properties: Any
    ) -> None:
        refused = [str(code) for code in reason_codes if getattr(code, "is_failure", False)]
        with self._lock:
            topic_filter = self._subscribing.pop(mid, None)
            self._subacks[mid] = refused
        if refused:
            log.error(
                "mqtt subscription refused",
                extra={"filter": topic_filter, "mid": mid, "reason": ", ".join(refused)},
            )

    def _await_subacks(self, waiting: Mapping[int, str], deadline: float) -> None:
        """Wait for the SUBACKs of `waiting` (packet id -> filter); a refusal is a ConnectError."""
        while True:
            with self._lock:
                answers = {mid: self._subacks.pop(mid) for mid in waiting if mid in self._subacks}
                missing = [mid for mid in waiting if mid in self._subscribing]
            for mid, refused in answers.items():
                if refused:
                    raise ConnectError(
                        f"{self.options.url} refused the subscription to {waiting[mid]!r}: "
                        + ", ".join(refused)
                    )
            if not missing:
                return
            if time.monotonic() > deadline:
                filters = ", ".join(repr(waiting[mid]) for mid in missing)
                raise ConnectError(f"{self.options.url} did not answer SUBSCRIBE {filters}")
            waiting = {mid: waiting[mid] for mid in missing}
            if self.threaded:
                time.sleep(0.01)
            else:
                self._paho.loop(0.05)

    def _on_message(self, client: paho.Client, userdata: Any, message: paho.MQTTMessage) -> None:
        self._received += 1
        handler = self._handler_for(message.topic)
        ack: Callable[[], None] | None = None
        if self.options.manual_ack and message.qos > 0:
            mid, qos, generation = message.mid, message.qos, self._generation

            def ack() -> None:
                if generation == self._generation:
                    client.ack(mid, qos)
                else:  # a stale packet id could ack another message; the broker redelivers this
                    log.debug("ack from an earlier connection dropped", extra={"mid": mid})

        wrapped = MqttMessage(
            message.topic,
            bytes(message.payload),
            message.qos,
            bool(message.retain),
            message.mid,
            bool(message.dup),
            _user_properties(message),
            ack,
        )
        if handler is None:  # not acked: with manual acks the broker redelivers it later
            log.warning("mqtt message without a handler", extra={"topic": message.topic})
            return
        try:
            handler(wrapped)
        except Exception:  # a daemon loop: one bad handler call must not kill the connection
            log.exception("mqtt handler failed", extra={"topic": message.topic})

    def _handler_for(self, topic: str) -> Handler | None:
        """The handler of the first filter that matches; remembered per topic (a fleet's
        topics repeat, and paho's matcher costs more than the rest of a message's handling)."""
        with self._lock:
            if topic in self._routes:
                return self._routes[topic]
            if len(self._routes) >= 65536:
                self._routes.clear()
            self._routes[topic] = self._match(topic)
            return self._routes[topic]

    def _match(self, topic: str) -> Handler | None:
        with self._lock:
            for topic_filter, (_, handler) in self._handlers.items():
                plain = (
                    topic_filter.split("/", 2)[2]
                    if topic_filter.startswith("$share/")
                    else topic_filter
                )
                if paho.topic_matches_sub(plain, topic):
                    return handler
        return None

    # -- shutdown ---------------------------------------------------------------------------

    def _stop_loop(self) -> None:
        if self.threaded:
            self._paho.loop_stop()

    def close(self) -> None:
        """Disconnect cleanly (no Last Will) and stop the loop thread.

        Publishes still waiting for their PUBACK fail at once with PublishError: the broker may
        or may not have them, so their senders must keep them (the outbox does).
        """
        if self._closed:
            return
        self._closed = True
        self._paho.disconnect()
        if self.threaded:
            self._paho.loop_stop()
        else:
            self._paho.loop(0.05)
        self._connected.clear()
        self._fail_pending("the client was closed")

    def abort(self) -> None:
        """Drop the connection without DISCONNECT, as a crash would (the Last Will fires)."""
        self._closed = True
        sock = self._paho.socket()
        if sock is not None:
            # shutdown() first: it reaches the broker at once and wakes the loop thread's
            # select. Closing the descriptor under that thread instead leaves it polling a
            # number the process may hand to another socket, and the broker may not hear.
            shutdown = getattr(sock, "shutdown", None)  # paho types it as a bare SocketLike
            if shutdown is not None:
                with contextlib.suppress(OSError):
                    shutdown(socket.SHUT_RDWR)
        if self.threaded:
            self._paho.loop_stop()
        if sock is not None:
            sock.close()
        self._connected.clear()
        self._fail_pending("the connection was aborted")

    def _fail_pending(self, why: str) -> None:
        with self._lock:
            pending, self._pending = self._pending, {}
            self._early_acks.clear()
        for handle in pending.values():
            handle._finish(PublishError(f"{why} before the broker acknowledged {handle.topic!r}"))


def _defer_writes(client: paho.Client, userdata: Any, sock: Any) -> None:
    """paho's hook for external event loops: writes wait for `MqttClient.loop`."""


def _reason_value(reason: Any) -> int:
    """A PUBACK's reason code as a number; 0 (Success) where there is none (MQTT 3.1.1, QoS 0)."""
    value = getattr(reason, "value", 0)
    return value if isinstance(value, int) else 0


def _user_properties(message: paho.MQTTMessage) -> UserProperties:
    properties = getattr(message, "properties", None)
    pairs = getattr(properties, "UserProperty", None) or []
    return tuple((str(k), str(v)) for k, v in pairs)


def connect_mqtt(
    url: str,
    *,
    client_id: str,
    will: Will | None = None,
    threaded: bool = True,
    timeout: float = 10.0,
    subscriptions: Mapping[str, Handler] | None = None,
    **options: Any,
) -> MqttClient:
    """Open and connect a client for `url`; `options` override `MqttOptions` fields.

    `subscriptions` are installed before CONNECT, so nothing a resumed session delivers is missed.
    """
    settings = MqttOptions.from_url(url, client_id=client_id, **options)
    client = MqttClient(settings, will=will, threaded=threaded)
    for topic_filter, handler in (subscriptions or {}).items():
        client.subscribe(topic_filter, handler)
    return client.connect(timeout)
