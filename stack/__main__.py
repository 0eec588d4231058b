"""``python -m stack demo``: run the whole demo until Ctrl-C."""

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
    parser.add_argument("command", choices=["demo"])
    parser.add_argument(
        "--state-dir", default=os.environ.get("RECO_STATE_DIR", REPO / "var" / "demo")
    )
    parser.add_argument("--no-warm", action="store_true", help="skip replaying the history")
    args = parser.parse_args(argv)

    ports = Ports.from_env()
    busy = [f"{name} {port}" for name, port in vars(ports).items() if port_open(port)]
    if busy:
        print(f"ports in use: {', '.join(busy)}; set RECO_*_PORT (see README)", file=sys.stderr)
        return 2
    stack = Stack(Path(args.state_dir), ports)
    stopping = False

    def on_signal(signum, frame):
        nonlocal stopping
        if stopping:
            return
        stopping = True
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, on_signal)
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
