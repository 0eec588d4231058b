"""ws_fanout: ``CLIENTS`` open websockets, every visitor's list updated at
once; how long until each browser has its new list.

Redis runs on a free port with a catalog and the lists the serving path reads;
the demo shop's ASGI application runs under uvicorn (one process, ``DEBUG``
off) with its Redis channel layer, and ``manage.py reco_push`` relays the
pipeline's update notices. ``CLIENTS`` visitors, each with a session, open a
websocket (real TCP connections from one asyncio client) and subscribe on a
product page; each gets its current list.

Then a new personal list is written for every visitor, as the streaming job
writes them, and the job's own ``notify`` publishes the update notices (chunks
of 500 visitor ids). Each client waits for a pushed list that starts with its
new items. ``value`` is the p95, over the clients, of the time from the notice
to that push; every client must get it (``delivered`` == ``CLIENTS``). The peer
is the same measure for a push to a single visitor (the floor: one
notice, one relay hop, one list read), in the same run.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import percentile, uvicorn_argv

CLIENTS = 1000
# uvicorn processes serving the websockets (one per core is the usual deployment)
WORKERS = int(os.environ.get("RECO_BENCH_WORKERS", "1"))
PRODUCTS = 500
ROUNDS = 3
TIMEOUT = 30.0


def seed(url: str, rng: random.Random) -> list[str]:
    import redis
    from django.contrib.sessions.backends.db import SessionStore

    from reco_plugin import keys
    from reco_plugin.visitor import SESSION_KEY

    r = redis.Redis.from_url(url)
    pipe = r.pipeline(transaction=False)
    for p in range(1, PRODUCTS + 1):
        pipe.hset(
            keys.catalog_product(str(p)),
            mapping={
                "title": f"Product {p}",
                "url": f"/products/{p}/",
                "price": "9.99",
                "category": f"Genre {p % 12}",
                "image": "",
                "in_stock": "1",
            },
        )
    pipe.set(
        keys.trending(),
        json.dumps(
            [{"product_id": str(p), "score": 1.0} for p in rng.sample(range(1, PRODUCTS), 40)]
        ),
    )
    pipe.incr(keys.catalog_version())  # as every catalog sync does
    pipe.execute()
    sessions = []
    for n in range(CLIENTS):
        session = SessionStore()
        session[SESSION_KEY] = f"fan{n:05d}"
        session.create()
        sessions.append(session.session_key)
    return sessions


def personal(product_ids: list[int]) -> str:
    return json.dumps(
        [{"product_id": str(p), "score": 10.0 - n / 10} for n, p in enumerate(product_ids)]
    )


async def fan_out(port: int, url: str, sessions: list[str], rng: random.Random, log) -> dict:
    import redis
    import websockets

    from reco_plugin import keys, strategies
    from spark_jobs.state import notify

    r = redis.Redis.from_url(url, decode_responses=True)
    # the policy puts the personal list first: a pushed list starts with it
    r.set(
        keys.bandit_policy(),
        json.dumps(
            {
                "strategies": list(strategies.STRATEGIES),
                "exploration": 0.0,
                "draws": [[1.0 if s == "personal" else 0.0 for s in strategies.STRATEGIES]],
            }
        ),
    )
    r.set(keys.bandit_policy_version(), "fanout")
    visitors = [f"s:fan{n:05d}" for n in range(len(sessions))]
    sockets = []
    connect_started = time.perf_counter()
    for start in range(0, len(sessions), 100):
        batch = await asyncio.gather(
            *(
                websockets.connect(
                    f"ws://127.0.0.1:{port}/ws/reco/",
                    additional_headers={"Cookie": f"sessionid={s}"},
                    origin=f"http://127.0.0.1:{port}",
                    open_timeout=30,
                    max_queue=None,
                )
                for s in sessions[start : start + 100]
            )
        )
        sockets += batch
    await asyncio.gather(
        *(ws.send(json.dumps({"type": "subscribe", "product": "1", "limit": 6})) for ws in sockets)
    )
    await asyncio.gather(*(ws.recv() for ws in sockets))
    log(
        f"  {len(sockets)} websockets open and subscribed in {time.perf_counter() - connect_started:.1f} s"
    )

    async def wait_for(ws, first: str, since: float) -> float | None:
        deadline = since + TIMEOUT
        while True:
            left = deadline - time.perf_counter()
            if left <= 0:
                return None
            try:
                message = json.loads(await asyncio.wait_for(ws.recv(), left))
            except TimeoutError:
                return None
            items = message.get("items") or []
            if (
                message.get("type") == "recommendations"
                and items
                and items[0]["product_id"] == first
            ):
                return time.perf_counter() - since

    results: dict[str, list] = {"all": [], "single": [], "missed": []}
    for round_ in range(ROUNDS):
        # one visitor alone: the floor
        new = rng.sample(range(2, PRODUCTS), 6)
        r.set(keys.visitor_recommendations(visitors[0]), personal(new))
        waiting = asyncio.ensure_future(wait_for(sockets[0], str(new[0]), time.perf_counter()))
        notify(r, [visitors[0]])
        results["single"].append(await waiting)
        # everyone at once
        firsts = []
        pipe = r.pipeline(transaction=False)
        for visitor in visitors:
            new = rng.sample(range(2, PRODUCTS), 6)
            firsts.append(str(new[0]))
            pipe.set(keys.visitor_recommendations(visitor), personal(new))
        pipe.execute()
        since = time.perf_counter()
        waits = [
            asyncio.ensure_future(wait_for(ws, first, since))
            for ws, first in zip(sockets, firsts, strict=True)
        ]
        await asyncio.sleep(0)
        notify(r, visitors)
        took_all = await asyncio.gather(*waits)
        got = [t for t in took_all if t is not None]
        results["all"] += got
        results["missed"].append(len(took_all) - len(got))
        log(
            f"  round {round_ + 1}: {len(got)}/{len(sockets)} pushed, p50 {percentile(got, 50) * 1000:.0f} ms, "
            f"p95 {percentile(got, 95) * 1000:.0f} ms, last {max(got) * 1000:.0f} ms"
            if got
            else "  nothing pushed"
        )
    await asyncio.gather(*(ws.close() for ws in sockets), return_exceptions=True)
    return results


def run(log: Callable[[str], None] = print) -> dict:
    from bench import shop_in_process
    from stack.services import PYTHON, REPO, Ports, Stack, free_port, port_open, stop_process

    rng = random.Random(11)
    with tempfile.TemporaryDirectory(prefix="reco-bench-ws-") as state:
        stack = Stack(Path(state), Ports.free(), log=lambda line: None)
        processes: list[subprocess.Popen] = []
        try:
            log("starting Redis on a free port...")
            stack.start_redis()
            env = shop_in_process(stack, Path(state))
            log(f"{CLIENTS} visitors with sessions...")
            sessions = seed(stack.redis_url, rng)
            port = free_port()
            logs = Path(state)
            for name, argv in (
                (
                    "web",
                    uvicorn_argv(port, WORKERS, "--ws-max-queue", "64"),
                ),
                ("push", [PYTHON, str(REPO / "manage.py"), "reco_push"]),
            ):
                with open(logs / f"{name}.log", "ab") as handle:
                    processes.append(
                        subprocess.Popen(
                            argv,
                            cwd=REPO,
                            env=env,
                            stdout=handle,
                            stderr=subprocess.STDOUT,
                            start_new_session=True,
                        )
                    )
            import redis

            from reco_plugin import keys

            r = redis.Redis.from_url(stack.redis_url)
            deadline = time.monotonic() + 30
            while not port_open(port) or not r.pubsub_numsub(keys.updates_channel())[0][1]:
                if time.monotonic() > deadline or any(p.poll() is not None for p in processes):
                    raise RuntimeError(
                        "the shop or the relay did not start:\n"
                        + (logs / "web.log").read_text()[-2000:]
                        + (logs / "push.log").read_text()[-2000:]
                    )
                time.sleep(0.2)
            try:
                results = asyncio.run(fan_out(port, stack.redis_url, sessions, rng, log))
            except Exception:
                log((logs / "web.log").read_text()[-3000:])
                raise
            if os.environ.get("RECO_BENCH_VERBOSE"):
                log((logs / "web.log").read_text()[-3000:])
                log((logs / "push.log").read_text()[-3000:])
        finally:
            for process in reversed(processes):
                stop_process(process, grace=10)
            stack.stop()
    got = results["all"]
    single = [t for t in results["single"] if t is not None]
    delivered = len(got)
    expected = CLIENTS * ROUNDS
    return {
        "name": "ws_fanout",
        "value": round(percentile(got, 95) * 1000) if got else None,
        "unit": "ms",
        "p50_ms": round(percentile(got, 50) * 1000) if got else None,
        "max_ms": round(max(got) * 1000) if got else None,
        "delivered": delivered,
        "expected": expected,
        "all_delivered": delivered == expected,
        "clients": CLIENTS,
        "rounds": ROUNDS,
        "peer": "one visitor's push alone",
        "peer_value": round(percentile(single, 50) * 1000) if single else None,
        "ratio": round(percentile(got, 95) / percentile(single, 50), 1) if got and single else None,
        "ratio_is": "p95 with every visitor updated / p50 of one visitor alone",
        "server": f"uvicorn, {WORKERS} process(es), DEBUG off, Redis channel layer (default capacity), one "
        "relay; the 1,000 clients on the same 2 cores",
    }


if __name__ == "__main__":
    print(json.dumps(run(log=lambda line: print(line, file=sys.stderr))))
