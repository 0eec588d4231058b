"""freshness: from the HTTP request that records a product view to the websocket
message carrying that visitor's new list, through the real stack
(ASGI shop -> Kafka -> Spark -> Redis -> relay -> channel layer -> websocket).

Each trial views the first item of the visitor's list and waits for the first
pushed list that no longer holds it (the pipeline leaves out what a visitor has
seen, whichever strategy filled the slot): a message that does not reflect the
view does not count. Run twice: on an idle shop, and under a steady background load of other
visitors' page views (200 events/s, straight to Kafka).
"""

from __future__ import annotations

import json
import random
import statistics
import tempfile
import threading
import time
from pathlib import Path

from bench import percentile
from reco_plugin import schema
from stack.services import Ports, Stack
from stack.visitor import ShopVisitor


def listed(message: dict) -> list[str]:
    return [i["product_id"] for i in message.get("items", [])]


def trials(stack: Stack, count: int, seed: int, log) -> tuple[list[float], int]:
    visitor = ShopVisitor(stack.web_url)
    rng = random.Random(seed)
    visitor.get(f"/products/{rng.randint(1, 1682)}/")
    latencies: list[float] = []
    timeouts = 0
    with visitor.websocket() as ws:
        ws.send(json.dumps({"type": "subscribe", "limit": 8}))
        last = json.loads(ws.recv(timeout=10))
        for trial in range(count):
            candidates = listed(last)
            product = candidates[0] if candidates else str(rng.randint(1, 1682))
            started = time.perf_counter()
            visitor.get(f"/products/{product}/")
            deadline = started + 30
            try:
                while True:
                    message = json.loads(ws.recv(timeout=max(0.01, deadline - time.perf_counter())))
                    if message.get("type") != "recommendations":
                        continue
                    last = message
                    if listed(message) and product not in listed(message):
                        break
                latencies.append(time.perf_counter() - started)
            except TimeoutError:
                timeouts += 1
            if (trial + 1) % 10 == 0:
                log(f"  {trial + 1}/{count} trials")
            time.sleep(0.2)
    return latencies, timeouts


def background_load(stack: Stack, rate: int, stop: threading.Event, sent: list[int]) -> None:
    from confluent_kafka import Producer

    producer = Producer({"bootstrap.servers": f"127.0.0.1:{stack.ports.kafka}", "linger.ms": 5})
    rng = random.Random(1)
    interval = 1.0 / rate
    next_at = time.perf_counter()
    while not stop.is_set():
        event = schema.make_event(
            schema.PAGE_VIEW, f"s:load-{rng.randint(1, 2000)}", str(rng.randint(1, 1682))
        )
        producer.produce(
            schema.topic_for(event["type"]), key=event["visitor_id"], value=schema.encode(event)
        )
        producer.poll(0)
        sent[0] += 1
        next_at += interval
        time.sleep(max(0.0, next_at - time.perf_counter()))
    producer.flush(30)


def summary(latencies: list[float]) -> dict:
    if not latencies:
        return {"p50_ms": None, "p95_ms": None, "mean_ms": None, "max_ms": None}
    return {
        "p50_ms": round(percentile(latencies, 50) * 1000, 1),
        "p95_ms": round(percentile(latencies, 95) * 1000, 1),
        "mean_ms": round(statistics.mean(latencies) * 1000, 1),
        "max_ms": round(max(latencies) * 1000, 1),
    }


def run(count: int = 50, warm_ratings: int = 10000, load_rate: int = 200, log=print) -> dict:
    with tempfile.TemporaryDirectory(prefix="reco-bench-") as state:
        stack = Stack(Path(state), Ports.free(), log=lambda line: None)
        log("starting the stack on free ports and warming it...")
        stack.start(warm=True, warm_limit=warm_ratings)
        try:
            log("idle shop:")
            idle, idle_timeouts = trials(stack, count, seed=7, log=log)
            log(f"under {load_rate} background events/s:")
            stop, sent = threading.Event(), [0]
            loader = threading.Thread(target=background_load, args=(stack, load_rate, stop, sent))
            loader.start()
            started = time.monotonic()
            try:
                time.sleep(3)  # let the load settle into the batches
                loaded, loaded_timeouts = trials(stack, count, seed=8, log=log)
            finally:
                stop.set()
                loader.join(60)
            achieved = sent[0] / (time.monotonic() - started)
        except Exception:
            log(stack.dump_logs(30))
            raise
        finally:
            stack.stop()
    idle_stats, loaded_stats = summary(idle), summary(loaded)
    return {
        "name": "freshness",
        "value": idle_stats["p50_ms"],
        "unit": "ms (p50)",
        **idle_stats,
        "trials": len(idle),
        "timeouts": idle_timeouts,
        "loaded_events_per_s": round(achieved),
        **{f"loaded_{k}": v for k, v in loaded_stats.items()},
        "loaded_trials": len(loaded),
        "loaded_timeouts": loaded_timeouts,
    }
