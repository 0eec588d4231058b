"""freshness: from the HTTP request that records a product view to the websocket
message carrying that visitor's new list, through the real stack
(ASGI shop -> Kafka -> Spark -> Redis -> relay -> channel layer -> websocket)."""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import time
from pathlib import Path

from stack.services import Ports, Stack
from stack.visitor import ShopVisitor


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    index = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[index]


def run(trials: int = 50, warm_ratings: int = 10000, log=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="reco-bench-") as state:
        stack = Stack(Path(state), Ports.free(), log=lambda line: None)
        log("starting the stack on free ports and warming it...")
        stack.start(warm=True, warm_limit=warm_ratings)
        try:
            visitor = ShopVisitor(stack.web_url)
            visitor.get("/products/1/")
            rng = random.Random(7)
            latencies: list[float] = []
            timeouts = 0
            with visitor.websocket() as ws:
                ws.send(json.dumps({"type": "subscribe", "limit": 8}))
                json.loads(ws.recv(timeout=10))
                for trial in range(trials):
                    product = rng.randint(1, 1682)
                    started = time.perf_counter()
                    visitor.get(f"/products/{product}/")
                    try:
                        while True:
                            message = json.loads(ws.recv(timeout=30))
                            if message.get("type") == "recommendations":
                                break
                        latencies.append(time.perf_counter() - started)
                    except TimeoutError:
                        timeouts += 1
                    if (trial + 1) % 10 == 0:
                        log(f"  {trial + 1}/{trials} trials")
                    time.sleep(0.2)
        except Exception:
            log(stack.dump_logs(30))
            raise
        finally:
            stack.stop()
    return {
        "name": "freshness",
        "value": round(percentile(latencies, 50) * 1000, 1),
        "unit": "ms (p50)",
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p95_ms": round(percentile(latencies, 95) * 1000, 1),
        "mean_ms": round(statistics.mean(latencies) * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1),
        "trials": len(latencies),
        "timeouts": timeouts,
    }
