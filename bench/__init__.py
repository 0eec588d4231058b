"""Benchmarks: ``python -m bench NAME [--json]`` (SPEC §9)."""

from __future__ import annotations

import contextlib
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path


@contextlib.contextmanager
def kafka_and_redis(log: Callable[[str], None]) -> Iterator[tuple]:
    """(stack, state directory): a real Kafka and Redis on free ports, in a
    temporary directory; their last log lines are shown if the benchmark fails,
    and both are stopped after it."""
    from stack.services import Ports, Stack

    with tempfile.TemporaryDirectory(prefix="reco-bench-") as state:
        stack = Stack(Path(state), Ports.free(), log=lambda line: None)
        try:
            log("starting Kafka and Redis on free ports...")
            stack.start_kafka()
            stack.start_redis()
            yield stack, Path(state)
        except Exception:
            log(stack.dump_logs(30))
            raise
        finally:
            stack.stop()


def shop_in_process(stack, state: Path, settings_module: str = "demo_shop.settings") -> dict:
    """Configure the demo shop in this process (``DEBUG`` off, its own SQLite
    file in ``state``, the stack's Redis), migrate it, and return the
    environment a server process of the same shop needs."""
    import os

    env = {
        **stack.env(),
        "DJANGO_SETTINGS_MODULE": settings_module,
        "RECO_DB_PATH": str(state / "shop.sqlite3"),
        "DJANGO_DEBUG": "0",
    }
    names = ("DJANGO_SETTINGS_MODULE", "RECO_DB_PATH", "RECO_REDIS_PORT", "RECO_KAFKA_PORT")
    os.environ.update({k: env[k] for k in (*names, "RECO_STATE_DIR", "DJANGO_DEBUG")})
    import django
    from django.core.management import call_command

    django.setup()
    call_command("migrate", verbosity=0, interactive=False)
    return env


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile of ``values`` (nearest rank)."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))]


def uvicorn_argv(
    port: int, workers: int = 1, *extra: str, app: str = "demo_shop.asgi:application"
) -> list[str]:
    """The demo shop served by uvicorn as a production shop would run it."""
    import sys

    return [
        sys.executable,
        "-m",
        "uvicorn",
        app,
        "--port",
        str(port),
        "--workers",
        str(workers),
        "--no-access-log",
        "--log-level",
        "warning",
        *extra,
    ]


def gunicorn_argv(port: int, workers: int = 1, threads: int = 4) -> list[str]:
    """The demo shop's pages and API served by gunicorn (WSGI, threads keep
    connections alive), as a shop that serves only websockets from an ASGI
    server would run them."""
    import sys

    return [
        sys.executable,
        "-m",
        "gunicorn",
        "demo_shop.wsgi:application",
        "--bind",
        f"127.0.0.1:{port}",
        "--workers",
        str(workers),
        "--worker-class",
        "gthread",
        "--threads",
        str(threads),
        "--keep-alive",
        "30",
        "--log-level",
        "warning",
    ]
