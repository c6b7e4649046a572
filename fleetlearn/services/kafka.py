"""A real Apache Kafka broker (KRaft, one node) from the Maven Central jars, on loopback ports."""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from fleetlearn.services.base import ServiceError, ServiceProcess, free_port, tail
from fleetlearn.services.install import ensure_kafka_libs

# One node that is both broker and controller. Internal topics get one replica (there is one
# node), and consumer groups start at once instead of waiting 3 s for more members.
PROPERTIES_TEMPLATE = """\
process.roles=broker,controller
node.id=1
controller.quorum.bootstrap.servers={host}:{controller_port}
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
controller.listener.names=CONTROLLER
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
inter.broker.listener.name=PLAINTEXT
log.dirs={data}
num.partitions={partitions}
auto.create.topics.enable=true
offsets.topic.replication.factor=1
offsets.topic.num.partitions=4
transaction.state.log.replication.factor=1
transaction.state.log.min.isr=1
share.coordinator.state.topic.replication.factor=1
share.coordinator.state.topic.min.isr=1
group.initial.rebalance.delay.ms=0
message.max.bytes={max_message_bytes}
log.retention.hours=168
"""

LOG4J2 = """\
Configuration:
  status: warn
  Appenders:
    Console:
      name: STDOUT
      PatternLayout:
        pattern: "[%d] %p %m (%c)%n"
  Loggers:
    Root:
      level: WARN
      AppenderRef:
        - ref: STDOUT
    Logger:
      - name: kafka.server.BrokerServer
        level: INFO
"""

JAVA_OPTS = [
    "-Xms1g",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:G1HeapRegionSize=16m",
    "-Djava.awt.headless=true",
]


@dataclass
class KafkaService:
    workdir: Path
    host: str = "127.0.0.1"
    port: int = 0
    partitions: int = 3
    max_message_bytes: int = 1048588
    process: ServiceProcess | None = field(default=None, init=False)

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def url(self) -> str:
        return f"kafka://{self.bootstrap}"

    def env(self) -> dict[str, str]:
        return {"FLEETLEARN_KAFKA_URL": self.url}

    def _classpath(self) -> str:
        return str(ensure_kafka_libs() / "*")

    def _write_config(self, controller_port: int) -> Path:
        data = self.workdir / "data"
        config = self.workdir / "server.properties"
        config.write_text(
            PROPERTIES_TEMPLATE.format(
                host=self.host,
                port=self.port,
                controller_port=controller_port,
                data=data,
                partitions=self.partitions,
                max_message_bytes=self.max_message_bytes,
            )
        )
        (self.workdir / "log4j2.yaml").write_text(LOG4J2)
        return config

    def _format(self, config: Path) -> None:
        if (self.workdir / "data" / "meta.properties").exists():
            return  # a restart keeps its data
        java = shutil.which("java") or "java"
        argv = [
            java,
            "-cp",
            self._classpath(),
            "kafka.tools.StorageTool",
            "format",
            "--standalone",
            f"--cluster-id={_cluster_id()}",  # an id may start with "-"; "=" keeps it a value
            "-c",
            str(config),
        ]
        result = subprocess.run(argv, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise ServiceError(f"formatting Kafka storage failed:\n{result.stdout}{result.stderr}")

    def start(self, timeout: float = 60.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.port == 0:
            self.port = free_port(self.host)
        config = self._write_config(free_port(self.host))
        self._format(config)
        java = shutil.which("java") or "java"
        argv = [
            java,
            *JAVA_OPTS,
            f"-Dlog4j2.configurationFile={self.workdir / 'log4j2.yaml'}",
            "-cp",
            self._classpath(),
            "kafka.Kafka",
            str(config),
        ]
        self.process = ServiceProcess("kafka", argv, self.workdir / "kafka.log")
        self.process.start()
        self.process.wait_ready(self.host, self.port, timeout)
        self._wait_started(timeout)

    def _wait_started(self, timeout: float) -> None:
        """The port opens before the broker serves metadata; its log says when it is up."""
        log = self.workdir / "kafka.log"
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = log.read_text(errors="replace") if log.exists() else ""
            if "Kafka Server started" in text or "Transition from STARTING to STARTED" in text:
                return
            if self.process and not self.process.alive():
                raise ServiceError(f"kafka exited during start:\n{tail(log)}")
            time.sleep(0.2)
        raise ServiceError(f"kafka did not report started within {timeout:.0f} s:\n{tail(log)}")

    def stop(self) -> None:
        if self.process:
            self.process.stop(timeout=30)

    def kill(self) -> None:
        if self.process:
            self.process.kill()


def _cluster_id() -> str:
    """Kafka's cluster ids are 16 random bytes in URL-safe base64 without padding."""
    import base64

    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
