"""``python -m stack demo`` (one of each part) or ``python -m stack cluster``
(the production topology: stack/cluster.py): run the demo shop until Ctrl-C."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from .services import REPO, Ports, Stack, StackError, port_open


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack")
    parser.add_argument("command", choices=["demo", "cluster"])
    parser.add_argument("--state-dir", default=os.environ.get("RECO_STATE_DIR"))
    parser.add_argument("--no-warm", action="store_true", help="skip replaying the history")
    args = parser.parse_args(argv)
    state_dir = Path(args.state_dir or REPO / "var" / args.command)

    if args.command == "cluster":
        from .cluster import Cluster, ClusterPorts

        ports = ClusterPorts.from_env()
        named = ports.all()
    else:
        ports = Ports.from_env()
        named = vars(ports)
    busy = [f"{name} {port}" for name, port in named.items() if port_open(port)]
    if busy:
        print(f"ports in use: {', '.join(busy)}; set RECO_*_PORT (see README)", file=sys.stderr)
        return 2
    stack = Cluster(state_dir, ports) if args.command == "cluster" else Stack(state_dir, ports)
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    # Ctrl-C too, set here: a shell script's background job starts with SIGINT
    # ignored, and that would be inherited
    signal.signal(signal.SIGINT, on_signal)
    try:
        stack.start(warm=not args.no_warm)
        print()
        print(f"  Demo shop:  {stack.web_url}/")
        print(
            f"  Admin:      {stack.web_url}/admin/  (staff / "
            f"{os.environ.get('RECO_DEMO_STAFF_PASSWORD', 'reco-demo')})"
        )
        print(f"  API schema: {stack.web_url}/reco/api/schema/")
        print(f"  Logs:       {stack.logs}/")
        if args.command == "cluster":
            print(
                f"  Spark:      http://127.0.0.1:{ports.spark_ui[0]}/  (master: {stack.spark_master})"
            )
            print(f"  Kafka:      {stack.bootstrap}")
            print(f"  Redis:      {stack.redis_url}")
        print(
            f"  Status:     (. {stack.write_env_file()} && .venv/bin/python manage.py reco_status)"
        )
        print("  Ctrl-C stops everything.")
        while True:
            # A crashed service is started again (with backoff), not the end of the demo.
            stack.watch()
            time.sleep(1)
    except KeyboardInterrupt:
        print("\nstopping...")
        return 0
    except StackError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    finally:
        stack.stop()


if __name__ == "__main__":
    sys.exit(main())
