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
