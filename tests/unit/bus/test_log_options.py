"""Log URLs and options become typed settings, and Kafka's librdkafka config, without a broker."""

from __future__ import annotations

import pytest

from bus.errors import ConfigError
from bus.log.kafka_config import KafkaOptions, kafka_config, parse_kafka_url


def test_several_brokers_credentials_and_query_options() -> None:
    bootstrap, options = parse_kafka_url(
        "kafka://svc:s3cret@10.0.0.1:9092,10.0.0.2:9093?client_id=bridge-1&linger_ms=20",
        {"security_protocol": "sasl_ssl", "sasl_mechanism": "SCRAM-SHA-512"},
    )
    assert bootstrap == "10.0.0.1:9092,10.0.0.2:9093"
    assert (options.client_id, options.linger_ms) == ("bridge-1", 20)
    assert (options.sasl_username, options.sasl_password) == ("svc", "s3cret")
    config = kafka_config(bootstrap, options, "admin")
    assert config["security.protocol"] == "sasl_ssl"
    assert config["sasl.mechanism"] == "SCRAM-SHA-512"
    assert "enable.idempotence" not in config


def test_bad_kafka_urls_and_options_name_the_problem() -> None:
    with pytest.raises(ConfigError, match="host:port"):
        parse_kafka_url("kafka://10.0.0.1", {})
    with pytest.raises(ConfigError, match=r"\*\*\*"):  # the password never shows
        parse_kafka_url("kafka://u:hunter2@10.0.0.1:x", {})
    with pytest.raises(ConfigError, match="unknown option"):
        parse_kafka_url("kafka://10.0.0.1:9092?acks=1", {})
    with pytest.raises(ConfigError, match="linger_ms"):
        parse_kafka_url("kafka://10.0.0.1:9092?linger_ms=soon", {})
    with pytest.raises(ConfigError, match="security_protocol"):
        KafkaOptions(security_protocol="tls")


def test_producer_and_consumer_settings_the_system_relies_on() -> None:
    options = KafkaOptions(message_max_bytes=2_000_000, extra={"compression.type": "zstd"})
    producer = kafka_config("127.0.0.1:9092", options, "producer")
    assert producer["enable.idempotence"] is True
    assert producer["acks"] == "all"
    assert producer["partitioner"] == "murmur2_random"
    assert producer["message.max.bytes"] == 2_000_000
    assert producer["compression.type"] == "zstd"
    consumer = kafka_config(
        "127.0.0.1:9092", options, "consumer", group_id="g", auto_offset_reset="latest"
    )
    assert consumer["group.id"] == "g"
    assert consumer["enable.auto.commit"] is False
    assert consumer["enable.auto.offset.store"] is False
    assert consumer["auto.offset.reset"] == "latest"
    assert consumer["isolation.level"] == "read_committed"
    assert consumer["heartbeat.interval.ms"] < consumer["session.timeout.ms"]
