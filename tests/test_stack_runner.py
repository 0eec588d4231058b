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


# A runner of ``python -m stack demo`` whose stack starts one service: a
# process that holds the web port, as the demo's web server would.
FAKE_RUNNER = """
import sys
import stack.__main__ as runner
from stack.services import PYTHON, Service, Stack

class OneService(Stack):
    def start(self, warm=True):
        holder = (
            "import socket, time; s = socket.socket(); "
            f"s.bind(('127.0.0.1', {self.ports.web})); s.listen(); time.sleep(120)"
        )
        self._start(Service("web", [PYTHON, "-c", holder], self.logs / "web.log", ready=lambda: True))

runner.Stack = OneService
sys.exit(runner.main(["demo", "--state-dir", sys.argv[1]]))
"""


def _fake_demo(tmp_path):
    import subprocess
    import sys

    from stack import running

    ports = Ports.free()
    env = {
        **os.environ,
        "PYTHONPATH": str(services.REPO),
        "RECO_KAFKA_PORT": str(ports.kafka),
        "RECO_KAFKA_CONTROLLER_PORT": str(ports.kafka_controller),
        "RECO_REDIS_PORT": str(ports.redis),
        "RECO_WEB_PORT": str(ports.web),
    }
    argv = [sys.executable, "-c", FAKE_RUNNER, str(tmp_path)]
    process = subprocess.Popen(
        argv, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True
    )
    deadline = time.monotonic() + 20
    while running.read(tmp_path) is None or not services.port_open(ports.web):
        assert process.poll() is None, process.stdout.read().decode()
        assert time.monotonic() < deadline, "the fake demo did not start"
        time.sleep(0.1)
    web = running.read(tmp_path)["services"][0]
    assert web["name"] == "web" and running.alive(web)
    return process, web, env, argv


def test_a_closed_terminal_stops_the_demo(tmp_path):
    """SIGHUP (the terminal closed) stops the services as Ctrl-C does; what
    the stop says goes to the stack's log, the terminal being gone."""
    import signal

    from stack import running

    process, web, _, _ = _fake_demo(tmp_path)
    try:
        process.send_signal(signal.SIGHUP)
        assert process.wait(30) == 0
        assert not running.alive(web)
        assert running.read(tmp_path) is None and not (tmp_path / running.RECORD).exists()
        assert f"stopping web (pid {web['pid']})" in (tmp_path / "logs" / "stack.log").read_text()
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
        if running.alive(web):
            os.kill(web["pid"], signal.SIGKILL)


def test_make_stop_stops_what_a_killed_runner_left(tmp_path):
    """A runner killed with SIGKILL leaves its services running: a new start
    says so, and ``python -m stack stop`` stops them by their recorded ids."""
    import signal
    import subprocess

    from stack import running

    process, web, env, argv = _fake_demo(tmp_path)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the runner only: the service has its own session
        process.wait(10)
        assert running.alive(web)
        again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
        assert again.returncode == 2
        assert f"still runs (web pid {web['pid']}); `make stop` stops it" in again.stderr
        stopped = subprocess.run(
            [services.PYTHON, "-m", "stack", "stop", "--state-dir", str(tmp_path)],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert stopped.returncode == 0, stopped.stderr
        assert f"stopping what runs from {tmp_path}: web pid {web['pid']}" in stopped.stdout
        assert not running.alive(web) and not (tmp_path / running.RECORD).exists()
        # nothing left: said, and nothing signalled
        assert (
            "nothing is running"
            in subprocess.run(
                [services.PYTHON, "-m", "stack", "stop", "--state-dir", str(tmp_path)],
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            ).stdout
        )
    finally:
        if running.alive(web):
            os.kill(web["pid"], signal.SIGKILL)


def test_a_pid_given_to_another_process_since_is_not_stopped(tmp_path):
    """The record names a process by pid and start time: the same pid with
    another start time is someone else's."""
    import json
    import subprocess

    from stack import running

    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        stale = {"pid": other.pid, "started": running.started_at(other.pid) - 1}
        (tmp_path / running.RECORD).write_text(
            json.dumps({"runner": stale, "services": [{"name": "web", **stale}]})
        )
        assert running.read(tmp_path) is None
        assert running.stop(tmp_path, log=lambda line: None) == 0
        assert other.poll() is None
    finally:
        other.kill()
        other.wait()
