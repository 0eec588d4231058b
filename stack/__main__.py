"""``python -m stack demo`` (one of each part) or ``python -m stack cluster``
(the production topology: stack/cluster.py): run the demo shop until Ctrl-C,
SIGTERM or a closed terminal (SIGHUP). ``python -m stack stop``: stop a demo
(and a cluster) whose runner is gone or out of reach, by the process ids it
recorded (``stack.running``)."""

from __future__ import annotations

import argparse
import os
import signal
import sys
import time
from pathlib import Path

from . import running
from .services import REPO, Ports, Stack, StackError, port_open


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m stack")
    parser.add_argument("command", choices=["demo", "cluster", "stop"])
    parser.add_argument("--state-dir", default=os.environ.get("RECO_STATE_DIR"))
    parser.add_argument("--no-warm", action="store_true", help="skip replaying the history")
    args = parser.parse_args(argv)
    if args.command == "stop":
        places = (
            [Path(args.state_dir)]
            if args.state_dir
            else [REPO / "var" / "demo", REPO / "var" / "cluster"]
        )
        stopped = [running.stop(place.resolve()) for place in places]
        return 0 if all(stopped) else 1
    state_dir = Path(args.state_dir or REPO / "var" / args.command)

    if args.command == "cluster":
        from .cluster import Cluster, ClusterPorts

        ports = ClusterPorts.from_env()
        named = ports.all()
    else:
        ports = Ports.from_env()
        named = vars(ports)
    left = running.read(state_dir.resolve())
    if left is not None:
        print(
            f"the {args.command} started from {state_dir} still runs "
            f"({running.describe(left, state_dir.resolve())}); `make stop` stops it",
            file=sys.stderr,
        )
        return 2
    busy = [f"{name} {port}" for name, port in named.items() if port_open(port)]
    if busy:
        print(f"ports in use: {', '.join(busy)}; set RECO_*_PORT (see README)", file=sys.stderr)
        return 2
    stack = Cluster(state_dir, ports) if args.command == "cluster" else Stack(state_dir, ports)
    stack.access_log = True  # each request in logs/web.log
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        if signum == signal.SIGHUP:
            # the terminal is gone (during a stop too): what the stop says
            # goes to the stack's log, not to a terminal that would fail it
            log = os.open(stack.logs / "stack.log", os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
            os.dup2(log, sys.stdout.fileno())
            os.dup2(log, sys.stderr.fileno())
            os.close(log)
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
    # Ctrl-C too, set here: a shell script's background job starts with SIGINT
    # ignored, and that would be inherited
    signal.signal(signal.SIGINT, on_signal)
    # a closed terminal stops the stack too, unless started under nohup
    if signal.getsignal(signal.SIGHUP) is not signal.SIG_IGN:
        signal.signal(signal.SIGHUP, on_signal)
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
