"""The local stack runner starts a crashed service again, with backoff."""

import os
import time
import uuid

import pytest

from stack import services
from stack.services import PYTHON, Ports, Service, Stack


def test_a_kraft_cluster_id_never_starts_with_a_dash(monkeypatch):
    # 0xf8 encodes to "-" first; Kafka's storage tool would read that id as an option.
    draws = iter([uuid.UUID(bytes=b"\xf8" + bytes(15)), uuid.UUID(bytes=b"\x10" + bytes(15))])
    monkeypatch.setattr(services.uuid, "uuid4", lambda: next(draws))
    assert services.cluster_id() == "EAAAAAAAAAAAAAAAAAAAAA"


def test_a_crashed_service_is_started_again_with_backoff(tmp_path):
    lines = []
    stack = Stack(tmp_path, Ports.free(), log=lines.append)
    service = Service(
        "flaky",
        [PYTHON, "-c", "import time; time.sleep(0.3)"],
        tmp_path / "flaky.log",
        ready=lambda: True,
    )
    try:
        stack._start(service)
        first_pid = service.process.pid
        service.process.wait(5)
        stack.watch()  # notices the exit, schedules a start in 1 s
        assert service.process.pid == first_pid and service.restarts == 0
        assert any("flaky exited with 0; starting it again in 1 s" in line for line in lines)
        deadline = time.monotonic() + 5
        while service.restarts == 0 and time.monotonic() < deadline:
            stack.watch()
            time.sleep(0.05)
        assert service.restarts == 1 and service.process.pid != first_pid
        service.process.wait(5)
        stack.watch()
        assert any("starting it again in 2 s" in line for line in lines)  # backoff doubles
    finally:
        stack.stop()


def test_processes_stopped_together_share_one_grace_then_are_killed():
    """One exits on SIGTERM at once, one ignores it: both are gone after
    one grace, not one grace each."""
    import subprocess

    polite = subprocess.Popen(["sleep", "60"], start_new_session=True)
    stubborn = subprocess.Popen(
        [
            PYTHON,
            "-c",
            "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); "
            "print('ready', flush=True); time.sleep(60)",
        ],
        stdout=subprocess.PIPE,
        start_new_session=True,
    )
    assert stubborn.stdout.readline() == b"ready\n"  # its SIGTERM handler is set
    started = time.monotonic()
    services.stop_processes([stubborn, polite], grace=1.0)
    took = time.monotonic() - started
    assert polite.returncode == -15 and stubborn.returncode == -9
    assert 1.0 <= took < 3.0, took
    for process in (polite, stubborn):
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            continue
        raise AssertionError(f"{process.pid}'s group is still there")


def test_a_quorum_is_stopped_together_after_the_services_started_later(tmp_path):
    """Services stop in the reverse order of their start; the nodes of one
    quorum together (one by one, the last would wait for a quorum it lost)."""
    lines = []
    stack = Stack(tmp_path, Ports.free(), log=lines.append)
    started = [
        Service(
            name,
            [PYTHON, "-c", "import time; time.sleep(60)"],
            tmp_path / f"{name}.log",
            ready=lambda: True,
            quorum=quorum,
        )
        for name, quorum in (("node-1", "q"), ("node-2", "q"), ("web", ""))
    ]
    try:
        for service in started:
            stack._start(service)
    except BaseException:
        stack.stop()
        raise
    stack.stop()
    stops = [line for line in lines if line.startswith("stopping ")]
    pid = {s.name: s.process.pid for s in started}
    assert stops == [
        f"stopping web (pid {pid['web']})",
        f"stopping node-1 (pid {pid['node-1']}), node-2 (pid {pid['node-2']})",
    ]
    assert stack.services == []
    assert all(s.process.returncode == -15 for s in started)


def test_a_service_run_at_a_lower_priority_yields_in_its_own_session_too(tmp_path):
    """A service runs in a session of its own; where the kernel schedules
    sessions as groups (sched_autogroup), its group's nice value is the one
    that weighs it against the web server, so both are set."""
    stack = Stack(tmp_path, Ports.free(), log=lambda line: None)
    service = Service(
        "background",
        [
            PYTHON,
            "-c",
            "import os, pathlib; autogroup = pathlib.Path('/proc/self/autogroup'); "
            "print(os.nice(0), autogroup.read_text().strip() if autogroup.exists() else '-')",
        ],
        tmp_path / "background.log",
        ready=lambda: True,
        nice=5,
    )
    stack._launch(service)
    assert service.process.wait(10) == 0
    own_nice, autogroup = service.log.read_text().split(" ", 1)
    assert int(own_nice) == os.nice(0) + 5
    if autogroup.strip() != "-":
        assert autogroup.strip().endswith("nice 5"), autogroup


@pytest.mark.skipif(os.geteuid() != 0, reason="starts its children as another user")
def test_services_started_together_without_privilege_all_yield():
    """Without CAP_SYS_ADMIN the kernel takes one change of a scheduling
    group's priority every 0.1 s (EAGAIN): three started at once each wait
    their turn, and all three are lowered."""
    import ctypes
    import subprocess

    libc = ctypes.CDLL(None, use_errno=True)

    def unprivileged_at_priority():
        os.setgid(65534)
        os.setuid(65534)
        libc.prctl(4, 1, 0, 0, 0)  # PR_SET_DUMPABLE: its /proc/self is its own again
        services.run_at_priority(5)

    children = [
        subprocess.Popen(
            ["cat", "/proc/self/autogroup"],
            start_new_session=True,
            preexec_fn=unprivileged_at_priority,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for _ in range(3)
    ]
    for child in children:
        out, err = child.communicate(timeout=10)
        assert out.strip().endswith("nice 5"), (out, err)
