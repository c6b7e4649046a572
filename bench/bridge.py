"""The bridge against its two ceilings, in one run, on loopback, at QoS 1.

    .venv/bin/python -m bench.bridge [--protocol 5|311] [--count-1k 20000] [--count-100k 2000]

For 1 KB and 100 KB messages it measures, one after the other on the same broker and Kafka:

(a) the MQTT ceiling: a plain paho-mqtt subscriber (QoS 1, automatic acks), fed by the
    same publisher process as the bridge;
(b) the Kafka ceiling: a plain confluent-kafka producer with the durability the bridge
    needs (idempotent, acks=all, the same linger), writing the same bytes with the same keys;
(c) the bridge with its full semantics: validation of every header, records keyed by device
    with headers, each MQTT message acknowledged only after Kafka confirmed it, in order.

The publisher runs in its own process (as devices do), so it does not compete with the side
being measured for the interpreter lock. Each figure is the median of `--repeats` runs; time
runs from the publisher's (or producer's) first send to the last message delivered. Starts
its own Mosquitto and Kafka (as the tests do) unless --mqtt-url and --kafka-url are given.
Every MQTT client of a run (publisher, plain subscriber, bridge) speaks `--protocol`.
Where Linux's /proc is there it also reports the CPU µs per message of each process of the
median run (bench/cpu.py): on a small machine they all share the cores, and this says whose
cost a figure is. Writes bench/results/bridge.json (bridge-mqtt311.json for 3.1.1); prints
the ratio bridge / min(ceilings) last.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import platform
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import numpy as np
import paho.mqtt.client as paho
from confluent_kafka import Producer
from paho.mqtt.enums import CallbackAPIVersion, MQTTProtocolVersion
from rich.console import Console
from rich.table import Table

from bench.cpu import CpuMeter
from bus.bridge.bridge import Bridge
from bus.bridge.config import BridgeConfig, TopicMap
from bus.log import open_log
from bus.protocol import CodecSpec, ModelUpdate, encode_update
from bus.topics import default_prefix, update_topic

RESULTS = Path(__file__).parent / "results"
PROTOCOLS = {"5": paho.MQTTv5, "311": paho.MQTTv311}
SETTINGS = {"protocol": "5"}  # every MQTT client of a run speaks the same protocol
DEVICES = 10
DISTINCT = 200  # distinct messages per size, cycled: encoding is not what is measured
WINDOW = 1000  # publisher's un-acked messages; paho's own in-flight limit
PARTITIONS = 6
SIDES = ("mqtt", "kafka", "bridge")


def messages_for(size: int, fleet: str) -> list[tuple[str, bytes]]:
    """(device id, frame) pairs of about `size` bytes: real updates the bridge can validate."""
    out: list[tuple[str, bytes]] = []
    rng = np.random.default_rng(0)
    floats = 1
    for i in range(DISTINCT):
        device = f"dev-{i % DEVICES}"
        header = ModelUpdate(
            fleet=fleet,
            device_id=device,
            round_id="bench",
            model="m",
            base_version=0,
            num_examples=1,
            codec=CodecSpec(name="fp32"),
        )
        if i == 0:  # size the tensor so that the whole frame is `size` bytes
            probe = encode_update(header, {"w": np.zeros(1, np.float32)})[0]
            floats = max(1, (size - len(probe)) // 4 + 1)
        delta = {"w": rng.standard_normal(floats).astype(np.float32)}
        out.append((device, encode_update(header, delta)[0]))
    return out


# -- the publisher process ---------------------------------------------------------------------


def publish(
    host: str,
    port: int,
    prefix: str,
    messages: list[tuple[str, bytes]],
    count: int,
    started: Any,
    protocol: MQTTProtocolVersion,
) -> None:
    """Publish `count` messages at QoS 1, at most WINDOW un-acked; report the first send time."""
    acked = 0
    cond = threading.Condition()

    def on_publish(*_: Any) -> None:
        nonlocal acked
        with cond:
            acked += 1
            cond.notify()

    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-pub-{uuid.uuid4().hex[:6]}",
        protocol=protocol,
    )
    client.max_inflight_messages_set(WINDOW)
    client.on_publish = on_publish
    client.connect(host, port)
    client.loop_start()
    topics = {d: update_topic(prefix, d) for d, _ in messages}
    started.value = time.time()
    for i in range(count):
        device, payload = messages[i % len(messages)]
        with cond:
            while i - acked >= WINDOW:
                cond.wait(1)
        client.publish(topics[device], payload, qos=1)
    with cond:
        while acked < count:
            if not cond.wait(60):
                break
    client.loop_stop()
    client.disconnect()


def run_publisher(
    mqtt: tuple[str, int], prefix: str, messages: list[tuple[str, bytes]], count: int
) -> tuple[Any, Any]:
    # Spawned, not forked: a forked child inherits librdkafka's objects without their threads,
    # and its garbage collector destroying one crashes it mid-run (seen as a segfault).
    spawn = mp.get_context("spawn")
    started = spawn.Value("d", 0.0)
    process = spawn.Process(
        target=publish,
        args=(mqtt[0], mqtt[1], prefix, messages, count, started, PROTOCOLS[SETTINGS["protocol"]]),
        daemon=True,
    )
    process.start()
    return process, started


def join_publisher(process: Any) -> None:
    """A figure counts only if its publisher finished cleanly."""
    process.join(30)
    if process.exitcode != 0:
        raise RuntimeError(f"the publisher process ended with exit code {process.exitcode}")


def wait_started(started: Any, timeout: float = 30) -> float:
    deadline = time.monotonic() + timeout
    while started.value == 0.0:
        if time.monotonic() > deadline:
            raise RuntimeError("the publisher did not start")
        time.sleep(0.001)
    return float(started.value)


# -- (a) the MQTT ceiling ---------------------------------------------------------------------


def mqtt_ceiling(
    mqtt: tuple[str, int], messages: list[tuple[str, bytes]], count: int, timeout: float
) -> float:
    prefix = f"bench/{uuid.uuid4().hex[:8]}"
    received = 0
    last = 0.0
    done = threading.Event()

    def on_message(*_: Any) -> None:
        nonlocal received, last
        received += 1
        if received == count:
            last = time.time()
            done.set()

    subscribed = threading.Event()
    client = paho.Client(
        CallbackAPIVersion.VERSION2,
        client_id=f"bench-sub-{uuid.uuid4().hex[:6]}",
        protocol=PROTOCOLS[SETTINGS["protocol"]],
    )
    client.on_message = on_message
    client.on_subscribe = lambda *_: subscribed.set()
    client.connect(mqtt[0], mqtt[1])
    client.loop_start()
    client.subscribe(f"{prefix}/devices/+/update", qos=1)
    subscribed.wait(10)
    process, started = run_publisher(mqtt, prefix, messages, count)
    finished = done.wait(timeout)
    client.loop_stop()
    client.disconnect()
    join_publisher(process)
    if not finished:
        raise RuntimeError(f"MQTT ceiling: {received} of {count} within {timeout} s")
    return last - float(started.value)


# -- (b) the Kafka ceiling --------------------------------------------------------------------


def kafka_ceiling(
    bootstrap: str, messages: list[tuple[str, bytes]], count: int, linger_ms: int
) -> float:
    topic = f"bench-{uuid.uuid4().hex[:8]}"
    log = open_log(f"kafka://{bootstrap}")
    log.create_topics({topic: PARTITIONS})
    log.close()
    producer = Producer(
        {
            "bootstrap.servers": bootstrap,
            "enable.idempotence": True,
            "acks": "all",
            "linger.ms": linger_ms,
            "partitioner": "murmur2_random",
        }
    )
    producer.produce(topic, b"warm-up")
    producer.flush(30)
    start = time.time()
    for i in range(count):
        device, payload = messages[i % len(messages)]
        while True:
            try:
                producer.produce(topic, payload, key=device.encode())
                break
            except BufferError:
                producer.poll(0.01)
        producer.poll(0)
    left = producer.flush(120)
    if left:
        raise RuntimeError(f"Kafka ceiling: {left} records unconfirmed")
    return time.time() - start


# -- (c) the bridge ---------------------------------------------------------------------------


def bridge_run(
    mqtt_url: str,
    mqtt: tuple[str, int],
    kafka_url: str,
    size: int,
    count: int,
    timeout: float,
    linger_ms: int,
) -> float:
    tag = uuid.uuid4().hex[:8]
    config = BridgeConfig(
        mqtt_url=f"{mqtt_url}?protocol={SETTINGS['protocol']}",
        log_url=kafka_url,
        fleet=f"bench{tag}",
        client_id=f"bench-bridge-{tag}",
        topics=TopicMap(update=f"u-{tag}", data=f"d-{tag}", status=f"s-{tag}", dlq=f"dlq-{tag}"),
        partitions=PARTITIONS,
        downlink=False,
        kafka_linger_ms=linger_ms,
    )
    bridge = Bridge(config).start()
    forwarded: Callable[[], float] = lambda: (  # noqa: E731
        bridge.metrics.registry.get_sample_value("bridge_forwarded_total", {"channel": "update"})
        or 0.0
    )
    try:
        for _ in range(50):  # let the subscription settle
            bridge.step()
        messages = messages_for(size, config.fleet)
        process, started = run_publisher(mqtt, default_prefix(config.fleet), messages, count)
        deadline = time.monotonic() + timeout
        while forwarded() < count:
            if time.monotonic() > deadline:
                raise RuntimeError(
                    f"bridge: {forwarded():.0f} of {count} within {timeout} s "
                    f"(in flight {len(bridge.uplink.acks)}, mqtt connected "
                    f"{bridge.mqtt.connected}, publisher alive {process.is_alive()} "
                    f"(exit code {process.exitcode}), "
                    f"paho wants to write {bridge.mqtt._paho.want_write()})"
                )
            for _ in range(100):
                bridge.step()
        end = time.time()
        t0 = wait_started(started)
        for _ in range(100):  # let the last acks out before the publisher is joined
            bridge.step()
        join_publisher(process)
        return end - t0
    finally:
        bridge.close()


# -- the run ----------------------------------------------------------------------------------


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--count-1k", type=int, default=20_000)
    parser.add_argument("--count-100k", type=int, default=2_000)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--timeout", type=float, default=120.0, help="per measurement")
    parser.add_argument(
        "--linger-ms",
        type=int,
        default=BridgeConfig.model_fields["kafka_linger_ms"].default,
        help="producer linger of both the bridge and the Kafka ceiling (the same settings)",
    )
    parser.add_argument(
        "--protocol", choices=sorted(PROTOCOLS), default="5", help="MQTT version of every client"
    )
    parser.add_argument("--mqtt-url", help="an existing broker (mqtt://host:port)")
    parser.add_argument("--kafka-url", help="an existing Kafka (kafka://host:port)")
    args = parser.parse_args()
    SETTINGS["protocol"] = args.protocol
    results = RESULTS / ("bridge.json" if args.protocol == "5" else "bridge-mqtt311.json")
    console = Console()
    with ExitStack() as stack:
        mqtt_url, kafka_url = args.mqtt_url, args.kafka_url
        meter = CpuMeter()
        if not (mqtt_url and kafka_url):
            mqtt_url, kafka_url, meter.services = start_services(stack, console)
        with console.status("warming up (the Kafka broker's JIT, the caches)"):
            host, port = mqtt_url.removeprefix("mqtt://").rsplit(":", 1)
            bridge_run(mqtt_url, (host, int(port)), kafka_url, 1024, 5000, 120, args.linger_ms)
        sizes = (("1 KB", 1024, args.count_1k), ("100 KB", 100 * 1024, args.count_100k))
        rows = [
            measure_size(label, size, count, args, mqtt_url, kafka_url, console, meter)
            for label, size, count in sizes
        ]
    report(console, rows)
    results.parent.mkdir(parents=True, exist_ok=True)
    results.write_text(
        json.dumps(
            {
                "machine": {"cpus": mp.cpu_count(), "python": platform.python_version()},
                "mqtt_protocol": args.protocol,
                "repeats": args.repeats,
                "linger_ms": args.linger_ms,
                "rows": rows,
            },
            indent=2,
        )
        + "\n"
    )
    console.print(f"wrote {results}")
    ratios = ", ".join(f"{r['size']} {r['ratio']:.2f}" for r in rows)
    console.print(f"ratio bridge / min(ceilings): {ratios} (goal ≥ 0.7)")


def measure_size(
    label: str,
    size: int,
    count: int,
    args: argparse.Namespace,
    mqtt_url: str,
    kafka_url: str,
    console: Console,
    meter: CpuMeter,
) -> dict[str, Any]:
    host, port = mqtt_url.removeprefix("mqtt://").rsplit(":", 1)
    mqtt = (host, int(port))
    bootstrap = kafka_url.removeprefix("kafka://")
    messages = messages_for(size, "bench")
    nbytes = len(messages[0][1])
    sides: dict[str, Callable[[], float]] = {
        "mqtt": lambda: mqtt_ceiling(mqtt, messages, count, args.timeout),
        "kafka": lambda: kafka_ceiling(bootstrap, messages, count, args.linger_ms),
        "bridge": lambda: bridge_run(
            mqtt_url, mqtt, kafka_url, size, count, args.timeout, args.linger_ms
        ),
    }
    result: dict[str, Any] = {"size": label, "bytes": nbytes, "messages": count}
    for side, measure in sides.items():
        runs: list[tuple[float, dict[str, float]]] = []
        with console.status(f"{label}: {side}"):
            for _ in range(args.repeats):
                meter.start()
                seconds = measure()
                runs.append((seconds, meter.per_message(count)))
        seconds, cpu = sorted(runs, key=lambda run: run[0])[len(runs) // 2]  # the median run
        result[side] = {
            "seconds": round(seconds, 4),
            "msg_per_s": round(count / seconds, 1),
            "mb_per_s": round(count * nbytes / seconds / 1e6, 2),
            "cpu_us_per_msg": cpu,
        }
    ceiling = min(result["mqtt"]["msg_per_s"], result["kafka"]["msg_per_s"])
    result["ratio"] = round(result["bridge"]["msg_per_s"] / ceiling, 3)
    return result


def start_services(stack: ExitStack, console: Console) -> tuple[str, str, dict[str, int]]:
    from fleetlearn.services.kafka import KafkaService
    from fleetlearn.services.mosquitto import MosquittoService

    workdir = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-bridge-")))
    with console.status("starting Mosquitto and Kafka"):
        mosquitto = MosquittoService(workdir / "mosquitto", autosave_interval=60)
        mosquitto.start()
        stack.callback(mosquitto.stop)
        kafka = KafkaService(workdir / "kafka")
        kafka.start()
        stack.callback(kafka.stop)
    pids = {
        name: service.process.pid
        for name, service in (("mosquitto", mosquitto), ("kafka", kafka))
        if service.process
    }
    return mosquitto.url, kafka.url, {name: pid for name, pid in pids.items() if pid}


def report(console: Console, rows: list[dict[str, Any]]) -> None:
    table = Table(title="bridge vs ceilings (QoS 1, loopback)")
    for column in ("size", "side", "msg/s", "MB/s", "seconds"):
        table.add_column(column, justify="right" if column != "side" else "left")
    for row in rows:
        for side in SIDES:
            figure = row[side]
            table.add_row(
                row["size"],
                {"mqtt": "MQTT ceiling (paho sub)", "kafka": "Kafka ceiling (producer)"}.get(
                    side, "bridge (acks after Kafka)"
                ),
                f"{figure['msg_per_s']:,.0f}",
                f"{figure['mb_per_s']:,.1f}",
                f"{figure['seconds']:.2f}",
            )
    console.print(table)
    parts = sorted({part for row in rows for side in SIDES for part in row[side]["cpu_us_per_msg"]})
    if not parts:
        return
    cpu = Table(title="CPU µs per message, by process (the median run)")
    for column in ("size", "side", *parts, "total"):
        cpu.add_column(column, justify="right" if column != "side" else "left")
    for row in rows:
        for side in SIDES:
            used = row[side]["cpu_us_per_msg"]
            cpu.add_row(
                row["size"],
                side,
                *(f"{used[part]:,.0f}" if part in used else "" for part in parts),
                f"{sum(used.values()):,.0f}",
            )
    console.print(cpu)


if __name__ == "__main__":
    main()
