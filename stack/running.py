"""What a stack runner started, on disk: so that a runner that died without
stopping its services (a SIGKILL) leaves a record ``python -m stack stop``
can stop them by, and a new start on the same state refuses to start a
second copy beside them.

A process is named by its pid, its start time (``/proc/<pid>/stat``) and the
boot it started in: a pid the kernel gave to another process since does not
match, and is never signalled.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import time
from collections.abc import Callable, Iterable, Sequence
from functools import cache
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

RECORD = "running.json"
# how long the runner has to stop its services in order (the job finishes its
# batch, the brokers shut down); then each group of services left, after
# SIGTERM, before SIGKILL
RUNNER_GRACE = 120.0
SERVICE_GRACE = 30.0


@cache
def _boot() -> str:
    """This boot's id (read once: it does not change while we run)."""
    with contextlib.suppress(OSError):
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    return ""


def _stat(pid: int) -> list[str] | None:
    """The fields of ``/proc/<pid>/stat`` after the command name (state,
    parent, process group, session, ...), or None when no such process runs
    (or it is a zombie)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name, in parentheses, may hold spaces: the fields follow its ")"
    fields = stat[stat.rindex(")") + 2 :].split()
    return None if fields[0] == "Z" else fields


def started_at(pid: int) -> int | None:
    """The process's start time (clock ticks after boot), or None when no
    such process runs (or it is a zombie)."""
    fields = _stat(pid)
    return None if fields is None else int(fields[19])


def process(pid: int) -> dict[str, Any]:
    return {"pid": pid, "started": started_at(pid) or 0, "boot": _boot()}


def alive(entry: dict[str, Any]) -> bool:
    """The recorded process still runs (the same one, not its pid reused)."""
    return entry.get("boot") == _boot() and started_at(entry["pid"]) == entry["started"]


def _started_for(pid: int, state_dir: Path) -> bool:
    """The process was started for the stack in ``state_dir``: its
    environment (which a service's children inherit) holds the
    ``RECO_STATE_DIR`` the stack gives its services (an absolute path)."""
    try:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
    except OSError:
        return False
    return b"RECO_STATE_DIR=" + os.fsencode(str(state_dir)) in environ.split(b"\0")


def left_in_group(entry: dict[str, Any], state_dir: Path) -> list[dict[str, Any]]:
    """What is left of a service's process group once its leader is gone: a
    child it started (the job's JVM) that outlived it. A service leads its own
    session (pgid == sid == its pid); a process in that group and session,
    started after the leader in this boot, with the stack's state directory in
    its environment, is one. None while the leader runs, or when its pid is
    another process's now (the group is not the recorded one)."""
    pid = entry["pid"]
    if entry.get("boot") != _boot() or started_at(pid) is not None:
        return []
    here = Path(state_dir).resolve()
    found = []
    for path in Path("/proc").iterdir():
        if not path.name.isdigit():
            continue
        fields = _stat(int(path.name))
        if (
            fields is not None
            and fields[2] == fields[3] == str(pid)
            and int(fields[19]) >= entry["started"]
            and _started_for(int(path.name), here)
        ):
            # named by the start time read with its group: not read again
            found.append({"pid": int(path.name), "started": int(fields[19]), "boot": _boot()})
    return found


def record(state_dir: Path, services: Iterable[tuple[str, int, str]]) -> None:
    """This runner and its live services (name, pid, quorum), in start order;
    the record goes once none is left."""
    path = Path(state_dir) / RECORD
    live = [{"name": name, "quorum": quorum, **process(pid)} for name, pid, quorum in services]
    if not live:
        path.unlink(missing_ok=True)
        return
    temporary = path.with_suffix(".tmp")
    temporary.write_text(json.dumps({"runner": process(os.getpid()), "services": live}))
    temporary.replace(path)


def read(state_dir: Path) -> dict[str, Any] | None:
    """The record, when a process in it still runs (or one a service it names
    left behind: :func:`left_in_group`)."""
    with contextlib.suppress(OSError, ValueError, TypeError, KeyError, AttributeError):
        found = json.loads((Path(state_dir) / RECORD).read_text())
        if any(alive(entry) for entry in [found["runner"], *found["services"]]) or any(
            left_in_group(service, state_dir) for service in found["services"]
        ):
            return found
    return None


def describe(found: dict[str, Any], state_dir: Path) -> str:
    parts = [f"runner pid {found['runner']['pid']}"] if alive(found["runner"]) else []
    for service in found["services"]:
        if alive(service):
            parts.append(f"{service['name']} pid {service['pid']}")
        elif left := left_in_group(service, state_dir):
            pids = " ".join(str(e["pid"]) for e in left)
            parts.append(f"what {service['name']} (pid {service['pid']}, gone) left: pid {pids}")
    return ", ".join(parts)


def _wait_gone(entries: list[dict[str, Any]], seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while any(alive(e) for e in entries) and time.monotonic() < deadline:
        time.sleep(0.2)


def _terminate(entry: dict[str, Any]) -> None:
    if alive(entry):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(entry["pid"], signal.SIGTERM)


def _kill(entry: dict[str, Any]) -> None:
    if alive(entry):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(entry["pid"], signal.SIGKILL)


def _kill_group(entry: dict[str, Any]) -> None:
    """SIGKILL what is left of a service's process group (it leads its own
    session: pgid == pid), its leader seen alive moments ago: a child it
    left (the job's JVM) is in it. (While any process is in that group the
    kernel gives its id to no other process.)"""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(entry["pid"], signal.SIGKILL)


def stop_order(services: Sequence[T], quorum: Callable[[T], str]) -> list[list[T]]:
    """The services in the order to stop them: the last started first, the
    members of one quorum together (one by one, the last broker would wait
    for a quorum it lost)."""
    groups: list[list[T]] = []
    left = list(services)
    while left:
        last = left[-1]
        together = [s for s in left if s is last or (quorum(last) and quorum(s) == quorum(last))]
        groups.append(together)
        left = [s for s in left if all(s is not t for t in together)]
    return groups


def stop(state_dir: Path, log: Callable[[str], None] = print) -> bool:
    """Stop what the record names: the runner first, which stops its services
    in order; then each group of services still running, as the runner
    would: SIGTERM, and SIGKILL to their process groups after
    ``SERVICE_GRACE``. Whether nothing it names runs any more."""
    found = read(state_dir)
    if found is None:
        log(f"nothing is running from {state_dir}")
        return True
    log(f"stopping what runs from {state_dir}: {describe(found, state_dir)}")
    runner = found["runner"]
    if alive(runner):
        _terminate(runner)
        _wait_gone([runner], RUNNER_GRACE)
    if not alive(runner):
        for together in stop_order(found["services"], lambda s: s["quorum"]):
            live = [s for s in together if alive(s)]
            # what a service gone left (signalled one by one: without its
            # leader, the group's id may be given to another process)
            orphans = [e for s in together if not alive(s) for e in left_in_group(s, state_dir)]
            for entry in [*live, *orphans]:
                _terminate(entry)
            _wait_gone([*live, *orphans], SERVICE_GRACE)
            for service in live:
                _kill_group(service)
            for entry in orphans:
                _kill(entry)
            _wait_gone([*live, *orphans], 10)
    left = [e for s in found["services"] for e in left_in_group(s, state_dir)]
    still = [e for e in [runner, *found["services"], *left] if alive(e)]
    if still:
        log(f"still running: {', '.join(str(e['pid']) for e in still)}")
        return False
    (Path(state_dir) / RECORD).unlink(missing_ok=True)
    return True
