"""What a stack runner started, on disk: so that a runner that died without
stopping its services (a closed terminal before SIGHUP was handled, a
SIGKILL) leaves a record ``python -m stack stop`` can stop them by, and a
new start can say why its ports are taken.

A process is named by its pid and its start time (``/proc/<pid>/stat``): a
pid the kernel gave to another process since does not match, and is never
signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

RECORD = "running.json"
# how long the runner has to stop its services in order (the job finishes its
# batch, the brokers shut down), and then each service left
RUNNER_GRACE = 120.0
SERVICE_GRACE = 30.0


def started_at(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), or None when no
    such process runs (or it is a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name, in parentheses, may hold spaces: the fields follow its ")"
    fields = stat[stat.rindex(")") + 2 :].split()
    if fields[0] == "Z":
        return None
    return int(fields[19])


def process(pid: int) -> dict[str, int]:
    return {"pid": pid, "started": started_at(pid) or 0}


def alive(entry: dict[str, Any]) -> bool:
    """The recorded process still runs (the same one, not its pid reused)."""
    return started_at(entry["pid"]) == entry["started"]


def record(state_dir: Path, services: Iterable[tuple[str, int]]) -> None:
    """This runner and its live services (name, pid), in start order; the
    record goes once none is left."""
    path = Path(state_dir) / RECORD
    live = [{"name": name, **process(pid)} for name, pid in services]
    if not live:
        path.unlink(missing_ok=True)
        return
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"runner": process(os.getpid()), "services": live}))
    temporary.replace(path)


def read(state_dir: Path) -> dict[str, Any] | None:
    """The record, when a process in it still runs."""
    with contextlib.suppress(OSError, ValueError):
        found = json.loads((Path(state_dir) / RECORD).read_text())
        if any(alive(entry) for entry in [found["runner"], *found["services"]]):
            return found
    return None


def describe(found: dict[str, Any]) -> str:
    parts = [f"runner pid {found['runner']['pid']}"] if alive(found["runner"]) else []
    parts += [f"{s['name']} pid {s['pid']}" for s in found["services"] if alive(s)]
    return ", ".join(parts)


def _wait_gone(entries: list[dict[str, Any]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while any(alive(e) for e in entries) and time.monotonic() < deadline:
        time.sleep(0.2)


def _signal(entry: dict[str, Any], sig: int) -> None:
    if alive(entry):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(entry["pid"], sig)


def _kill_group(entry: dict[str, Any]) -> None:
    """SIGKILL what is left of a service's process group (it leads its own
    session: pgid == pid), its leader seen alive moments ago: a child it
    left (the job's JVM) is in it."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(entry["pid"], signal.SIGKILL)


def stop(state_dir: Path, log: Callable[[str], None] = print) -> int:
    """Stop what the record names: the runner first, which stops its services
    in order; then each service still running, the last started first:
    SIGTERM, and SIGKILL to its process group after ``SERVICE_GRACE``. How
    many processes were stopped."""
    found = read(state_dir)
    if found is None:
        log(f"nothing is running from {state_dir}")
        return 0
    log(f"stopping what runs from {state_dir}: {describe(found)}")
    stopped = [e for e in [found["runner"], *found["services"]] if alive(e)]
    runner = found["runner"]
    if alive(runner):
        _signal(runner, signal.SIGTERM)
        _wait_gone([runner], RUNNER_GRACE)
    # in the reverse order of their start, as the runner stops them: the job
    # finishes its batch while Redis and Kafka are still there
    for service in reversed(found["services"]):
        if alive(service):
            _signal(service, signal.SIGTERM)
            _wait_gone([service], SERVICE_GRACE)
            _kill_group(service)
            _wait_gone([service], 10)
    still = [e for e in stopped if alive(e)]
    if still:
        log(f"still running: {', '.join(str(e['pid']) for e in still)}")
    else:
        (Path(state_dir) / RECORD).unlink(missing_ok=True)
    return len(stopped) - len(still)
