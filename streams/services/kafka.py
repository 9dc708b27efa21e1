"""A local Apache Kafka 4.4 broker (KRaft, one combined node) on 127.0.0.1, without Docker.

The jars come from Maven Central through the small pom next to this module, copied once into
`<state>/kafka/libs`; the broker's storage is formatted `--standalone` and its state topics
use replication factor 1, so idempotent and transactional producers work on one node.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import subprocess
import time
from dataclasses import dataclass
from pathlib import Path

from streams.errors import ServiceError
from streams.services import process
from streams.settings import Settings

KAFKA_MAIN = "kafka.Kafka"
_HERE = Path(__file__).resolve().parent / "kafka"
_MIN_JAVA = 17
# The broker outlives the call that started it (and often this process): its handle is kept
# here so that it is not garbage-collected, with a ResourceWarning, while the broker runs.
_STARTED: list[subprocess.Popen[bytes]] = []


@dataclass(frozen=True)
class KafkaStatus:
    running: bool
    bootstrap: str
    pid: int | None
    log: Path
    started_by_us: bool


class LocalKafka:
    """Install, start, stop and report the project's own broker."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.root = settings.state_dir / "kafka"
        self.libs = self.root / "libs"
        self.data = self.root / "data"
        self.log = self.root / "kafka.log"
        self.state_file = self.root / "state.json"
        self.port = settings.local_kafka_port
        self.controller_port = settings.local_kafka_port + 1
        self.bootstrap = f"127.0.0.1:{self.port}"

    # --- install -------------------------------------------------------------------------
    def ensure_java(self) -> str:
        """Return the java binary, installing Debian's JRE 17 when missing and possible."""
        if not shutil.which("java"):
            process.apt_install(["openjdk-17-jre-headless"], "Kafka needs Java 17 or newer")
        java = shutil.which("java")
        if java is None:
            msg = "Kafka needs Java 17 or newer, and no `java` is on PATH"
            raise ServiceError(msg)
        out = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
        match = re.search(r'version "(\d+)(?:\.(\d+))?', out.stderr + out.stdout)
        major = int(match.group(1)) if match else 0
        if major == 1 and match and match.group(2):  # "1.8.0" style
            major = int(match.group(2))
        if major < _MIN_JAVA:
            msg = f"Kafka 4 needs Java {_MIN_JAVA} or newer; `java -version` says {major}"
            raise ServiceError(msg)
        return java

    def ensure_jars(self) -> None:
        """Copy Kafka's runtime jars from Maven Central once (a marker says it finished)."""
        marker = self.libs / ".complete"
        if marker.exists():
            return
        if not shutil.which("mvn"):
            process.apt_install(["maven"], "assembling Kafka from Maven Central needs Maven")
        build = self.root / "build"
        build.mkdir(parents=True, exist_ok=True)
        shutil.copy(_HERE / "pom.xml", build / "pom.xml")
        if self.libs.exists():
            shutil.rmtree(self.libs)
        print("downloading Apache Kafka 4.4.0 jars from Maven Central (once)…", flush=True)
        started = time.monotonic()
        process.run(
            [
                "mvn",
                "-q",
                "-B",
                f"-Dmaven.repo.local={self.root / 'm2'}",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={self.libs}",
                "-DincludeScope=runtime",
            ],
            cwd=build,
        )
        marker.write_text(f"{time.monotonic() - started:.1f}s\n")

    # --- lifecycle -----------------------------------------------------------------------
    def _write_config(self) -> Path:
        config = self.root / "server.properties"
        p, c = self.port, self.controller_port
        lines = [
            "process.roles=broker,controller",
            "node.id=1",
            f"controller.quorum.bootstrap.servers=127.0.0.1:{c}",
            f"listeners=PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}",
            f"advertised.listeners=PLAINTEXT://127.0.0.1:{p},CONTROLLER://127.0.0.1:{c}",
            "controller.listener.names=CONTROLLER",
            "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "inter.broker.listener.name=PLAINTEXT",
            f"log.dirs={self.data}",
            "num.partitions=1",
            "offsets.topic.replication.factor=1",
            "offsets.topic.num.partitions=8",
            "transaction.state.log.replication.factor=1",
            "transaction.state.log.min.isr=1",
            "transaction.state.log.num.partitions=8",
            "share.coordinator.state.topic.replication.factor=1",
            "share.coordinator.state.topic.min.isr=1",
            "group.initial.rebalance.delay.ms=0",
            "auto.create.topics.enable=true",
            "log.cleaner.backoff.ms=1000",
            "log.segment.bytes=67108864",
        ]
        config.write_text("\n".join(lines) + "\n")
        return config

    def _classpath(self) -> str:
        return f"{self.libs}/*"

    def _log4j(self) -> str:
        return f"-Dlog4j2.configurationFile={_HERE / 'log4j2.properties'}"

    def _format(self, java: str, config: Path) -> None:
        formatted_for = process.read_json(self.root / "formatted.json") or {}
        if (self.data / "meta.properties").exists() and formatted_for.get("port") == self.port:
            return
        shutil.rmtree(self.data, ignore_errors=True)
        cp = ["-cp", self._classpath()]
        uuid = process.run([java, self._log4j(), *cp, "kafka.tools.StorageTool", "random-uuid"])
        cluster_id = uuid.stdout.strip().splitlines()[-1]
        process.run(
            [
                java,
                self._log4j(),
                *cp,
                "kafka.tools.StorageTool",
                "format",
                "--standalone",
                "-t",
                cluster_id,
                "-c",
                str(config),
            ]
        )
        process.write_json(self.root / "formatted.json", {"port": self.port, "id": cluster_id})

    def _recorded_pid(self) -> int | None:
        state = process.read_json(self.state_file)
        pid = state.get("pid") if state else None
        if isinstance(pid, int) and process.pid_alive(pid, str(self.root)):
            return pid
        return None

    def up(self, timeout: float = 90.0) -> KafkaStatus:
        """Start the broker unless ours already runs; return once it answers metadata."""
        pid = self._recorded_pid()
        if pid is not None:
            wait_for_broker(self.bootstrap, timeout, self.log)
            return KafkaStatus(True, self.bootstrap, pid, self.log, started_by_us=False)
        if process.port_open("127.0.0.1", self.port) or process.port_open(
            "127.0.0.1", self.controller_port
        ):
            msg = (
                f"port {self.port} or {self.controller_port} on 127.0.0.1 is taken by a process "
                "this project did not start; set BANDIT_LOCAL_KAFKA_PORT to a free port, or "
                "KAFKA_BOOTSTRAP_SERVERS to use that broker"
            )
            raise ServiceError(msg)
        java = self.ensure_java()
        self.ensure_jars()
        config = self._write_config()
        self._format(java, config)
        cmd = [
            java,
            f"-Xmx{self.settings.kafka_heap}",
            f"-Xms{self.settings.kafka_heap}",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
            self._log4j(),
            "-cp",
            self._classpath(),
            KAFKA_MAIN,
            str(config),
        ]
        started = time.monotonic()
        with self.log.open("ab") as log:
            proc = subprocess.Popen(
                cmd,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        _STARTED.append(proc)
        process.write_json(self.state_file, {"pid": proc.pid, "port": self.port})
        try:
            wait_for_broker(self.bootstrap, timeout, self.log, proc)
        except ServiceError:
            process.terminate(proc.pid, str(self.root))
            raise
        process.write_json(
            self.state_file,
            {"pid": proc.pid, "port": self.port, "ready_s": round(time.monotonic() - started, 2)},
        )
        return KafkaStatus(True, self.bootstrap, proc.pid, self.log, started_by_us=True)

    def down(self) -> bool:
        """Stop the broker if we started it (by its recorded PID); True if one was stopped."""
        pid = self._recorded_pid()
        stopped = pid is not None and process.terminate(pid, str(self.root), timeout=30)
        for proc in [p for p in _STARTED if p.pid == pid]:  # our own child: reap it
            proc.wait(10)
            _STARTED.remove(proc)
        with contextlib.suppress(FileNotFoundError):
            self.state_file.unlink()
        return stopped

    def status(self) -> KafkaStatus:
        pid = self._recorded_pid()
        return KafkaStatus(pid is not None, self.bootstrap, pid, self.log, pid is not None)


async def broker_answers(bootstrap: str, timeout_ms: int = 3000) -> bool:
    """True when a broker at `bootstrap` answers a metadata request and names itself."""
    from aiokafka import AIOKafkaClient  # local import: the CLI starts faster without it

    client = AIOKafkaClient(bootstrap_servers=bootstrap, request_timeout_ms=timeout_ms)
    try:
        await client.bootstrap()
        return bool(client.cluster.brokers())
    except Exception:
        return False
    finally:
        await client.close()


def wait_for_broker(
    bootstrap: str, timeout: float, log: Path | None, proc: subprocess.Popen[bytes] | None = None
) -> None:
    """Block until the broker answers metadata; fail early if its process died."""

    def ready() -> bool:
        if proc is not None and proc.poll() is not None:
            msg = f"Kafka exited with code {proc.returncode} while starting; see {log}"
            raise ServiceError(msg)
        return process.port_open(*_host_port(bootstrap)) and asyncio.run(broker_answers(bootstrap))

    process.wait_until(ready, timeout, f"Kafka at {bootstrap}", log)


def _host_port(bootstrap: str) -> tuple[str, int]:
    first = bootstrap.split(",")[0].strip()
    host, _, port = first.rpartition(":")
    return host.strip("[]") or "127.0.0.1", int(port)
