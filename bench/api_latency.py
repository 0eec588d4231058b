"""api_latency: ``GET /reco/api/recommendations/`` under concurrency, against
bare Django views returning the same Redis value, in the same run.

Redis runs on a free port, loaded as a busy shop's: ``PRODUCTS`` products in
the catalog, each with its similar, bought-together and content lists, trending
and popular lists globally and per category, a bandit policy, and ``VISITORS``
visitors with a session in the database, a personal list, an affinity list and
a seen set. The demo shop (``DEBUG`` off, its full middleware) is served on a
free port, one process each (``SERVERS``):

* by uvicorn with the plugin's ASGI handler (``reco_plugin.asgi``: the
  deployment of the install guide);
* by uvicorn with Django's own ASGI handler (a thread hop on each side of each
  sync middleware);
* by gunicorn (four threads, Django's WSGI handler: pages and API from a WSGI
  server, websockets from an ASGI server).

A client keeps 1, then 8 (``LEVELS``) keep-alive connections busy, each as one visitor
(a session cookie), asking for the visitor's list on a random product's page
(``?product=<id>&limit=8``); the peers ask the bare views (``bench/api_urls.py``)
with the same sessions and the same middleware: a sync view (one Redis GET of
the visitor's stored list, returned as it is) and, under the plugin's handler,
the same as an async view (the session through Django's async API, the list
through ``redis.asyncio``). Phases of ``PHASE_SECONDS`` alternate between them
(``ROUNDS`` each, after a warm-up), so drift touches all alike. Latency is
measured by the client, from writing the request to reading the whole
response. ``value`` is the API's p50 in ms under the plugin's handler at the
highest level; ``ratio`` is the API's throughput over the bare sync view's
there (``ratio_async``: over the bare async view's); ``django_handler`` and
``wsgi`` have the same figures under the other two servers.
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


def bare_async_path(r: random.Random) -> str:
    return "/bench/bare-async/"


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


def measure(
    port: int, sessions: list[str], rng: random.Random, log, label: str, views: dict
) -> dict:
    """Each level of concurrency, the API and its peers (``views``: name ->
    path maker) in alternating phases."""
    # one answer, checked: the API's list is a real blend
    sample = asyncio.run(_fetch_json(port, api_path(rng), sessions[0]))
    if len(sample["items"]) != LIMIT or sample["source"] != "personal":
        raise RuntimeError(f"unexpected API answer: {json.dumps(sample)[:500]}")
    log(f"{label} on :{port}; {ROUNDS} x {PHASE_SECONDS:.0f} s per view and concurrency")
    for make_path in views.values():  # warm-up
        asyncio.run(phase(port, sessions, make_path, 1.5, rng, 4))
    levels = {}
    for level in LEVELS:
        found: dict[str, tuple[list[float], float]] = {name: ([], 0.0) for name in views}
        for round_ in range(ROUNDS):
            order = list(views.items())
            if round_ % 2:
                order.reverse()
            for name, make_path in order:
                started = time.perf_counter()
                got = asyncio.run(phase(port, sessions, make_path, PHASE_SECONDS, rng, level))
                took = time.perf_counter() - started
                latencies, seconds = found[name]
                found[name] = (latencies + got, seconds + took)
                log(
                    f"  {level} conn {name:<10} {len(got) / took:6.0f} req/s  "
                    f"p50 {percentile(got, 50) * 1000:6.2f} ms  "
                    f"p99 {percentile(got, 99) * 1000:6.2f} ms"
                )
        api, api_seconds = found["api"]
        figures = {
            "p50_ms": round(percentile(api, 50) * 1000, 2),
            "p99_ms": round(percentile(api, 99) * 1000, 2),
            "mean_ms": round(statistics.fmean(api) * 1000, 2),
            "requests_per_second": round(len(api) / api_seconds),
        }
        for name, (latencies, seconds) in found.items():
            if name == "api":
                continue
            prefix = "peer" if name == "bare" else f"peer_{name.replace('-', '_')}"
            figures |= {
                f"{prefix}_p50_ms": round(percentile(latencies, 50) * 1000, 2),
                f"{prefix}_p99_ms": round(percentile(latencies, 99) * 1000, 2),
                f"{prefix}_requests_per_second": round(len(latencies) / seconds),
                f"{'ratio' if name == 'bare' else 'ratio_' + name.replace('-', '_')}": round(
                    (len(api) / api_seconds) / (len(latencies) / seconds), 3
                ),
            }
        levels[str(level)] = figures
    return levels


# The servers measured, each with the bare views beside the API: the ASGI
# server the install guide runs everything with, with the plugin's handler
# (``reco_plugin.asgi``: its reads in one thread hop), then with Django's own
# (a thread hop on each side of each sync middleware); and a WSGI server for
# pages and API with the websockets left to the ASGI server.
SERVERS = {
    "uvicorn": f"uvicorn, {WORKERS} process, the plugin's ASGI handler",
    "uvicorn-django": f"uvicorn, {WORKERS} process, Django's ASGI handler",
    "gunicorn": f"gunicorn, {WORKERS} process x 4 threads, Django's WSGI handler",
}
VIEWS = {
    "uvicorn": {"api": api_path, "bare": bare_path, "bare-async": bare_async_path},
    "uvicorn-django": {"api": api_path, "bare": bare_path},
    "gunicorn": {"api": api_path, "bare": bare_path},
}


def run(log: Callable[[str], None] = print) -> dict:
    from bench import gunicorn_argv, shop_in_process, uvicorn_argv
    from stack.services import Ports, Stack, stop_process

    argv = {
        "uvicorn": lambda port: uvicorn_argv(port, WORKERS),
        "uvicorn-django": lambda port: uvicorn_argv(
            port, WORKERS, app="bench.django_asgi:application"
        ),
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
                    measured[name] = measure(port, sessions, rng, log, name, VIEWS[name])
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
        "peer": "bare sync Django view returning the visitor's stored list",
        "peer_value": headline[top]["peer_p50_ms"],
        "ratio": headline[top]["ratio"],
        "ratio_is": "throughput of the API / throughput of the bare sync view",
        "ratio_async": headline[top]["ratio_bare_async"],
        "ratio_async_is": "throughput of the API / throughput of the bare async view",
        "alone_p50_ms": headline[alone]["p50_ms"],
        "alone_p99_ms": headline[alone]["p99_ms"],
        "alone_peer_p50_ms": headline[alone]["peer_p50_ms"],
        "alone_peer_async_p50_ms": headline[alone]["peer_bare_async_p50_ms"],
        # the plugin's own work, where the API and the bare view take the same
        # path through the server (a WSGI thread each, no hop)
        "plugin_ms": round(
            measured["gunicorn"][alone]["p50_ms"] - measured["gunicorn"][alone]["peer_p50_ms"], 2
        ),
        "plugin_ms_is": "p50 of the API minus p50 of the bare sync view, one connection, "
        "under gunicorn (both in one thread, no hop)",
        "levels": headline,
        "server": SERVERS["uvicorn"]
        + ", DEBUG off, the shop's middleware; client on the same 2 cores",
        "django_handler": {
            "server": SERVERS["uvicorn-django"],
            "alone_p50_ms": measured["uvicorn-django"][alone]["p50_ms"],
            "alone_peer_p50_ms": measured["uvicorn-django"][alone]["peer_p50_ms"],
            "levels": measured["uvicorn-django"],
        },
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
