from __future__ import annotations

import base64
import contextlib
import errno
import hashlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.request
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from . import running

REPO = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
KAFKA_LIB = REPO / "jvm" / "lib" / "kafka-broker"
# Spark's Kafka connector as set-up fetched it with Maven: every job this
# process starts (tests, benchmarks, the demo) uses it instead of fetching it again
SPARK_KAFKA_LIB = REPO / "jvm" / "lib" / "spark-kafka"
os.environ.setdefault("RECO_SPARK_KAFKA_CONNECTOR", str(SPARK_KAFKA_LIB))
KAFKA_LOG_CONFIG = REPO / "jvm" / "config" / "log4j2.properties"


class StackError(RuntimeError):
    pass


def cluster_id() -> str:
    """A random KRaft cluster id: 16 bytes in URL-safe base64, as Kafka makes them.

    Kafka never starts one with a dash, which a command line would take for an option.
    """
    while True:
        candidate = base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
        if not candidate.startswith("-"):
            return candidate


def free_port() -> int:
    return free_ports(1)[0]


# The ports free_ports chooses from: under the kernel's ephemeral range
# (ip_local_port_range), which it hands out to bind(0) and to every outgoing
# connection. A port bind(0) gave was taken by some client's connection
# before the web server it was for could bind it (a CI run: "address already
# in use"); a port under the range is only ever taken by a bind of it.
LOWEST_PORT = 10000
# the ports this process has handed out: never twice
_handed_out: set[int] = set()


def _ephemeral_low() -> int:
    with contextlib.suppress(OSError, ValueError):
        return int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    return 32768


def free_ports(n: int) -> list[int]:
    """``n`` different free ports under the ephemeral range, none this process
    handed out before; each is bound to see that it is free, and the sockets
    held until all are (ports taken one by one may come back the same: a
    broker and a Redis of one cluster once got the same port)."""
    top = _ephemeral_low()
    if top - LOWEST_PORT < 1000:  # a machine whose ephemeral range starts low
        with contextlib.ExitStack() as held:
            sockets = [held.enter_context(socket.socket()) for _ in range(n)]
            for s in sockets:
                s.bind(("127.0.0.1", 0))
            return [s.getsockname()[1] for s in sockets]
    chosen: list[int] = []
    with contextlib.ExitStack() as held:
        while len(chosen) < n:
            port = random.randrange(LOWEST_PORT, top)
            if port in _handed_out or port in chosen:
                continue
            s = held.enter_context(socket.socket())
            try:
                s.bind(("127.0.0.1", port))
            except OSError:  # in use, or closing (TIME_WAIT)
                continue
            chosen.append(port)
    _handed_out.update(chosen)
    return chosen


def port_open(port: int) -> bool:
    with socket.socket() as s:
        s.settimeout(0.2)
        return s.connect_ex(("127.0.0.1", port)) == 0


def run_at_priority(nice: int) -> None:
    """Lower the calling process's CPU priority by ``nice`` (a service's
    child, before it runs its program).

    A service runs in a session of its own, and where Linux groups tasks by
    session for the scheduler (``sched_autogroup``, on in most distributions'
    kernels) each session is one group, weighed against the others by the
    group's nice value: a process's own nice value only weighs it against its
    own group. Both are set, so the service yields to the others as asked.
    (Autogroups apply in the root cgroup only; in another, as under systemd's
    or a container's CPU controller, the process's own nice value weighs it
    against the other tasks of its cgroup.)"""
    os.nice(nice)
    # Without CAP_SYS_ADMIN the kernel takes one such change every 0.1 s,
    # machine-wide (EAGAIN): services started together wait their turn.
    deadline = time.monotonic() + 2.0
    while True:
        try:
            with open("/proc/self/autogroup", "w") as autogroup:
                autogroup.write(str(nice))
            return
        except FileNotFoundError:
            return  # no autogroups on this kernel: the process's nice value is all there is
        except OSError as exc:
            if exc.errno != errno.EAGAIN or time.monotonic() > deadline:
                os.write(2, f"its scheduling group's priority is unchanged: {exc}\n".encode())
                return
            time.sleep(0.1)


def stop_process(process: subprocess.Popen, grace: float = 20.0) -> None:
    """SIGTERM the process we started (only it: it stops its own children in
    order; the streaming job lets its batch finish, which a SIGTERM to its JVM
    would cut short), then SIGKILL whatever is left of its process group."""
    stop_processes([process], grace)


def stop_processes(processes: Sequence[subprocess.Popen], grace: float = 20.0) -> None:
    """:func:`stop_process` for several processes at once: each is sent
    SIGTERM, and they share one ``grace``."""
    for process in processes:
        with contextlib.suppress(ProcessLookupError):
            process.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for process in processes:
        try:
            process.wait(timeout=max(0.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            pass
    for process in processes:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
    for process in processes:
        process.wait(timeout=10)


@dataclass
class Ports:
    kafka: int = 9092
    kafka_controller: int = 9093
    redis: int = 6379
    web: int = 8000

    @classmethod
    def from_env(cls) -> Ports:
        kafka = int(os.environ.get("RECO_KAFKA_PORT", 9092))
        return cls(
            kafka=kafka,
            kafka_controller=int(os.environ.get("RECO_KAFKA_CONTROLLER_PORT", kafka + 1)),
            redis=int(os.environ.get("RECO_REDIS_PORT", 6379)),
            web=int(os.environ.get("RECO_WEB_PORT", 8000)),
        )

    @classmethod
    def free(cls) -> Ports:
        kafka, kafka_controller, redis, web = free_ports(4)
        return cls(kafka=kafka, kafka_controller=kafka_controller, redis=redis, web=web)


@dataclass
class Service:
    name: str
    argv: list[str]
    log: Path
    ready: Callable[[], bool]
    timeout: float = 60.0
    process: subprocess.Popen | None = None
    # how long it may take to stop after SIGTERM before it is killed
    stop_timeout: float = 20.0
    # crash recovery: restarts so far, when the next may happen, when it last started
    restarts: int = 0
    restart_at: float | None = None
    started_at: float = 0.0
    # CPU priority (a nice value) the process runs at: see run_at_priority
    nice: int = 0
    # services of one quorum, named alike here, are stopped together: one by
    # one, the last broker to stop has no controller quorum left and its
    # controlled shutdown waits for one until it is killed (20 s here, against
    # 6 s for the three together)
    quorum: str = ""


@dataclass
class KafkaNode:
    """One combined broker+controller of a KRaft quorum (of one, or of three)."""

    node_id: int
    port: int
    controller_port: int
    directory: Path

    def properties(self, quorum: list[KafkaNode], replication: int) -> str:
        """``server.properties``; internal topics with ``replication`` copies,
        all but one of them needed in sync."""
        insync = max(1, replication - 1)
        if len(quorum) == 1:  # formatted --standalone: a quorum that may grow later
            voters = f"controller.quorum.bootstrap.servers=127.0.0.1:{self.controller_port}"
        else:
            voters = "controller.quorum.voters=" + ",".join(
                f"{n.node_id}@127.0.0.1:{n.controller_port}" for n in quorum
            )
        return "\n".join(
            [
                "process.roles=broker,controller",
                f"node.id={self.node_id}",
                voters,
                f"listeners=PLAINTEXT://127.0.0.1:{self.port},"
                f"CONTROLLER://127.0.0.1:{self.controller_port}",
                f"advertised.listeners=PLAINTEXT://127.0.0.1:{self.port}",
                "controller.listener.names=CONTROLLER",
                "inter.broker.listener.name=PLAINTEXT",
                "listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
                f"log.dirs={self.directory / 'data'}",
                "num.partitions=12",
                f"default.replication.factor={replication}",
                f"min.insync.replicas={insync}",
                f"offsets.topic.replication.factor={replication}",
                f"transaction.state.log.replication.factor={replication}",
                f"transaction.state.log.min.isr={insync}",
                f"share.coordinator.state.topic.replication.factor={replication}",
                f"share.coordinator.state.topic.min.isr={insync}",
                "group.initial.rebalance.delay.ms=0",
                "log.retention.hours=168",
                # a broker that stops answering loses its partitions' leadership
                # after this long (docs/production.md: failover trade-offs)
                "broker.session.timeout.ms=6000",
                "broker.heartbeat.interval.ms=1000",
                "replica.lag.time.max.ms=10000",
                "",
            ]
        )

    def service(
        self, stack: Stack, quorum: list[KafkaNode], log: Path, replication: int, cluster: str = ""
    ) -> Service:
        """The node's process; its storage formatted on first start (with
        ``cluster``, the quorum's shared id; a quorum of one formats itself)."""
        if not any(KAFKA_LIB.glob("kafka_*.jar")):
            raise StackError(f"Kafka broker jars missing in {KAFKA_LIB}: run `make setup`")
        java = shutil.which("java")
        if java is None:
            raise StackError("java not found (Kafka needs Java 17)")
        self.directory.mkdir(parents=True, exist_ok=True)
        config = self.directory / "server.properties"
        config.write_text(self.properties(quorum, replication))
        classpath = f"{KAFKA_LIB}/*"
        if not (self.directory / "data" / "meta.properties").exists():
            formatted = subprocess.run(
                [
                    java,
                    "-cp",
                    classpath,
                    "kafka.tools.StorageTool",
                    "format",
                    *(["--standalone"] if len(quorum) == 1 else []),
                    f"--cluster-id={cluster or cluster_id()}",
                    "-c",
                    str(config),
                ],
                capture_output=True,
                text=True,
            )
            if formatted.returncode:
                raise StackError(f"formatting Kafka's storage failed: {formatted.stderr.strip()}")
        bootstrap = f"127.0.0.1:{self.port}"
        return Service(
            log.stem,
            [
                java,
                "-Xms256m",
                "-Xmx768m" if len(quorum) == 1 else "-Xmx512m",
                f"-Dlog4j2.configurationFile={KAFKA_LOG_CONFIG}",
                "-cp",
                classpath,
                "kafka.Kafka",
                str(config),
            ],
            log,
            lambda: kafka_answers(bootstrap),
            timeout=90,
            quorum="kafka" if len(quorum) > 1 else "",
        )


def kafka_answers(bootstrap: str) -> bool:
    """A broker at ``bootstrap`` answers a metadata request."""
    from confluent_kafka.admin import AdminClient

    host, _, port = bootstrap.split(",")[0].rpartition(":")
    if not port_open(int(port)):
        return False
    admin = AdminClient({"bootstrap.servers": bootstrap, "log_level": 0})
    return bool(admin.list_topics(timeout=2).brokers)


@dataclass
class Stack:
    """Start with :meth:`start`, stop with :meth:`stop` (also a context manager)."""

    state_dir: Path
    ports: Ports = field(default_factory=Ports.from_env)
    catalog_sync_seconds: int = 300
    log: Callable[[str], None] = print
    services: list[Service] = field(default_factory=list)
    # a line a request in the web server's log (the demo's; the tests' and
    # benchmarks' servers keep none)
    access_log: bool = False

    def __post_init__(self) -> None:
        self.state_dir = Path(self.state_dir).resolve()
        self.forget_secret = hashlib.sha256(f"reco-forget:{self.state_dir}".encode()).hexdigest()
        self.logs = self.state_dir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)

    # -- environment shared by every Django-side process ------------------
    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.ports.redis}/0"

    @property
    def bootstrap(self) -> str:
        """Kafka's bootstrap servers."""
        return f"127.0.0.1:{self.ports.kafka}"

    @property
    def web_url(self) -> str:
        return f"http://127.0.0.1:{self.ports.web}"

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update(
            DJANGO_SETTINGS_MODULE="demo_shop.settings",
            PYTHONPATH=str(REPO),
            PYTHONUNBUFFERED="1",
            SPARK_LOCAL_IP="127.0.0.1",
            RECO_STATE_DIR=str(self.state_dir),
            RECO_KAFKA_PORT=str(self.ports.kafka),
            RECO_REDIS_PORT=str(self.ports.redis),
            RECO_WEB_PORT=str(self.ports.web),
            RECO_CATALOG_SYNC_SECONDS=str(self.catalog_sync_seconds),
            # one secret for the digests of forgotten visitors, whichever
            # process (the shop, reco_stream, a job started alone) computes them
            RECO_FORGET_SECRET=self.forget_secret,
        )
        env.pop("RECO_REDIS_URL", None)
        env.pop("RECO_KAFKA_BOOTSTRAP", None)
        return env

    def write_env_file(self) -> Path:
        """``env.sh`` in the state directory: the shop's settings for a
        management command run by hand against this stack (``. env.sh``)."""
        import shlex

        path = self.state_dir / "env.sh"
        lines = [
            f"export {name}={shlex.quote(value)}"
            for name, value in sorted(self.env().items())
            if name.startswith(("RECO_", "DJANGO_SETTINGS_MODULE", "SPARK_LOCAL_IP"))
        ]
        path.write_text("\n".join(lines) + "\n")
        return path

    def run_manage(self, *args: str, timeout: float = 600) -> subprocess.CompletedProcess:
        """Run a management command of the demo shop; its output is also appended
        to logs/manage.log. The caller reads the exit status."""
        result = subprocess.run(
            [PYTHON, str(REPO / "manage.py"), *args],
            env=self.env(),
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=timeout,
        )
        with open(self.logs / "manage.log", "a") as log:
            log.write(f"$ manage.py {' '.join(args)}\n{result.stdout}{result.stderr}\n")
        return result

    def manage(self, *args: str, timeout: float = 600, quiet: bool = False) -> str:
        """Run a management command of the demo shop; fail unless it exits 0."""
        result = self.run_manage(*args, timeout=timeout)
        if result.returncode != 0:
            raise StackError(f"manage.py {' '.join(args)} failed:\n{result.stderr[-3000:]}")
        if not quiet:
            for line in result.stdout.splitlines():
                self.log(f"  {line}")
        return result.stdout

    # -- one process ------------------------------------------------------
    def _launch(self, service: Service) -> None:
        handle = open(service.log, "ab")
        service.started_at = time.monotonic()
        service.process = subprocess.Popen(
            service.argv,
            stdout=handle,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env=self.env(),
            cwd=REPO,
            # Its own process group: Ctrl-C reaches only this runner, which
            # then stops the services in reverse order.
            start_new_session=True,
            preexec_fn=(lambda: run_at_priority(service.nice)) if service.nice else None,
        )
        handle.close()
        self._record(service)

    def _record(self, launched: Service | None = None) -> None:
        """The live services on disk (``stack.running``): what ``python -m
        stack stop`` stops should this runner die without stopping them."""
        listed = list(self.services)
        if launched is not None and all(s is not launched for s in listed):
            listed.append(launched)
        running.record(
            self.state_dir,
            [
                (s.name, s.process.pid, s.quorum)
                for s in listed
                if s.process is not None and s.process.poll() is None
            ],
        )

    def _start(self, service: Service) -> None:
        self.log(f"starting {service.name} (log: {service.log})")
        self._launch(service)
        self.services.append(service)
        self._wait_ready(service)

    def _wait_ready(self, service: Service) -> None:
        deadline = time.monotonic() + service.timeout
        while True:
            if service.process.poll() is not None:
                raise StackError(
                    f"{service.name} exited with {service.process.returncode}; "
                    f"last log lines:\n{self._tail(service.log)}"
                )
            with contextlib.suppress(Exception):
                if service.ready():
                    break
            if time.monotonic() > deadline:
                raise StackError(
                    f"{service.name} not ready after {service.timeout:.0f}s; "
                    f"last log lines:\n{self._tail(service.log)}"
                )
            time.sleep(0.2)
        self.log(f"{service.name} ready (pid {service.process.pid})")

    @staticmethod
    def _tail(path: Path, lines: int = 30) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def watch(self, max_backoff: float = 60.0) -> None:
        """Start again, with backoff, every service that has exited.

        Call it periodically. A service that stayed up for five minutes starts
        its backoff from one second again.
        """
        now = time.monotonic()
        for service in self.services:
            process = service.process
            if process is None or process.poll() is None:
                continue
            if service.restart_at is None:
                if now - service.started_at > 300:
                    service.restarts = 0
                delay = min(max_backoff, 2.0**service.restarts)
                service.restart_at = now + delay
                self.log(
                    f"{service.name} exited with {process.returncode}; starting it again in "
                    f"{delay:.0f} s (log: {service.log})"
                )
            elif now >= service.restart_at:
                service.restarts += 1
                service.restart_at = None
                self._launch(service)
                self.log(
                    f"{service.name} started again (pid {service.process.pid}, "
                    f"restart {service.restarts})"
                )

    # -- the services, in start order -------------------------------------
    def start_kafka(self) -> None:
        p = self.ports
        node = KafkaNode(1, p.kafka, p.kafka_controller, self.state_dir / "kafka")
        self._start(node.service(self, [node], self.logs / "kafka.log", replication=1))

    def start_redis(self) -> None:
        self._start(self.redis_service("redis", self.ports.redis))

    def redis_service(self, name: str, port: int, *extra: str) -> Service:
        server = shutil.which("redis-server")
        if server is None:
            raise StackError("redis-server not found: run `make setup`")
        redis_dir = self.state_dir / name
        redis_dir.mkdir(parents=True, exist_ok=True)
        return Service(
            name,
            [
                server,
                "--port",
                str(port),
                "--bind",
                "127.0.0.1",
                "--dir",
                str(redis_dir),
                # durable by default: every write in the append-only
                # file within a second (docs/production.md); snapshots too
                "--appendonly",
                "yes",
                "--appendfsync",
                "everysec",
                "--save",
                "300 1",
                "--protected-mode",
                "yes",
                *extra,
            ],
            self.logs / f"{name}.log",
            lambda: self._redis_answers(port),
            timeout=20,
        )

    @staticmethod
    def _redis_answers(port: int) -> bool:
        import redis

        return bool(redis.Redis(port=port, socket_timeout=2).ping())

    def redis(self):
        from reco_plugin import redis_url

        return redis_url.connect(self.redis_url, decode_responses=True, socket_timeout=5)

    def prepare_shop(self) -> None:
        self.log("preparing the shop: topics, database, catalog")
        self.manage("reco_topics")
        self.manage("migrate", "--noinput", quiet=True)
        self.manage("demo_setup")

    def spark_argv(self, config: dict | None = None) -> list[str]:
        """The shop's own launcher: ``manage.py reco_stream`` with the demo
        settings (checkpoint and lake under the state directory)."""
        argv = [PYTHON, str(REPO / "manage.py"), "reco_stream"]
        if config:
            argv += ["--config", json.dumps(config)]
        return argv

    def start_spark(self, config: dict | None = None) -> None:
        from reco_plugin import keys

        checkpoint = self.state_dir / "spark" / "checkpoint"
        checkpoint.parent.mkdir(parents=True, exist_ok=True)
        r = self.redis()
        r.delete(keys.pipeline_heartbeat())
        self._start(
            Service(
                "spark",
                self.spark_argv(config),
                self.logs / "spark.log",
                lambda: r.exists(keys.pipeline_heartbeat()) == 1,
                timeout=240,
                stop_timeout=60,
            )
        )

    def start_push(self) -> None:
        from reco_plugin import keys

        r = self.redis()
        self._start(
            Service(
                "push",
                [PYTHON, str(REPO / "manage.py"), "reco_push"],
                self.logs / "push.log",
                lambda: (
                    dict(r.pubsub_numsub(keys.updates_channel())).get(keys.updates_channel(), 0) > 0
                ),
            )
        )

    def _log_says(self, path: Path, text: str) -> Callable[[], bool]:
        return lambda: text in path.read_text(errors="replace")

    def start_celery(self) -> None:
        worker_log = self.logs / "celery-worker.log"
        self._start(
            Service(
                "celery-worker",
                [
                    PYTHON,
                    "-m",
                    "celery",
                    "-A",
                    "demo_shop",
                    "worker",
                    "--loglevel",
                    "INFO",
                    "--concurrency",
                    "1",
                    "--hostname",
                    f"reco-{self.ports.web}@%h",
                ],
                worker_log,
                self._log_says(worker_log, " ready."),
            )
        )
        beat_log = self.logs / "celery-beat.log"
        self._start(
            Service(
                "celery-beat",
                [
                    PYTHON,
                    "-m",
                    "celery",
                    "-A",
                    "demo_shop",
                    "beat",
                    "--loglevel",
                    "INFO",
                    "--schedule",
                    str(self.state_dir / "celerybeat-schedule"),
                ],
                beat_log,
                self._log_says(beat_log, "beat: Starting"),
            )
        )

    def start_web(self) -> None:
        url = self.web_url + "/"
        self._start(
            Service(
                "web",
                [
                    PYTHON,
                    "-m",
                    "uvicorn",
                    "demo_shop.asgi:application",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.ports.web),
                    "--lifespan",
                    "off",
                    "--access-log" if self.access_log else "--no-access-log",
                ],
                self.logs / "web.log",
                lambda: urllib.request.urlopen(url, timeout=2).status == 200,
            )
        )

    def warm_up(self, limit: int | None = None) -> None:
        args = ["demo_warmup"]
        if limit:
            args += ["--limit", str(limit)]
        self.log("warming the pipeline with the MovieLens history")
        # Streams straight to the terminal so the progress bar is visible.
        subprocess.run(
            [PYTHON, str(REPO / "manage.py"), *args], env=self.env(), cwd=REPO, check=True
        )

    def start(self, warm: bool = True, warm_limit: int | None = None) -> None:
        try:
            self.start_kafka()
            self.start_redis()
            self.prepare_shop()
            self.start_spark()
            self.start_push()
            self.start_celery()
            self.start_web()
            if warm:
                self.warm_up(warm_limit)
        except BaseException:
            self.stop()
            raise

    def stop(self) -> None:
        """Each service in the reverse order of its start; the services of one
        ``quorum`` together, when the last started of them is reached. What
        could not be stopped stays listed, for a later ``stop()``."""
        for together in running.stop_order(self.services, lambda s: s.quorum):
            live = [s for s in together if s.process is not None and s.process.poll() is None]
            if live:
                pids = ", ".join(f"{s.name} (pid {s.process.pid})" for s in live)
                self.log(f"stopping {pids}")
                stop_processes([s.process for s in live], max(s.stop_timeout for s in live))
            self.services = [s for s in self.services if all(s is not t for t in together)]
            self._record()

    def __enter__(self) -> Stack:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def service(self, name: str) -> Service:
        return next(s for s in self.services if s.name == name)

    def kill(self, name: str, sig: int = signal.SIGKILL) -> Service:
        """Send ``sig`` to a service's whole process group (SIGKILL: it has no
        chance to finish anything; SIGSTOP: it hangs, its sockets open)."""
        service = self.service(name)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(service.process.pid, sig)
        if sig == signal.SIGKILL:
            service.process.wait(30)
        return service

    def stop_service(self, name: str) -> None:
        """SIGTERM one service and wait until it has stopped."""
        service = self.service(name)
        if service.process.poll() is None:
            stop_process(service.process, service.stop_timeout)

    def restart(self, name: str) -> None:
        """Start a service killed with :meth:`kill` again and wait until it is ready."""
        service = self.service(name)
        service.restarts += 1
        self.log(f"starting {service.name} again")
        self._launch(service)
        self._wait_ready(service)

    def dump_logs(self, lines: int = 40) -> str:
        return json.dumps({s.name: self._tail(s.log, lines) for s in self.services}, indent=1)
