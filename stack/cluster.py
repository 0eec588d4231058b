"""The production topology on one machine (``python -m stack cluster``):

- three Kafka nodes in KRaft mode (each a broker and a controller, a quorum of
  three), the topics with three copies and ``min.insync.replicas`` 2;
- a Spark standalone cluster: a master and two workers of one core each, the
  streaming job submitted to it with ``spark-submit`` (the form ``manage.py
  reco_stream --print`` prints), its driver here and its executors on the workers;
- Redis: a primary, a replica and three Sentinels; every part of the shop finds
  the primary through the Sentinels (``redis+sentinel://`` in ``REDIS_URL``);
- the demo shop's relay, Celery and web server on top, as ``make demo`` runs them.

Each part is a plain process with its own ports and directory under the state
directory; :meth:`Stack.kill` and :meth:`Stack.restart` fail them one at a time.
"""

from __future__ import annotations

import json
import os
import shlex
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

from .services import (
    PYTHON,
    REPO,
    KafkaNode,
    Ports,
    Service,
    Stack,
    StackError,
    free_ports,
)

# the name the Sentinels know the primary by
SENTINEL_SERVICE = "reco"
# Failover trade-offs (docs/production.md): a primary that does not answer for
# DOWN_AFTER_MS is failed over once two Sentinels agree; shorter fails over
# sooner but mistakes a long pause (a fork, a slow disk) for a death.
SENTINEL_DOWN_AFTER_MS = 3000
SENTINEL_FAILOVER_TIMEOUT_MS = 20000
SPARK_WORKERS = 2
# CPU priority (nice value) of the brokers and Spark here (see Cluster._launch):
# a scheduling weight of 110 against the web server's 1,024 (nice 5: 335)
BACKGROUND_NICE = 10
# The job's settings on this cluster: its executors share this machine's two
# cores with the driver, so scoring a catch-up batch on them (cold Python
# workers in JVMs of 512 MB, data shipped both ways) is slower than on the
# driver: measured 24 s against ~1 s for 6,400 records. Batches up to 20,000
# records are scored on the driver (docs/production.md: driver_batch_rows).
JOB_CONFIG = {"driver_batch_rows": 20000}


def _pyspark_home() -> Path:
    import pyspark

    return Path(pyspark.__file__).resolve().parent


@dataclass
class ClusterPorts:
    """Every port of the topology: ``base`` ports as ``make demo`` has them
    (``RECO_KAFKA_PORT``, ``RECO_REDIS_PORT``, ``RECO_WEB_PORT``), the others
    numbered from them."""

    kafka: list[int] = field(default_factory=lambda: [9092, 9094, 9096])
    controllers: list[int] = field(default_factory=lambda: [9093, 9095, 9097])
    redis: list[int] = field(default_factory=lambda: [6379, 6380])
    sentinels: list[int] = field(default_factory=lambda: [26379, 26380, 26381])
    spark_master: int = 7077
    spark_ui: list[int] = field(default_factory=lambda: [8080, 8081, 8082])
    web: int = 8000

    @classmethod
    def from_env(cls) -> ClusterPorts:
        kafka = int(os.environ.get("RECO_KAFKA_PORT", 9092))
        redis = int(os.environ.get("RECO_REDIS_PORT", 6379))
        sentinel = int(os.environ.get("RECO_SENTINEL_PORT", 26379))
        spark = int(os.environ.get("RECO_SPARK_MASTER_PORT", 7077))
        ui = int(os.environ.get("RECO_SPARK_UI_PORT", 8080))
        return cls(
            kafka=[kafka, kafka + 2, kafka + 4],
            controllers=[kafka + 1, kafka + 3, kafka + 5],
            redis=[redis, redis + 1],
            sentinels=[sentinel, sentinel + 1, sentinel + 2],
            spark_master=spark,
            spark_ui=[ui, ui + 1, ui + 2],
            web=int(os.environ.get("RECO_WEB_PORT", 8000)),
        )

    @classmethod
    def free(cls) -> ClusterPorts:
        ports = free_ports(16)
        return cls(
            ports[0:3], ports[3:6], ports[6:8], ports[8:11], ports[11], ports[12:15], ports[15]
        )

    def all(self) -> dict[str, int]:
        named = {"web": self.web, "spark master": self.spark_master}
        for role in ("kafka", "controllers", "redis", "sentinels", "spark_ui"):
            for n, port in enumerate(getattr(self, role), 1):
                named[f"{role} {n}"] = port
        return named


class Cluster(Stack):
    """A :class:`Stack` whose Kafka, Redis and Spark are clusters."""

    def __init__(self, state_dir: Path, cluster_ports: ClusterPorts | None = None, **kwargs):
        self.cluster_ports = cluster_ports or ClusterPorts.from_env()
        c = self.cluster_ports
        ports = Ports(c.kafka[0], c.controllers[0], c.redis[0], c.web)
        super().__init__(state_dir, ports, **kwargs)
        self.spark = SparkStandalone(self, c.spark_master, c.spark_ui)

    # -- addresses every process is given ---------------------------------------
    @property
    def bootstrap(self) -> str:
        return ",".join(f"127.0.0.1:{port}" for port in self.cluster_ports.kafka)

    @property
    def redis_url(self) -> str:
        sentinels = ",".join(f"127.0.0.1:{port}" for port in self.cluster_ports.sentinels)
        return f"redis+sentinel://{sentinels}/{SENTINEL_SERVICE}/0"

    @property
    def spark_master(self) -> str:
        return self.spark.master

    def spark_conf(self) -> dict[str, str]:
        return self.spark.job_conf()

    def env(self) -> dict[str, str]:
        env = super().env()
        env.update(
            RECO_KAFKA_BOOTSTRAP=self.bootstrap,
            RECO_REDIS_URL=self.redis_url,
            RECO_SPARK_MASTER=self.spark_master,
            RECO_SPARK_MASTER_UI=self.spark.ui,
            RECO_SPARK_CONF=json.dumps(self.spark_conf()),
            **self.spark.env(),
        )
        return env

    # -- Kafka: three nodes, one quorum ------------------------------------------
    def kafka_nodes(self) -> list[KafkaNode]:
        c = self.cluster_ports
        return [
            KafkaNode(n + 1, c.kafka[n], c.controllers[n], self.state_dir / f"kafka-{n + 1}")
            for n in range(len(c.kafka))
        ]

    def start_kafka(self) -> None:
        nodes = self.kafka_nodes()
        cluster = self._cluster_id()
        services = [
            node.service(self, nodes, self.logs / f"kafka-{node.node_id}.log", 3, cluster)
            for node in nodes
        ]
        # A node waits for a quorum before it answers: start all three, then wait.
        for service in services:
            self.log(f"starting {service.name} (log: {service.log})")
            self._launch(service)
            self.services.append(service)
        for service in services:
            self._wait_ready(service)
        self._wait_until(
            lambda: len(self._brokers()) == len(nodes), 90, "all three brokers registered"
        )

    def _cluster_id(self) -> str:
        from .services import cluster_id

        path = self.state_dir / "kafka-cluster-id"
        if not path.exists():
            path.write_text(cluster_id())
        return path.read_text().strip()

    def _brokers(self) -> list[int]:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient({"bootstrap.servers": self.bootstrap, "log_level": 0})
        return sorted(admin.list_topics(timeout=5).brokers)

    # -- Redis: a primary, a replica, three Sentinels ----------------------------
    def start_redis(self) -> None:
        primary, replica = self.cluster_ports.redis
        self._start(self.redis_service("redis-1", primary))
        self._start(
            self.redis_service("redis-2", replica, "--replicaof", "127.0.0.1", str(primary))
        )
        self._wait_until(
            lambda: self._redis_client(replica).info("replication")["master_link_status"] == "up",
            30,
            "the replica in sync",
        )
        for n, port in enumerate(self.cluster_ports.sentinels, 1):
            self._start(self.sentinel_service(n, port, primary))
        self._wait_until(
            lambda: all(
                int(
                    self._redis_client(port).sentinel_master(SENTINEL_SERVICE)[
                        "num-other-sentinels"
                    ]
                )
                == len(self.cluster_ports.sentinels) - 1
                for port in self.cluster_ports.sentinels
            ),
            30,
            "the Sentinels to know each other",
        )

    def sentinel_service(self, n: int, port: int, primary: int) -> Service:
        directory = self.state_dir / f"sentinel-{n}"
        directory.mkdir(parents=True, exist_ok=True)
        config = directory / "sentinel.conf"
        if not config.exists():  # the Sentinel rewrites it with what it learns
            config.write_text(
                "\n".join(
                    [
                        f"port {port}",
                        "bind 127.0.0.1",
                        f"dir {directory}",
                        f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {primary} 2",
                        f"sentinel down-after-milliseconds {SENTINEL_SERVICE} "
                        f"{SENTINEL_DOWN_AFTER_MS}",
                        f"sentinel failover-timeout {SENTINEL_SERVICE} "
                        f"{SENTINEL_FAILOVER_TIMEOUT_MS}",
                        f"sentinel parallel-syncs {SENTINEL_SERVICE} 1",
                        "",
                    ]
                )
            )
        server = self.redis_service("unused", port).argv[0]
        return Service(
            f"sentinel-{n}",
            [server, str(config), "--sentinel"],
            self.logs / f"sentinel-{n}.log",
            lambda: bool(
                self._redis_client(port).sentinel_get_master_addr_by_name(SENTINEL_SERVICE)
            ),
            timeout=20,
        )

    def _launch(self, service: Service) -> None:
        if service.name in ("redis-1", "redis-2") and self.services:
            self._follow_primary(service)
        if service.name.startswith(("kafka-", "spark")):
            # On one machine the brokers' and Spark's JVMs (a restarted driver
            # with its executors, a broker catching up) share the cores with the
            # web server, which in production has its own: they yield to it.
            service.nice = BACKGROUND_NICE
        super()._launch(service)

    def _follow_primary(self, service: Service) -> None:
        """A Redis server started again joins as a replica of the primary the
        Sentinels name now (it may have been the primary when it died): it
        never serves its older data as a second primary."""
        primary = self.primary_port()
        if primary is None:  # no Sentinel yet: as first configured
            return
        argv = service.argv
        if "--replicaof" in argv:
            at = argv.index("--replicaof")
            del argv[at : at + 3]
        if primary != int(argv[argv.index("--port") + 1]):
            argv += ["--replicaof", "127.0.0.1", str(primary)]

    def primary_port(self) -> int | None:
        """The primary's port as the Sentinels say (the first that answers)."""
        for port in self.cluster_ports.sentinels:
            try:
                address = self._redis_client(port).sentinel_get_master_addr_by_name(
                    SENTINEL_SERVICE
                )
            except Exception:
                continue
            if address:
                return int(address[1])
        return None

    @staticmethod
    def _redis_client(port: int):
        import redis

        return redis.Redis(port=port, decode_responses=True, socket_timeout=2, protocol=2)

    # -- Spark: a standalone master, two workers, the job submitted -------------
    def start_spark(self, config: dict | None = None) -> None:
        self.spark.start()
        super().start_spark({**JOB_CONFIG, **(config or {})})

    def spark_argv(self, config: dict | None = None) -> list[str]:
        return self.submit_argv(config)

    def submit_argv(self, config: dict | None = None) -> list[str]:
        """The job's ``spark-submit`` command line, as ``manage.py reco_stream
        --print`` prints it for this shop (its second line), with the installed
        PySpark's ``spark-submit``."""
        args = ["reco_stream", "--print"]
        if config:
            args += ["--config", json.dumps(config)]
        lines = self.manage(*args, quiet=True).strip().splitlines()
        submit = shlex.split(lines[-1])
        if submit[0] != "spark-submit":
            raise StackError(f"reco_stream --print gave no spark-submit line: {lines}")
        return [str(_pyspark_home() / "bin" / "spark-submit"), *submit[1:]]

    # -- helpers -------------------------------------------------------------------
    def _wait_until(self, condition, timeout: float, what: str) -> None:
        import time

        deadline = time.monotonic() + timeout
        last = None
        while time.monotonic() < deadline:
            try:
                if condition():
                    return
            except Exception as exc:  # not up yet
                last = exc
            time.sleep(0.5)
        raise StackError(f"no {what} after {timeout:.0f} s ({last})")


def check_ports_free(ports: ClusterPorts) -> list[str]:
    from .services import port_open

    return [f"{name} {port}" for name, port in ports.all().items() if port_open(port)]


class SparkStandalone:
    """A Spark standalone master and its workers of one core each, started
    from the installed PySpark as services of ``stack``."""

    def __init__(self, stack: Stack, port: int, ui_ports: list[int], workers: int = SPARK_WORKERS):
        self.stack = stack
        self.port = port
        self.ui_ports = ui_ports
        self.workers = workers

    @property
    def master(self) -> str:
        return f"spark://127.0.0.1:{self.port}"

    @property
    def ui(self) -> str:
        return f"http://127.0.0.1:{self.ui_ports[0]}"

    def env(self) -> dict[str, str]:
        return {
            "SPARK_HOME": str(_pyspark_home()),
            "PYSPARK_PYTHON": PYTHON,
            # the master's and workers' own heaps
            "SPARK_DAEMON_MEMORY": "256m",
        }

    def job_conf(self) -> dict[str, str]:
        """What a job asks of the cluster: an executor of one core and 512 MB
        on each worker, and the Python it runs."""
        return {
            "spark.executor.cores": "1",
            "spark.executor.memory": "512m",
            "spark.cores.max": str(self.workers),
            "spark.driver.memory": "768m",
            "spark.driver.host": "127.0.0.1",
            "spark.pyspark.python": PYTHON,
            "spark.pyspark.driver.python": PYTHON,
            "spark.executorEnv.PYTHONPATH": str(REPO),
            "spark.executorEnv.RECO_FORGET_SECRET": self.stack.forget_secret,
        }

    def start(self) -> None:
        spark_class = str(_pyspark_home() / "bin" / "spark-class")
        self.stack._start(
            Service(
                "spark-master",
                [
                    spark_class,
                    "org.apache.spark.deploy.master.Master",
                    "--host",
                    "127.0.0.1",
                    "--port",
                    str(self.port),
                    "--webui-port",
                    str(self.ui_ports[0]),
                ],
                self.stack.logs / "spark-master.log",
                lambda: self.spark_state().get("status") == "ALIVE",
                timeout=60,
            )
        )
        for n in range(1, self.workers + 1):
            work = self.stack.state_dir / f"spark-worker-{n}"
            work.mkdir(parents=True, exist_ok=True)
            ui = self.ui_ports[n]
            self.stack._start(
                Service(
                    f"spark-worker-{n}",
                    [
                        spark_class,
                        "org.apache.spark.deploy.worker.Worker",
                        "--host",
                        "127.0.0.1",
                        "--cores",
                        "1",
                        "--memory",
                        "1g",
                        "--webui-port",
                        str(ui),
                        "--work-dir",
                        str(work),
                        self.master,
                    ],
                    self.stack.logs / f"spark-worker-{n}.log",
                    lambda ui=ui: self._worker_alive(ui),
                    timeout=60,
                )
            )

    def spark_state(self) -> dict:
        """The master's own account (its web UI's JSON): workers, applications."""
        url = f"{self.ui}/json/"
        with urllib.request.urlopen(url, timeout=3) as response:
            return json.load(response)

    def _worker_alive(self, ui: int) -> bool:
        return any(
            w["state"] == "ALIVE" and w["webuiaddress"].endswith(f":{ui}")
            for w in self.spark_state().get("workers", [])
        )
