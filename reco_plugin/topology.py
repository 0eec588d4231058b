"""The parts each engine is made of, for ``reco_status``: Kafka's brokers and
the state of the topics' partitions, Redis's primary, replicas and Sentinels,
and the Spark workers the job runs on. Each returns a JSON-ready dict with the
``problems`` it found (a part down, a partition without a leader or short of
copies, a replica not in sync)."""

from __future__ import annotations

import json
import urllib.request
from typing import Any

from . import redis_url
from .conf import reco_settings


def kafka_brokers(timeout: float = 5.0) -> dict[str, Any]:
    """Each broker that holds a copy of the plugin's topics (up, or down: named
    by a partition but not answering), and the partitions without a leader or
    with copies out of sync."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({**dict(reco_settings.KAFKA), "log_level": 0})
    metadata = admin.list_topics(timeout=timeout)
    up = {b.id: f"{b.host}:{b.port}" for b in metadata.brokers.values()}
    named: set[int] = set(up)
    offline: list[str] = []
    short: list[str] = []
    total = 0
    for topic in sorted({*reco_settings.TOPICS.values(), reco_settings.FORGOTTEN_TOPIC}):
        if topic not in metadata.topics:
            continue
        for number, partition in sorted(metadata.topics[topic].partitions.items()):
            total += 1
            named.update(partition.replicas)
            if partition.leader < 0:
                offline.append(f"{topic}:{number}")
            elif len(partition.isrs) < len(partition.replicas):
                short.append(f"{topic}:{number}")
    brokers = [
        {"id": broker, "address": up.get(broker), "up": broker in up} for broker in sorted(named)
    ]
    problems = [f"Kafka broker {b['id']} is down" for b in brokers if not b["up"]]
    if offline:
        problems.append(
            f"{len(offline)} partitions have no leader: their events cannot be written "
            f"(e.g. {', '.join(offline[:3])})"
        )
    if short:
        problems.append(
            f"{len(short)} partitions have copies out of sync (e.g. {', '.join(short[:3])})"
        )
    return {
        "brokers": brokers,
        "partitions": {"total": total, "offline": len(offline), "under_replicated": len(short)},
        "problems": problems,
    }


def redis_roles(client: Any) -> dict[str, Any]:
    """The primary the shop writes to, its replicas as it sees them, and (with
    a ``redis+sentinel://`` URL) what each Sentinel says."""
    info = client.info("replication")
    found: dict[str, Any] = {
        "role": "primary" if info.get("role") == "master" else info.get("role"),
        "replicas": [
            {
                "address": f"{value.get('ip')}:{value.get('port')}",
                "state": value.get("state"),
                "behind_bytes": max(
                    0, int(info.get("master_repl_offset", 0)) - int(value.get("offset", 0))
                ),
            }
            for name, value in sorted(info.items())
            if name.startswith("slave") and isinstance(value, dict)
        ],
        "problems": [],
    }
    if found["role"] != "primary":
        found["problems"].append(f"the Redis the shop writes to is a {found['role']}")
    sentinels = redis_url.roles(reco_settings.REDIS_URL)
    if sentinels:
        found["primary"] = sentinels.get("primary")
        found["sentinels"] = sentinels["sentinels"]
        down = [s["address"] for s in sentinels["sentinels"] if not s["up"]]
        if down:
            found["problems"].append(f"Redis Sentinels do not answer: {', '.join(down)}")
        if len({s.get("primary") for s in sentinels["sentinels"] if s["up"]}) > 1:
            found["problems"].append("the Redis Sentinels name different primaries")
        for replica in sentinels["replicas"]:
            if replica["link"] != "ok" or "down" in replica["flags"]:
                found["problems"].append(
                    f"the Redis replica {replica['address']} is not in sync ({replica['flags']})"
                )
        if not sentinels["replicas"]:
            found["problems"].append("the Redis primary has no replica")
    return found


def spark_workers(master_ui: str, timeout: float = 3.0) -> dict[str, Any]:
    """The standalone master's workers (its web UI's JSON at ``master_ui``)."""
    url = master_ui.rstrip("/") + "/json/"
    with urllib.request.urlopen(url, timeout=timeout) as response:
        master = json.load(response)
    workers = [
        {
            "id": w.get("id"),
            "address": f"{w.get('host')}:{w.get('port')}",
            "state": w.get("state"),
            "cores": w.get("cores"),
            "cores_used": w.get("coresused"),
            "memory_mb": w.get("memory"),
        }
        for w in master.get("workers", [])
    ]
    alive = [w for w in workers if w["state"] == "ALIVE"]
    problems = []
    if not alive:
        problems.append("no Spark worker is alive")
    if not any(a.get("state") == "RUNNING" for a in master.get("activeapps", [])):
        problems.append("the Spark master runs no application (is the job submitted?)")
    return {
        "master": master.get("url"),
        "status": master.get("status"),
        "workers": alive,
        "dead_workers": len(workers) - len(alive),
        "problems": problems,
    }
