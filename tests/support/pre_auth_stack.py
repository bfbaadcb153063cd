"""The stack as `stack up` ran it before service auth (a copy, for the migration test): no passwords anywhere.

`up` is idempotent and records the pid of every process it starts; `down` stops only those pids.
A service already answering on its port (started by someone else) is used and never stopped.
"""

from __future__ import annotations

import base64
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import TypeGuard
from urllib.parse import urlparse

from alignloop.core.errors import StackError
from alignloop.core.settings import CoreSettings

KAFKA_POM = """<project xmlns="http://maven.apache.org/POM/4.0.0">
  <modelVersion>4.0.0</modelVersion>
  <groupId>alignloop</groupId><artifactId>kafka-broker</artifactId><version>1</version>
  <packaging>pom</packaging>
  <dependencies>
    <dependency><groupId>org.apache.kafka</groupId><artifactId>kafka_2.13</artifactId>
      <version>{version}</version></dependency>
    <dependency><groupId>org.slf4j</groupId><artifactId>slf4j-reload4j</artifactId>
      <version>1.7.36</version></dependency>
  </dependencies>
</project>
"""

LOG4J = """log4j.rootLogger=INFO, file
log4j.appender.file=org.apache.log4j.RollingFileAppender
log4j.appender.file.File={logs}/server.log
log4j.appender.file.MaxFileSize=20MB
log4j.appender.file.MaxBackupIndex=2
log4j.appender.file.layout=org.apache.log4j.PatternLayout
log4j.appender.file.layout.ConversionPattern=[%d] %p %m (%c)%n
log4j.logger.kafka=INFO
log4j.logger.org.apache.kafka=INFO
"""


@dataclass(frozen=True)
class ServiceStatus:
    name: str
    healthy: bool
    pid: int | None
    ours: bool
    detail: str

    def as_dict(self) -> dict:
        return {"name": self.name, "healthy": self.healthy, "pid": self.pid, "ours": self.ours, "detail": self.detail}


def _require(tool: str, install_hint: str) -> str:
    path = shutil.which(tool)
    if not path:
        raise StackError(f"`{tool}` not found on PATH: {install_hint}")
    return path


def _apt_install(package: str) -> None:
    if not shutil.which("apt-get"):
        raise StackError(f"`{package}` is missing and apt-get is not available: install {package} by hand")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    subprocess.run(["apt-get", "update", "-qq"], check=False, env=env, capture_output=True)
    done = subprocess.run(["apt-get", "install", "-y", "-qq", package], env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise StackError(f"apt-get install {package} failed: {done.stderr.strip().splitlines()[-1:]}")


def _port_open(host: str, port: int, timeout: float = 0.5) -> bool:
    try:
        with socket.create_connection((host, port), timeout=timeout):
            return True
    except OSError:
        return False


def _alive(pid: int | None) -> TypeGuard[int]:
    if not pid:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # a zombie child of ours counts as dead
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().split()[2] != "Z"
    except OSError:
        return True


def _wait(check, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.3)
    raise StackError(f"{what} did not become healthy within {timeout:.0f} s")


class _PidFile:
    def __init__(self, path: Path):
        self.path = path

    def read(self) -> int | None:
        try:
            return int(self.path.read_text().strip())
        except (OSError, ValueError):
            return None

    def write(self, pid: int) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text(f"{pid}\n")

    def clear(self) -> None:
        self.path.unlink(missing_ok=True)


def _terminate(pid: int, grace: float = 30.0) -> None:
    try:
        os.killpg(pid, signal.SIGTERM)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, signal.SIGTERM)
        except ProcessLookupError:
            return
    deadline = time.monotonic() + grace
    while time.monotonic() < deadline and _alive(pid):
        time.sleep(0.2)
    if _alive(pid):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(pid, signal.SIGKILL)


class _Service:
    """What the three services share: a pid file of what we started, status from a health check, stop by pid."""

    name = ""
    pidfile: _PidFile
    stop_grace_s = 30.0

    def healthy(self) -> bool:
        raise NotImplementedError

    def describe(self) -> str:
        raise NotImplementedError

    def _stop_pid(self, pid: int) -> None:
        _terminate(pid, grace=self.stop_grace_s)

    def stop(self) -> bool:
        """Stop the process `start` recorded; False when nothing of ours runs."""
        pid = self.pidfile.read()
        if not _alive(pid):
            self.pidfile.clear()
            return False
        self._stop_pid(pid)
        self.pidfile.clear()
        return True

    def status(self) -> ServiceStatus:
        pid = self.pidfile.read()
        ours = _alive(pid)
        ok = self.healthy()
        return ServiceStatus(self.name, ok, pid if ours else None, ours, self.describe() if ok else "not answering")


class KafkaBroker(_Service):
    """One KRaft node (broker and controller in one process) under `state_dir`."""

    name = "kafka"

    def __init__(self, *, version: str, cache_dir: Path, state_dir: Path, port: int, controller_port: int):
        self.version = version
        self.libs = cache_dir / "kafka" / version / "libs"
        self.state = state_dir
        self.port = port
        self.controller_port = controller_port
        self.pidfile = _PidFile(state_dir / "kafka.pid")

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def ensure_jars(self) -> None:
        if self.libs.is_dir() and any(self.libs.glob(f"kafka_2.13-{self.version}.jar")):
            return
        mvn = _require("mvn", "install Maven (`apt-get install maven`) to resolve the Kafka broker's jars")
        work = self.libs.parent / "resolve"
        shutil.rmtree(work, ignore_errors=True)
        work.mkdir(parents=True)
        (work / "pom.xml").write_text(KAFKA_POM.format(version=self.version))
        done = subprocess.run(
            [
                mvn,
                "-q",
                "-B",
                "dependency:copy-dependencies",
                f"-DoutputDirectory={work / 'libs'}",
                "-DincludeScope=runtime",
            ],
            cwd=work,
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            tail = (done.stdout + done.stderr).strip().splitlines()[-3:]
            raise StackError(f"mvn could not resolve org.apache.kafka:kafka_2.13:{self.version}: {tail}")
        shutil.rmtree(self.libs, ignore_errors=True)
        (work / "libs").rename(self.libs)  # atomic: a half-resolved cache is never used
        shutil.rmtree(work, ignore_errors=True)

    def _java(self) -> str:
        return _require("java", "install Java 17 (`apt-get install openjdk-17-jre-headless`)")

    def _write_config(self) -> Path:
        data, logs = self.state / "data", self.state / "logs"
        data.mkdir(parents=True, exist_ok=True)
        logs.mkdir(parents=True, exist_ok=True)
        (self.state / "log4j.properties").write_text(LOG4J.format(logs=logs))
        props = {
            "process.roles": "broker,controller",
            "node.id": "1",
            "controller.quorum.voters": f"1@127.0.0.1:{self.controller_port}",
            "listeners": f"PLAINTEXT://127.0.0.1:{self.port},CONTROLLER://127.0.0.1:{self.controller_port}",
            "advertised.listeners": f"PLAINTEXT://127.0.0.1:{self.port}",
            "controller.listener.names": "CONTROLLER",
            "inter.broker.listener.name": "PLAINTEXT",
            "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
            "log.dirs": str(data),
            "num.partitions": "6",
            "offsets.topic.replication.factor": "1",
            "offsets.topic.num.partitions": "12",
            "transaction.state.log.replication.factor": "1",
            "transaction.state.log.min.isr": "1",
            "group.initial.rebalance.delay.ms": "0",
            "auto.create.topics.enable": "true",
            "log.retention.hours": "168",
            "log.segment.bytes": str(64 * 1024 * 1024),
        }
        cfg = self.state / "server.properties"
        cfg.write_text("".join(f"{k}={v}\n" for k, v in props.items()))
        return cfg

    def _classpath(self) -> str:
        return str(self.libs / "*")

    def _format_once(self, cfg: Path) -> None:
        if (self.state / "data" / "meta.properties").exists():
            return
        cluster_id = "-"
        while cluster_id.startswith("-"):  # the storage tool's argument parser takes "-..." for an option
            cluster_id = base64.urlsafe_b64encode(uuid.uuid4().bytes).rstrip(b"=").decode()
        done = subprocess.run(
            [
                self._java(),
                "-cp",
                self._classpath(),
                f"-Dlog4j.configuration=file:{self.state / 'log4j.properties'}",
                "kafka.tools.StorageTool",
                "format",
                "-t",
                cluster_id,
                "-c",
                str(cfg),
            ],
            capture_output=True,
            text=True,
        )
        if done.returncode != 0:
            raise StackError(f"formatting Kafka storage failed: {(done.stdout + done.stderr).strip()[-300:]}")

    def healthy(self) -> bool:
        if not _port_open("127.0.0.1", self.port):
            return False
        from kafka import KafkaAdminClient  # the metadata request is the real health check

        try:
            admin = KafkaAdminClient(
                bootstrap_servers=self.bootstrap, request_timeout_ms=3000, client_id="alignloop-health"
            )
            try:
                admin.list_topics()
                return True
            finally:
                admin.close()
        except Exception:
            return False

    def start(self, timeout: float = 90.0) -> bool:
        """Start unless running; True when this call started it."""
        if _alive(self.pidfile.read()):
            _wait(self.healthy, timeout, "Kafka")
            return False
        if _port_open("127.0.0.1", self.port):
            if self.healthy():
                return False
            raise StackError(f"port {self.port} is taken by something that is not a Kafka broker")
        java = self._java()
        self.ensure_jars()
        cfg = self._write_config()
        self._format_once(cfg)
        # the child keeps its own copy of the log's descriptor; ours is closed once it started
        with open(self.state / "logs" / "stdout.log", "ab") as log:
            proc = subprocess.Popen(
                [
                    java,
                    "-Xms256m",
                    "-Xmx768m",
                    "-XX:+UseG1GC",
                    "-Djava.awt.headless=true",
                    f"-Dlog4j.configuration=file:{self.state / 'log4j.properties'}",
                    f"-Dkafka.logs.dir={self.state / 'logs'}",
                    "-cp",
                    self._classpath(),
                    "kafka.Kafka",
                    str(cfg),
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pidfile.write(proc.pid)
        try:
            _wait(lambda: proc.poll() is None and self.healthy(), timeout, "Kafka")
        except StackError:
            if proc.poll() is not None:
                raise StackError(f"Kafka exited with {proc.returncode}; see {self.state / 'logs'}") from None
            raise
        return True

    def describe(self) -> str:
        return f"KRaft {self.version} on {self.bootstrap}"


class RedisServer(_Service):
    name = "redis"
    stop_grace_s = 10.0

    def __init__(self, *, url: str, state_dir: Path):
        u = urlparse(url)
        self.host, self.port = u.hostname or "127.0.0.1", u.port or 6379
        self.state = state_dir
        self.pidfile = _PidFile(state_dir / "redis.pid")

    def healthy(self) -> bool:
        import redis

        try:
            return bool(redis.Redis(host=self.host, port=self.port, socket_timeout=2).ping())
        except Exception:
            return False

    def start(self, timeout: float = 30.0) -> bool:
        if self.healthy():
            return False
        if not shutil.which("redis-server"):
            _apt_install("redis-server")
        data = self.state / "redis"
        data.mkdir(parents=True, exist_ok=True)
        with open(data / "redis.log", "ab") as log:
            proc = subprocess.Popen(
                [
                    "redis-server",
                    "--bind",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--dir",
                    str(data),
                    "--appendonly",
                    "yes",
                    "--save",
                    "",
                    "--daemonize",
                    "no",
                    "--protected-mode",
                    "yes",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )
        self.pidfile.write(proc.pid)
        _wait(lambda: proc.poll() is None and self.healthy(), timeout, "Redis")
        return True

    def describe(self) -> str:
        return f"PING ok on {self.host}:{self.port}"


class PostgresServer(_Service):
    """A cluster of our own (its own port and data dir), run as the `postgres` user when we are root."""

    name = "postgres"

    def __init__(self, *, url: str, state_dir: Path):
        u = urlparse(url.replace("+psycopg", ""))
        self.url = url
        self.port = u.port or 5432
        self.user = u.username or "alignloop"
        self.dbname = (u.path or "/alignloop").lstrip("/") or "alignloop"
        as_root = os.geteuid() == 0
        # /root is not traversable by the postgres user, so root keeps the cluster under /var/lib
        self.data = Path(f"/var/lib/alignloop/postgres-{self.port}") if as_root else state_dir / "postgres"
        self.runas = ["runuser", "-u", "postgres", "--"] if as_root else []
        self.pidfile = _PidFile(state_dir / "postgres.pid")

    def _bin(self, tool: str) -> str:
        found = sorted(Path("/usr/lib/postgresql").glob(f"*/bin/{tool}"))
        if found:
            return str(found[-1])
        return shutil.which(tool) or ""

    def healthy(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(
                host="127.0.0.1", port=self.port, user=self.user, dbname=self.dbname, connect_timeout=2
            ) as conn:
                return conn.execute("SELECT 1").fetchone() == (1,)
        except Exception:
            return False

    def _pg_ready(self) -> bool:
        import psycopg

        try:
            with psycopg.connect(
                host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", connect_timeout=2
            ):
                return True
        except Exception:
            return False

    def start(self, timeout: float = 60.0) -> bool:
        if self.healthy():
            return False
        if not self._bin("pg_ctl"):
            _apt_install("postgresql")
        pg_ctl, initdb = self._bin("pg_ctl"), self._bin("initdb")
        started = False
        if not _port_open("127.0.0.1", self.port):
            if not (self.data / "PG_VERSION").exists():
                self.data.mkdir(parents=True, exist_ok=True)
                if self.runas:
                    shutil.chown(self.data, "postgres", "postgres")
                    shutil.chown(self.data.parent, "postgres", "postgres")
                done = subprocess.run(
                    [
                        *self.runas,
                        initdb,
                        "-D",
                        str(self.data),
                        "-U",
                        "postgres",
                        "--auth=trust",
                        "-E",
                        "UTF8",
                        "--no-sync",
                    ],
                    capture_output=True,
                    text=True,
                )
                if done.returncode != 0:
                    raise StackError(f"initdb failed: {done.stderr.strip()[-300:]}")
            opts = f"-p {self.port} -c listen_addresses=127.0.0.1 -k /tmp -c max_connections=200"
            done = subprocess.run(
                [
                    *self.runas,
                    pg_ctl,
                    "-D",
                    str(self.data),
                    "-l",
                    str(self.data / "server.log"),
                    "-o",
                    opts,
                    "-w",
                    "-t",
                    str(int(timeout)),
                    "start",
                ],
                capture_output=True,
                text=True,
                stdin=subprocess.DEVNULL,
            )
            if done.returncode != 0:
                raise StackError(f"PostgreSQL did not start: {(done.stdout + done.stderr).strip()[-300:]}")
            pid = int((self.data / "postmaster.pid").read_text().split()[0])
            self.pidfile.write(pid)
            started = True
        _wait(self._pg_ready, timeout, "PostgreSQL")
        self._ensure_role_and_db()
        _wait(self.healthy, timeout, "PostgreSQL")
        return started

    def _ensure_role_and_db(self) -> None:
        import psycopg
        from psycopg import sql

        with psycopg.connect(
            host="127.0.0.1", port=self.port, user="postgres", dbname="postgres", autocommit=True
        ) as conn:
            if not conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", (self.user,)).fetchone():
                conn.execute(sql.SQL("CREATE ROLE {} LOGIN SUPERUSER").format(sql.Identifier(self.user)))
            if not conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (self.dbname,)).fetchone():
                conn.execute(
                    sql.SQL("CREATE DATABASE {} OWNER {}").format(
                        sql.Identifier(self.dbname), sql.Identifier(self.user)
                    )
                )

    def _stop_pid(self, pid: int) -> None:
        subprocess.run(
            [*self.runas, self._bin("pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop"], capture_output=True
        )
        if _alive(pid):
            _terminate(pid)

    def describe(self) -> str:
        return f"SELECT 1 ok on 127.0.0.1:{self.port}/{self.dbname}"


def services(settings: CoreSettings) -> list:
    state = settings.home / "stack"
    return [
        KafkaBroker(
            version=settings.kafka_version,
            cache_dir=settings.cache_dir,
            state_dir=state / "kafka",
            port=settings.kafka_port,
            controller_port=settings.kafka_controller_port,
        ),
        RedisServer(url=settings.redis_url, state_dir=state),
        PostgresServer(url=settings.postgres_url, state_dir=state),
    ]


def up(settings: CoreSettings, on_progress=lambda name, msg: None) -> list[ServiceStatus]:
    out = []
    for svc in services(settings):
        on_progress(svc.name, "starting")
        started = svc.start()
        on_progress(svc.name, "started" if started else "already running")
        out.append(svc.status())
    return out


def down(settings: CoreSettings) -> dict[str, bool]:
    return {svc.name: svc.stop() for svc in reversed(services(settings))}


def status(settings: CoreSettings) -> list[ServiceStatus]:
    return [svc.status() for svc in services(settings)]
