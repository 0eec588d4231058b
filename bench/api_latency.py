"""api_latency: ``GET /reco/api/recommendations/`` under concurrency, against a
bare Django view returning the same Redis value, in the same run.

Redis runs on a free port, loaded as a busy shop's: ``PRODUCTS`` products in
the catalog, each with its similar, bought-together and content lists, trending
and popular lists globally and per category, a bandit policy, and ``VISITORS``
visitors with a session in the database, a personal list, an affinity list and
a seen set. The demo shop (``DEBUG`` off, its full middleware) is served on a
free port by uvicorn (one process, Django's ASGI handler: the deployment of the
install guide), then by gunicorn (one process, four threads, Django's WSGI
handler: pages and API from a WSGI server, websockets from an ASGI server).

A client keeps 1, then 8 (``LEVELS``) keep-alive connections busy, each as one visitor
(a session cookie), asking for the visitor's list on a random product's page
(``?product=<id>&limit=8``); the peer asks the bare view (``bench/api_urls.py``)
with the same sessions: the same middleware, one Redis GET of the visitor's
stored list, returned as it is. Phases of ``PHASE_SECONDS`` alternate between
the two (``ROUNDS`` each, after a warm-up), so drift touches both alike.
Latency is measured by the client, from writing the request to reading the whole
response. ``value`` is the API's p50 in ms under uvicorn at the highest level;
``ratio`` is the API's throughput over the bare view's there; ``wsgi`` has the
same figures under gunicorn.
"""

from __future__ import annotations

import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from bench import percentile

PRODUCTS = 2000
VISITORS = 400
CATEGORIES = 18
# connections kept busy: one (a request alone), then several
LEVELS = tuple(int(n) for n in os.environ.get("RECO_BENCH_CONCURRENCY", "1,8").split(","))
WORKERS = int(os.environ.get("RECO_BENCH_WORKERS", "1"))
PHASE_SECONDS = 5.0
ROUNDS = 3
LIMIT = 8


def seed_redis(url: str, rng: random.Random) -> None:
    """The lists of a busy shop, written as the pipeline and the catalog sync write them."""
    import redis

    from reco_plugin import keys, strategies

    r = redis.Redis.from_url(url)
    pipe = r.pipeline(transaction=False)

    def listed(ids):
        return json.dumps(
            [{"product_id": str(p), "score": round(1 / (n + 1), 4)} for n, p in enumerate(ids)]
        )

    products = range(1, PRODUCTS + 1)
    for p in products:
        category = f"Genre {p % CATEGORIES}"
        pipe.hset(
            keys.catalog_product(str(p)),
            mapping={
                "title": f"Product {p}",
                "url": f"/products/{p}/",
                "price": f"{5 + p % 40}.99",
                "category": category,
                "image": "",
                "in_stock": "0" if p % 97 == 0 else "1",
            },
        )
        pipe.sadd(keys.catalog_index(), str(p))
        pipe.set(keys.product_similar(str(p)), listed(rng.sample(products, 30)))
        pipe.set(keys.product_fbt(str(p)), listed(rng.sample(products, 10)))
        pipe.set(keys.product_content(str(p)), listed(rng.sample(products, 20)))
        if p % 500 == 0:
            pipe.execute()
    for c in range(CATEGORIES):
        for window in ("short", "long"):
            pipe.set(keys.trending_list(window, f"Genre {c}"), listed(rng.sample(products, 50)))
    pipe.set(keys.trending(), listed(rng.sample(products, 50)))
    pipe.set(keys.trending_list("long", ""), listed(rng.sample(products, 50)))
    pipe.set(keys.popular(), listed(rng.sample(products, 50)))
    evidence = {name: (rng.uniform(5, 50), 500.0) for name in strategies.STRATEGIES}
    value = strategies.policy(evidence, exploration=0.05, seed=1)
    pipe.set(keys.bandit_policy(), json.dumps(value))
    pipe.set(keys.bandit_policy_version(), "bench-1")
    pipe.incr(keys.catalog_version())  # as every catalog sync does
    pipe.execute()


def seed_visitors(url: str, rng: random.Random) -> list[str]:
    """Sessions in the shop's database, and each visitor's lists in Redis; their session keys."""
    import redis
    from django.contrib.sessions.backends.db import SessionStore

    from reco_plugin import keys
    from reco_plugin.visitor import SESSION_KEY

    r = redis.Redis.from_url(url)
    pipe = r.pipeline(transaction=False)
    products = range(1, PRODUCTS + 1)
    sessions = []
    for n in range(VISITORS):
        opaque = f"bench{n:05d}"
        session = SessionStore()
        session[SESSION_KEY] = opaque
        session.create()
        sessions.append(session.session_key)
        visitor = f"s:{opaque}"
        items = rng.sample(products, 30)
        pipe.set(
            keys.visitor_recommendations(visitor),
            json.dumps([{"product_id": str(p), "score": 1.0} for p in items]),
        )
        pipe.set(
            keys.visitor_affinity(visitor),
            json.dumps([{"product_id": str(p), "score": 1.0} for p in rng.sample(products, 20)]),
        )
        pipe.zadd(keys.visitor_seen(visitor), {str(p): n for p in rng.sample(products, 50)})
    pipe.execute()
    return sessions


async def one_request(reader, writer, path: str, cookie: str, host: str) -> float:
    started = time.perf_counter()
    writer.write(
        f"GET {path} HTTP/1.1\r\nHost: {host}\r\nCookie: {cookie}\r\n"
        "Accept: application/json\r\n\r\n".encode()
    )
    head = await reader.readuntil(b"\r\n\r\n")
    status = head[9:12]
    length = 0
    for line in head.split(b"\r\n"):
        if line[:15].lower() == b"content-length:":
            length = int(line[15:])
    body = await reader.readexactly(length)
    took = time.perf_counter() - started
    if status != b"200":
        raise RuntimeError(f"{path}: HTTP {status.decode()} {body[:300]!r}")
    return took


async def phase(
    port: int, sessions: list[str], make_path, seconds: float, rng, concurrency: int
) -> list[float]:
    """``concurrency`` connections asking as fast as they are answered, for ``seconds``."""
    host = f"127.0.0.1:{port}"
    latencies: list[float] = []
    stop_at = time.perf_counter() + seconds

    async def client(n: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while time.perf_counter() < stop_at:
                session = sessions[(n + len(latencies) * concurrency) % len(sessions)]
                latencies.append(
                    await one_request(reader, writer, make_path(rng), f"sessionid={session}", host)
                )
        finally:
            writer.close()

    await asyncio.gather(*(client(n) for n in range(concurrency)))
    return latencies


def api_path(r: random.Random) -> str:
    return f"/reco/api/recommendations/?product={r.randint(1, PRODUCTS)}&limit={LIMIT}"


def bare_path(r: random.Random) -> str:
    return "/bench/bare/"


def serve(argv: Callable[[int], list[str]], env: dict) -> tuple[subprocess.Popen, int]:
    """Start a server of the shop (``argv(port)``) on a free port and wait for it."""
    from stack.services import REPO, free_port, port_open

    port = free_port()
    server = subprocess.Popen(
        argv(port),
        cwd=REPO,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    deadline = time.monotonic() + 30
    while not port_open(port):
        if server.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"the server did not start: {server.stderr.read().decode()[-2000:]}")
        time.sleep(0.1)
    return server, port


def measure(port: int, sessions: list[str], rng: random.Random, log, label: str) -> dict:
    """Each level of concurrency, the API and the bare view in alternating phases."""
    # one answer, checked: the API's list is a real blend
    sample = asyncio.run(_fetch_json(port, api_path(rng), sessions[0]))
    if len(sample["items"]) != LIMIT or sample["source"] != "personal":
        raise RuntimeError(f"unexpected API answer: {json.dumps(sample)[:500]}")
    log(f"{label} on :{port}; {ROUNDS} x {PHASE_SECONDS:.0f} s per view and concurrency")
    asyncio.run(phase(port, sessions, api_path, 1.5, rng, 4))  # warm-up
    asyncio.run(phase(port, sessions, bare_path, 1.5, rng, 4))
    levels = {}
    for level in LEVELS:
        found: dict[str, tuple[list[float], float]] = {"api": ([], 0.0), "bare": ([], 0.0)}
        for round_ in range(ROUNDS):
            order = [("api", api_path), ("bare", bare_path)]
            if round_ % 2:
                order.reverse()
            for name, make_path in order:
                started = time.perf_counter()
                got = asyncio.run(phase(port, sessions, make_path, PHASE_SECONDS, rng, level))
                took = time.perf_counter() - started
                latencies, seconds = found[name]
                found[name] = (latencies + got, seconds + took)
                log(
                    f"  {level} conn {name:<4} {len(got) / took:6.0f} req/s  "
                    f"p50 {percentile(got, 50) * 1000:6.2f} ms  "
                    f"p99 {percentile(got, 99) * 1000:6.2f} ms"
                )
        (api, api_seconds), (bare, bare_seconds) = found["api"], found["bare"]
        levels[str(level)] = {
            "p50_ms": round(percentile(api, 50) * 1000, 2),
            "p99_ms": round(percentile(api, 99) * 1000, 2),
            "mean_ms": round(statistics.fmean(api) * 1000, 2),
            "requests_per_second": round(len(api) / api_seconds),
            "peer_p50_ms": round(percentile(bare, 50) * 1000, 2),
            "peer_p99_ms": round(percentile(bare, 99) * 1000, 2),
            "peer_requests_per_second": round(len(bare) / bare_seconds),
            "ratio": round((len(api) / api_seconds) / (len(bare) / bare_seconds), 3),
        }
    return levels


# The servers measured, each with the bare view beside the API: the ASGI server
# the install guide runs everything with (Django's ASGI handler hops threads
# for each sync middleware), and a WSGI server for pages and API with the
# websockets left to the ASGI server.
SERVERS = {
    "uvicorn": f"uvicorn, {WORKERS} process, Django's ASGI handler",
    "gunicorn": f"gunicorn, {WORKERS} process x 4 threads, Django's WSGI handler",
}


def run(log: Callable[[str], None] = print) -> dict:
    from bench import gunicorn_argv, shop_in_process, uvicorn_argv
    from stack.services import Ports, Stack, stop_process

    argv = {
        "uvicorn": lambda port: uvicorn_argv(port, WORKERS),
        "gunicorn": lambda port: gunicorn_argv(port, WORKERS),
    }
    rng = random.Random(7)
    measured: dict[str, dict] = {}
    with tempfile.TemporaryDirectory(prefix="reco-bench-api-") as state:
        stack = Stack(Path(state), Ports.free(), log=lambda line: None)
        try:
            log("starting Redis on a free port...")
            stack.start_redis()
            env = shop_in_process(stack, Path(state), "bench.api_settings")
            log(f"loading {PRODUCTS} products and {VISITORS} visitors into Redis...")
            seed_redis(stack.redis_url, rng)
            sessions = seed_visitors(stack.redis_url, rng)
            for name in SERVERS:
                server, port = serve(argv[name], env)
                try:
                    measured[name] = measure(port, sessions, rng, log, name)
                finally:
                    stop_process(server, grace=10)
        finally:
            stack.stop()
    top, alone = str(max(LEVELS)), str(min(LEVELS))
    headline = measured["uvicorn"]
    return {
        "name": "api_latency",
        "value": headline[top]["p50_ms"],
        "unit": "ms",
        "p99_ms": headline[top]["p99_ms"],
        "concurrency": max(LEVELS),
        "peer": "bare Django view returning the visitor's stored list",
        "peer_value": headline[top]["peer_p50_ms"],
        "ratio": headline[top]["ratio"],
        "ratio_is": "throughput of the API / throughput of the bare view",
        "alone_p50_ms": headline[alone]["p50_ms"],
        "alone_p99_ms": headline[alone]["p99_ms"],
        "alone_peer_p50_ms": headline[alone]["peer_p50_ms"],
        "plugin_ms": round(headline[alone]["p50_ms"] - headline[alone]["peer_p50_ms"], 2),
        "plugin_ms_is": "p50 of the API minus p50 of the bare view, one connection",
        "levels": headline,
        "server": SERVERS["uvicorn"]
        + ", DEBUG off, the shop's middleware; client on the same 2 cores",
        "wsgi": {
            "server": SERVERS["gunicorn"],
            "alone_p50_ms": measured["gunicorn"][alone]["p50_ms"],
            "alone_peer_p50_ms": measured["gunicorn"][alone]["peer_p50_ms"],
            "levels": measured["gunicorn"],
        },
    }


async def _fetch_json(port: int, path: str, session: str) -> dict:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    try:
        writer.write(
            f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nCookie: sessionid={session}\r\n\r\n".encode()
        )
        head = await reader.readuntil(b"\r\n\r\n")
        length = next(
            int(line[15:])
            for line in head.split(b"\r\n")
            if line[:15].lower() == b"content-length:"
        )
        return json.loads(await reader.readexactly(length))
    finally:
        writer.close()


if __name__ == "__main__":
    print(json.dumps(run(log=lambda line: print(line, file=sys.stderr))))
