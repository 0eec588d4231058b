"""``python -m bench NAME [--json]``; ``python -m bench all`` runs every available one."""

from __future__ import annotations

import argparse
import importlib
import json
import sys

AVAILABLE = {
    "middleware_overhead": "bench.middleware_overhead",
    "producer_throughput": "bench.producer_throughput",
    "freshness": "bench.freshness",
    "spark_throughput": "bench.spark_throughput",
    "replay_quality": "bench.replay_quality",
    "api_latency": "bench.api_latency",
    "ws_fanout": "bench.ws_fanout",
    "state_size": "bench.state_size",
}
# Named by the contract, measured from the issues that build what they measure.
PLANNED: tuple[str, ...] = ()


def run_one(name: str, as_json: bool) -> dict:
    module = importlib.import_module(AVAILABLE[name])
    log = (lambda line: print(line, file=sys.stderr)) if as_json else print
    result = module.run(log=log)
    print(json.dumps(result) if as_json else _row(result))
    return result


def _row(result: dict) -> str:
    extra = ", ".join(f"{k}={v}" for k, v in result.items() if k not in {"name", "value", "unit"})
    return f"{result['name']:<20} {result['value']:>10} {result['unit']:<10} {extra}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("name", choices=[*AVAILABLE, *PLANNED, "all"])
    parser.add_argument(
        "--json", action="store_true", help="print one JSON object as the last line"
    )
    args = parser.parse_args(argv)
    if args.name in PLANNED:
        print(f"benchmark {args.name!r} is not available in this version yet", file=sys.stderr)
        return 2
    names = list(AVAILABLE) if args.name == "all" else [args.name]
    if not args.json:
        print(f"{'benchmark':<20} {'value':>10} {'unit':<10} details")
    for name in names:
        run_one(name, args.json)
    return 0


if __name__ == "__main__":
    sys.exit(main())
