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


# A runner of ``python -m stack demo`` whose stack starts the services named
# in its second argument (JSON: name, quorum, whether it ignores SIGTERM):
# each notes in its log when SIGTERM reaches it.
FAKE_RUNNER = """
import json, sys
import stack.__main__ as runner
from stack.services import PYTHON, Service, Stack

SERVICE = (
    "import signal, sys, time\\n"
    "def note(*_):\\n"
    "    print('SIGTERM', time.time(), flush=True)\\n"
    "    if sys.argv[1] != 'ignore': sys.exit(0)\\n"
    "signal.signal(signal.SIGTERM, note)\\n"
    "print('ready', flush=True)\\n"
    "while True: time.sleep(1)\\n"
)

class FakeStack(Stack):
    def start(self, warm=True):
        for name, quorum, ignore in json.loads(sys.argv[2]):
            self._start(Service(
                name, [PYTHON, "-c", SERVICE, "ignore" if ignore else "stop"],
                self.logs / f"{name}.log", ready=lambda: True, quorum=quorum, stop_timeout=2,
            ))

runner.Stack = FakeStack
sys.exit(runner.main(["demo", "--state-dir", sys.argv[1]]))
"""


def _fake_demo(tmp_path, started=(("web", "", False),), hangup=None, **popen):
    """The fake runner started, its services up. ``hangup``: what SIGHUP does
    to it before it sets its own handler (SIG_IGN: run under nohup); by
    default SIGHUP's default action, whatever this test process inherited
    (a CI run under nohup ignores it)."""
    import json
    import signal
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
    argv = [sys.executable, "-c", FAKE_RUNNER, str(tmp_path), json.dumps(started)]
    popen = popen or {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    hangup = signal.SIG_DFL if hangup is None else hangup
    process = subprocess.Popen(
        argv,
        env=env,
        start_new_session=True,
        preexec_fn=lambda: signal.signal(signal.SIGHUP, hangup),
        **popen,
    )
    deadline = time.monotonic() + 20
    logs = [tmp_path / "logs" / f"{name}.log" for name, _, _ in started]
    while True:
        found = running.read(tmp_path)
        # each service's SIGTERM handler set, the runner's banner out
        if (
            found
            and len(found["services"]) == len(started)
            and all(log.exists() and "ready" in log.read_text() for log in logs)
            and (tmp_path / "env.sh").exists()
        ):
            break
        assert process.poll() is None, "the fake demo exited"
        assert time.monotonic() < deadline, "the fake demo did not start"
        time.sleep(0.1)
    assert [s["name"] for s in found["services"]] == [name for name, _, _ in started]
    assert all(running.alive(s) for s in found["services"])
    return process, found["services"], env, argv


def _terminated(tmp_path, name):
    """When SIGTERM reached a fake service (time.time()), or None."""
    for line in (tmp_path / "logs" / f"{name}.log").read_text().splitlines():
        if line.startswith("SIGTERM "):
            return float(line.split()[1])
    return None


def _gone(process, recorded):
    import signal

    from stack import running

    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
    for service in recorded:
        if running.alive(service):
            os.killpg(service["pid"], signal.SIGKILL)


def test_a_closed_terminal_stops_the_demo(tmp_path):
    """SIGHUP (the terminal closed) stops the services as Ctrl-C does; what
    the stop says goes to the stack's log, the terminal being gone."""
    import signal

    from stack import running

    process, (web,), _, _ = _fake_demo(tmp_path)
    try:
        process.send_signal(signal.SIGHUP)
        assert process.wait(30) == 0
        assert not running.alive(web)
        assert running.read(tmp_path) is None and not (tmp_path / running.RECORD).exists()
        assert f"stopping web (pid {web['pid']})" in (tmp_path / "logs" / "stack.log").read_text()
    finally:
        _gone(process, [web])


def test_a_demo_run_under_nohup_outlives_its_terminal(tmp_path):
    import signal

    from stack import running

    process, (web,), _, _ = _fake_demo(tmp_path, hangup=signal.SIG_IGN)
    try:
        process.send_signal(signal.SIGHUP)
        time.sleep(1)
        assert process.poll() is None and running.alive(web)
        process.send_signal(signal.SIGTERM)
        assert process.wait(30) == 0 and not running.alive(web)
    finally:
        _gone(process, [web])


def test_a_terminal_closed_while_ctrl_c_stops_the_demo_stops_it_all(tmp_path):
    """Ctrl-C, then the window closed while the stop waits on a service: the
    rest of the stop is not cut short by the terminal that went (its writes
    fail with EIO)."""
    import pty
    import signal

    from stack import running

    leader, follower = pty.openpty()
    started = (("redis", "", False), ("spark", "", True))  # spark takes its 2 s grace
    process, recorded, _, _ = _fake_demo(
        tmp_path, started, stdin=follower, stdout=follower, stderr=follower
    )
    os.close(follower)
    try:
        process.send_signal(signal.SIGINT)
        deadline = time.monotonic() + 10
        while _terminated(tmp_path, "spark") is None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _terminated(tmp_path, "spark") is not None  # the stop is under way
        os.close(leader)  # the window closes: the terminal hangs up
        process.send_signal(signal.SIGHUP)
        assert process.wait(30) == 0
        assert not any(running.alive(s) for s in recorded)
        assert _terminated(tmp_path, "redis") is not None  # stopped, not left behind
        assert not (tmp_path / running.RECORD).exists()
        assert "stopping redis" in (tmp_path / "logs" / "stack.log").read_text()
    finally:
        _gone(process, recorded)


def test_make_stop_stops_what_a_killed_runner_left_as_the_runner_would(tmp_path):
    """A runner killed with SIGKILL leaves its services running: a new start
    refuses, naming them, and ``python -m stack stop`` stops them by their
    recorded ids: the last started first, a quorum's members together."""
    import signal
    import subprocess

    from stack import running

    started = (("node-1", "q", False), ("node-2", "q", False), ("web", "", False))
    process, recorded, env, argv = _fake_demo(tmp_path, started)
    try:
        os.killpg(process.pid, signal.SIGKILL)  # the runner only: each service has its own session
        process.wait(10)
        assert all(running.alive(s) for s in recorded)
        again = subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)
        assert again.returncode == 2
        described = ", ".join(f"{s['name']} pid {s['pid']}" for s in recorded)
        assert f"still runs ({described}); `make stop` stops it" in again.stderr
        stop = [services.PYTHON, "-m", "stack", "stop", "--state-dir", str(tmp_path)]
        stopped = subprocess.run(stop, env=env, capture_output=True, text=True, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert f"stopping what runs from {tmp_path}: {described}" in stopped.stdout
        assert not any(running.alive(s) for s in recorded)
        assert not (tmp_path / running.RECORD).exists()
        at = {name: _terminated(tmp_path, name) for name, _, _ in started}
        assert at["web"] < at["node-1"] and at["web"] < at["node-2"]
        assert abs(at["node-1"] - at["node-2"]) < 0.5  # together, not one grace apart
        # nothing left: said, and nothing signalled
        nothing = subprocess.run(stop, env=env, capture_output=True, text=True, timeout=60)
        assert nothing.returncode == 0 and "nothing is running" in nothing.stdout
    finally:
        _gone(process, recorded)


def test_make_stop_asks_a_live_runner_to_stop_its_services(tmp_path):
    """A runner out of reach (another terminal) is sent SIGTERM, and stops
    its services itself, in order."""
    import subprocess

    from stack import running

    process, recorded, env, _ = _fake_demo(tmp_path, (("redis", "", False), ("web", "", False)))
    try:
        stop = [services.PYTHON, "-m", "stack", "stop", "--state-dir", str(tmp_path)]
        stopped = subprocess.run(stop, env=env, capture_output=True, text=True, timeout=120)
        assert stopped.returncode == 0, stopped.stderr
        assert f"runner pid {process.pid}" in stopped.stdout
        assert process.wait(10) == 0  # it stopped as on Ctrl-C
        assert b"stopping web" in process.stdout.read()
        assert not any(running.alive(s) for s in recorded)
        assert _terminated(tmp_path, "web") < _terminated(tmp_path, "redis")
    finally:
        _gone(process, recorded)


def test_a_pid_given_to_another_process_since_is_not_stopped(tmp_path):
    """The record names a process by pid, start time and boot: the same pid
    with another start time, or from another boot, is someone else's."""
    import json
    import subprocess

    from stack import running

    other = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        for stale in (
            {**running.process(other.pid), "started": running.started_at(other.pid) - 1},
            {**running.process(other.pid), "boot": "an earlier boot"},
        ):
            (tmp_path / running.RECORD).write_text(
                json.dumps({"runner": stale, "services": [{"name": "web", "quorum": "", **stale}]})
            )
            assert running.read(tmp_path) is None
            assert running.stop(tmp_path, log=lambda line: None)
            assert other.poll() is None
        # a record that is not one is no record
        (tmp_path / running.RECORD).write_text("null")
        assert running.read(tmp_path) is None
    finally:
        other.kill()
        other.wait()


def test_make_stop_stops_what_a_service_gone_left_in_its_group(tmp_path):
    """A service whose own process died (the job's Python) while a child it
    started runs on (its JVM) is stopped by what it left: the child, known by
    its process group and session (the service's) and the stack's state
    directory in its environment. A group of the same shape started for
    another stack is left alone."""
    import json
    import signal
    import subprocess

    from stack import running

    def service(state_dir):
        """A leader that starts a child in its session and exits on a line."""
        leader = subprocess.Popen(
            ["bash", "-c", "sleep 300 </dev/null >/dev/null & echo $!; read line"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
            start_new_session=True,
            env={**os.environ, "RECO_STATE_DIR": str(state_dir)},
        )
        child = int(leader.stdout.readline())
        return leader, child, {"quorum": "", **running.process(leader.pid)}

    elsewhere = tmp_path / "another-stack"
    elsewhere.mkdir()
    ours, our_child, job = service(tmp_path)
    theirs, their_child, other = service(elsewhere)
    runner = subprocess.Popen(["true"])
    runner.wait()
    try:
        record = {
            "runner": {"pid": runner.pid, "started": 0, "boot": running._boot()},
            "services": [{"name": "job", **job}, {"name": "other", **other}],
        }
        (tmp_path / running.RECORD).write_text(json.dumps(record))
        assert running.read(tmp_path) is not None  # the leaders run
        for leader in (ours, theirs):
            leader.communicate("\n", timeout=10)
        assert not running.alive(job) and not running.alive(other)
        assert running.started_at(our_child) and running.started_at(their_child)
        assert running.read(tmp_path) is not None  # what they left runs

        said = []
        assert running.stop(tmp_path, log=said.append)
        assert said == [
            f"stopping what runs from {tmp_path}: what job (pid {ours.pid}, gone) left: "
            f"pid {our_child}"
        ]
        deadline = time.monotonic() + 10
        while running.started_at(our_child) and time.monotonic() < deadline:
            time.sleep(0.1)
        assert running.started_at(our_child) is None
        assert running.started_at(their_child) is not None
        assert not (tmp_path / running.RECORD).exists()
    finally:
        for pid in (our_child, their_child):
            if running.started_at(pid):
                os.kill(pid, signal.SIGKILL)


def test_free_ports_are_under_the_ephemeral_range_and_never_handed_out_twice():
    """Ports the kernel gives to outgoing connections (and to bind(0)) are
    not chosen: a client took such a port before the web server it was for
    could bind it."""
    import socket

    low = services._ephemeral_low()
    first, second = services.free_ports(40), services.free_ports(40)
    assert len(set(first) | set(second)) == 80
    assert all(services.LOWEST_PORT <= port < low for port in first + second)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))  # an ephemeral port, as a client's would be
        assert taken.getsockname()[1] >= low
    for port in first:  # each is free: bindable
        with socket.socket() as s:
            s.bind(("127.0.0.1", port))


def test_the_demo_web_server_logs_each_request_and_the_test_servers_none(tmp_path, monkeypatch):
    started = []
    monkeypatch.setattr(Stack, "_start", lambda self, service: started.append(service.argv))
    Stack(tmp_path, Ports.free()).start_web()
    Stack(tmp_path, Ports.free(), access_log=True).start_web()
    assert "--no-access-log" in started[0] and "--access-log" not in started[0]
    assert "--access-log" in started[1] and "--no-access-log" not in started[1]
