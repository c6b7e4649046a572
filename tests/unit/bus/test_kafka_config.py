"""Kafka options for Amazon MSK: IAM authentication and the replication factor, without a broker.

The IAM token is made for real (aws-msk-iam-sasl-signer-python presigns locally) from fake
static credentials, with the network closed to this process; its signature is recomputed here
from the secret key, and librdkafka itself is shown to accept it as a token.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, quote, urlsplit

import pytest

from bus.errors import ConfigError, LogError
from bus.log.kafka_config import KafkaOptions, MskIamToken, kafka_config, parse_kafka_url

REPO = Path(__file__).resolve().parents[3]
ACCESS_KEY = "AKIAIOSFODNN7EXAMPLE"
SECRET_KEY = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY"
IAM_URL = "kafka://b-1.msk.example:9098,b-2.msk.example:9098?security_protocol=sasl_ssl&aws_iam=true&aws_region=eu-west-1"
AWS_VARIABLES = (
    "AWS_ACCESS_KEY_ID",
    "AWS_SECRET_ACCESS_KEY",
    "AWS_SESSION_TOKEN",
    "AWS_SECURITY_TOKEN",
    "AWS_PROFILE",
    "AWS_DEFAULT_PROFILE",
    "AWS_REGION",
    "AWS_DEFAULT_REGION",
    "AWS_ROLE_ARN",
    "AWS_WEB_IDENTITY_TOKEN_FILE",
    "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI",
    "AWS_CONTAINER_CREDENTIALS_FULL_URI",
)


@pytest.fixture
def no_aws(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No AWS credentials anywhere: no variables, no files, no instance metadata."""
    for name in AWS_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", str(tmp_path / "missing-config"))
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", str(tmp_path / "missing-credentials"))
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")


@pytest.fixture
def fake_aws(no_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """Static credentials in the environment, as on a host without an instance role."""
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", ACCESS_KEY)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET_KEY)
    monkeypatch.setenv("AWS_DEFAULT_REGION", "us-east-1")  # not the cluster's: must not be used


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Close the network to Python code in this process; yields the attempts it refused."""
    attempts: list[str] = []

    def refuse(*args: Any, **kwargs: Any) -> Any:
        attempts.append(repr(args[:2]))
        raise OSError("network closed by the test")

    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    return attempts


def closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
    return port


def decode_token(token: str) -> str:
    return base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)).decode()


def expected_signature(url: str, secret: str) -> str:
    """SigV4 of a presigned GET with an empty body, computed from AWS's published algorithm."""
    parts = urlsplit(url)
    params = parse_qsl(parts.query, keep_blank_values=True)
    signed = sorted((k, v) for k, v in params if k not in {"X-Amz-Signature", "User-Agent"})
    query = "&".join(f"{quote(k, safe='-_.~')}={quote(v, safe='-_.~')}" for k, v in signed)
    empty_body = hashlib.sha256(b"").hexdigest()
    request = "\n".join(
        ["GET", parts.path or "/", query, f"host:{parts.hostname}", "", "host", empty_body]
    )
    values = dict(params)
    scope = values["X-Amz-Credential"].split("/", 1)[1]
    to_sign = "\n".join(
        [
            "AWS4-HMAC-SHA256",
            values["X-Amz-Date"],
            scope,
            hashlib.sha256(request.encode()).hexdigest(),
        ]
    )
    key = f"AWS4{secret}".encode()
    for part in scope.split("/"):  # date, region, service, "aws4_request"
        key = hmac.new(key, part.encode(), hashlib.sha256).digest()
    return hmac.new(key, to_sign.encode(), hashlib.sha256).hexdigest()


# -- IAM: options and librdkafka keys ---------------------------------------------------------


def test_iam_url_gives_oauthbearer_over_tls_with_the_token_callback(fake_aws: None) -> None:
    bootstrap, options = parse_kafka_url(IAM_URL, {})
    assert bootstrap == "b-1.msk.example:9098,b-2.msk.example:9098"
    assert (options.aws_iam, options.aws_region) == (True, "eu-west-1")
    for role in ("admin", "producer", "consumer"):
        config = kafka_config(bootstrap, options, role, group_id="g")
        assert config["security.protocol"] == "sasl_ssl"
        assert config["sasl.mechanism"] == "OAUTHBEARER"
        assert isinstance(config["oauth_cb"], MskIamToken)
        assert config["oauth_cb"].region == "eu-west-1"
        # No static credentials, and no unsecured-JWT settings for librdkafka's own handler.
        assert not {k for k in config if k.startswith(("sasl.username", "sasl.password"))}
        assert not {k for k in config if k.startswith("sasl.oauthbearer.")}
    producer = kafka_config(bootstrap, options, "producer")
    assert (producer["acks"], producer["enable.idempotence"]) == ("all", True)


def test_iam_options_come_from_config_as_well_as_the_url(fake_aws: None) -> None:
    _, options = parse_kafka_url(
        "kafka://b-1.msk.example:9098",
        {
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": "oauthbearer",
            "aws_iam": True,
            "aws_region": "us-gov-west-1",
        },
    )
    config = kafka_config("b-1.msk.example:9098", options, "admin")
    assert config["security.protocol"] == "sasl_ssl"
    assert config["sasl.mechanism"] == "OAUTHBEARER"
    assert config["oauth_cb"].region == "us-gov-west-1"
    _, from_url = parse_kafka_url(IAM_URL.replace("aws_iam=true", "aws_iam=1"), {})
    assert from_url.aws_iam is True


def test_the_token_is_a_presigned_connect_url_for_the_region_made_offline(
    fake_aws: None, offline: list[str]
) -> None:
    before = time.time()
    token, expiry = MskIamToken("eu-west-1")(None)
    assert offline == []  # nothing tried the network
    assert "=" not in token
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    url = decode_token(token)
    parts = urlsplit(url)
    assert (parts.scheme, parts.hostname, parts.path) == (
        "https",
        "kafka.eu-west-1.amazonaws.com",
        "/",
    )
    query = dict(parse_qsl(parts.query))
    assert query["Action"] == "kafka-cluster:Connect"
    assert query["X-Amz-Algorithm"] == "AWS4-HMAC-SHA256"
    credential = query["X-Amz-Credential"].split("/")
    assert credential[0] == ACCESS_KEY
    assert credential[2:] == ["eu-west-1", "kafka-cluster", "aws4_request"]
    assert query["X-Amz-SignedHeaders"] == "host"
    assert query["X-Amz-Expires"] == "900"
    assert "X-Amz-Security-Token" not in query  # static keys carry no session token
    assert query["User-Agent"].startswith("aws-msk-iam-sasl-signer-python/")
    assert query["X-Amz-Signature"] == expected_signature(url, SECRET_KEY)
    # Seconds since the epoch, as confluent-kafka wants (the signer gives milliseconds):
    # 15 minutes after the signing time, which is truncated to the second.
    assert isinstance(expiry, float)
    assert before + 899 <= expiry <= time.time() + 900


def test_temporary_credentials_put_their_session_token_in_the_url(
    fake_aws: None, monkeypatch: pytest.MonkeyPatch, offline: list[str]
) -> None:
    monkeypatch.setenv("AWS_SESSION_TOKEN", "FwoGZXIvYXdzEXAMPLE")
    token, _ = MskIamToken("ap-southeast-2")(None)
    query = dict(parse_qsl(urlsplit(decode_token(token)).query))
    assert query["X-Amz-Security-Token"] == "FwoGZXIvYXdzEXAMPLE"
    assert query["X-Amz-Credential"].split("/")[2] == "ap-southeast-2"
    assert offline == []


def test_without_credentials_the_token_fails_naming_the_cause(
    no_aws: None, offline: list[str]
) -> None:
    token = MskIamToken("eu-west-1")
    with pytest.raises(LogError, match="no AWS credentials found"):
        token(None)
    assert token.last_error is not None
    assert "eu-west-1" in token.last_error


def test_librdkafka_accepts_the_token(fake_aws: None) -> None:
    """confluent-kafka (>= 2.13) waits in the constructor until the callback's token is set and
    fails after 10 s otherwise: an expiry in milliseconds or in the past would not do."""
    from confluent_kafka import Producer

    _, options = parse_kafka_url(IAM_URL, {})
    started = time.monotonic()
    producer = Producer(kafka_config(f"127.0.0.1:{closed_port()}", options, "producer"))
    assert time.monotonic() - started < 8
    assert producer.flush(0) == 0


def test_a_client_without_a_token_is_a_log_error_with_the_reason(no_aws: None) -> None:
    from bus.log.kafka import KafkaLog

    bootstrap = f"127.0.0.1:{closed_port()}"
    _, options = parse_kafka_url(
        f"kafka://{bootstrap}?security_protocol=sasl_ssl&aws_iam=1", {"aws_region": "eu-west-1"}
    )
    with pytest.raises(LogError, match=r"admin client for 127\.0\.0\.1.*no AWS credentials found"):
        KafkaLog(bootstrap, options)


def test_a_missing_signer_names_the_extra(fake_aws: None, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "aws_msk_iam_sasl_signer", None)  # import now fails
    _, options = parse_kafka_url(IAM_URL, {})  # options alone need no signer
    with pytest.raises(ConfigError, match=r"aws-msk-iam-sasl-signer-python.*fleetlearn\[cloud\]"):
        kafka_config("b-1.msk.example:9098", options, "admin")


def test_options_load_without_confluent_kafka_or_the_signer_and_devices_never_import_it() -> None:
    code = (
        "import sys\n"
        "blocked = ('confluent_kafka', 'aws_msk_iam_sasl_signer', 'boto3', 'botocore', 'torch')\n"
        "for name in blocked:\n"
        "    sys.modules[name] = None\n"
        "from bus.log.kafka_config import parse_kafka_url\n"
        f"_, options = parse_kafka_url({IAM_URL!r}, {{}})\n"
        "assert options.aws_iam and options.replication_factor == -1\n"
        "import fleetlearn.edge_cli, edge_agent.agent\n"
        "sys.modules.pop('aws_msk_iam_sasl_signer')\n"
        "assert not [m for m in sys.modules if m.startswith('aws_msk_iam_sasl_signer')]\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stderr


# -- IAM: what is refused -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "overrides", "problem"),
    [
        (
            "kafka://b:9098?aws_iam=true&aws_region=eu-west-1",
            {},
            r"aws_iam needs security_protocol=sasl_ssl .* got 'plaintext'",
        ),
        (
            "kafka://b:9098?aws_iam=true&aws_region=eu-west-1&security_protocol=ssl",
            {},
            r"aws_iam needs security_protocol=sasl_ssl .* got 'ssl'",
        ),
        (
            "kafka://b:9098?aws_iam=true&security_protocol=sasl_ssl",
            {},
            r"aws_iam needs aws_region",
        ),
        (
            "kafka://b:9098?aws_iam=true&security_protocol=sasl_ssl&aws_region=Ireland",
            {},
            r"aws_region must be a region name like eu-west-1, got 'Ireland'",
        ),
        (
            IAM_URL + "&sasl_mechanism=SCRAM-SHA-512",
            {},
            r"OAUTHBEARER, not sasl_mechanism=SCRAM-SHA-512",
        ),
        (
            IAM_URL.replace("kafka://", "kafka://svc:s3cret@"),
            {},
            r"aws_iam takes no username or password",
        ),
        (IAM_URL, {"sasl_username": "svc"}, r"aws_iam takes no username or password"),
        (IAM_URL, {"sasl_password": "s3cret"}, r"aws_iam takes no username or password"),
        (
            IAM_URL,
            {"extra": {"sasl.mechanism": "PLAIN", "oauth_cb": print}},
            r"aws_iam sets \['oauth_cb', 'sasl.mechanism'\] itself: remove them from extra",
        ),
        (
            "kafka://b:9098?security_protocol=sasl_ssl&aws_region=eu-west-1",
            {},
            r"aws_region is used only with aws_iam=true",
        ),
        (
            "kafka://b:9098?security_protocol=sasl_ssl&sasl_mechanism=OAUTHBEARER",
            {},
            r"sasl_mechanism=OAUTHBEARER has no token source: add aws_iam=true",
        ),
        (IAM_URL.replace("aws_iam=true", "aws_iam=maybe"), {}, r"'aws_iam' must be true or false"),
    ],
)
def test_invalid_iam_combinations_name_the_problem(
    url: str, overrides: dict[str, Any], problem: str
) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_kafka_url(url, overrides)


def test_every_iam_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        KafkaOptions(aws_iam=True, sasl_username="svc", sasl_mechanism="PLAIN")
    message = str(caught.value)
    for problem in (
        "security_protocol=sasl_ssl",
        "aws_region",
        "not sasl_mechanism=PLAIN",
        "username",
    ):
        assert problem in message


def test_oauthbearer_with_its_own_token_source_is_left_alone() -> None:
    options = KafkaOptions(
        security_protocol="sasl_ssl",
        sasl_mechanism="OAUTHBEARER",
        extra={"sasl.oauthbearer.method": "oidc"},
    )
    config = kafka_config("b:9093", options, "admin")
    assert config["sasl.oauthbearer.method"] == "oidc"
    assert "oauth_cb" not in config


# -- replication factor -----------------------------------------------------------------------


def test_replication_factor_defaults_to_the_brokers_and_is_set_per_deployment() -> None:
    assert KafkaOptions().replication_factor == -1
    assert parse_kafka_url("kafka://b:9092", {})[1].replication_factor == -1
    assert parse_kafka_url("kafka://b:9092?replication_factor=3", {})[1].replication_factor == 3
    overridden = parse_kafka_url("kafka://b:9092?replication_factor=3", {"replication_factor": 2})
    assert overridden[1].replication_factor == 2
    assert "replication" not in " ".join(kafka_config("b:9092", overridden[1], "admin"))


@pytest.mark.parametrize(
    ("query", "problem"),
    [
        ("replication_factor=0", r"replication_factor must be -1 .* or at least 1, got 0"),
        ("replication_factor=-2", r"replication_factor must be -1 .* or at least 1, got -2"),
        ("replication_factor=all", r"'replication_factor' must be an integer, got 'all'"),
    ],
)
def test_bad_replication_factors_are_refused(query: str, problem: str) -> None:
    with pytest.raises(ConfigError, match=problem):
        parse_kafka_url(f"kafka://b:9092?{query}", {})


def test_the_embedded_log_has_no_replication_factor(tmp_path: Path) -> None:
    from bus.log import open_log

    with pytest.raises(ConfigError, match="unknown option"):
        open_log(f"sqlite://{tmp_path}/log.db", replication_factor=3)
