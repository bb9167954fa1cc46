"""inetkit-echo runs a plain TCP echo session on a thread pinned to its client's CPU (a lane), and
follows the client when it moves to another CPU: small round trips then need no wake-up across
CPUs. Seen from outside: the daemon's threads, their CPU affinity and the CPU time each used."""

import os
import signal
import socket
import subprocess
from contextlib import contextmanager
from pathlib import Path

import pytest

from support.inetkit import accept_yes, connect_when_listening, recv_exact

CONFIG = '[listen]\necho = ["127.0.0.1:0"]\n'


@contextmanager
def running_on(cpus):
    """This thread (and what it starts) on `cpus` only, for the block."""
    before = os.sched_getaffinity(0)
    os.sched_setaffinity(0, cpus)
    try:
        yield
    finally:
        os.sched_setaffinity(0, before)


def threads(pid):
    """{name: (allowed CPUs, nanoseconds run)} of the daemon's threads."""
    found = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        name = (task / "comm").read_text().strip()
        allowed = set()
        for line in (task / "status").read_text().splitlines():
            if line.startswith("Cpus_allowed_list:"):
                for part in line.split(":", 1)[1].strip().split(","):
                    low, _, high = part.partition("-")
                    allowed.update(range(int(low), int(high or low) + 1))
        run_ns = int((task / "schedstat").read_text().split()[0])
        found[name] = (allowed, run_ns)
    return found


def round_trips(sock, count):
    for i in range(count):
        message = (b"%06d" % i) * 10
        sock.sendall(message)
        assert recv_exact(sock, len(message)) == message


def two_cpus():
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        pytest.skip("needs two CPUs")
    return cpus[0], cpus[1]


def test_a_session_runs_on_its_clients_cpu_and_follows_it(daemons):
    a, b = two_cpus()
    d = daemons.start("echo", CONFIG)
    assert not [n for n in threads(d.pid) if n.startswith("echo-cpu")], "no lane before a client"
    with running_on({a}):
        s = socket.create_connection(d.addr("echo"), timeout=10)
        s.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        round_trips(s, 500)
    lanes = threads(d.pid)
    assert lanes[f"echo-cpu{a}"][0] == {a}, lanes
    assert f"echo-cpu{b}" not in lanes, lanes
    ran_a = lanes[f"echo-cpu{a}"][1]

    # The client moves: within 64 wake-ups, so does its session, to a lane of CPU b.
    with running_on({b}):
        round_trips(s, 1000)
    lanes = threads(d.pid)
    assert lanes[f"echo-cpu{b}"][0] == {b}, lanes
    on_a = lanes[f"echo-cpu{a}"][1] - ran_a
    on_b = lanes[f"echo-cpu{b}"][1]
    assert on_b > 3 * on_a, f"CPU b's lane ran {on_b} ns, CPU a's {on_a} ns after the move"
    s.close()


def test_a_daemon_allowed_one_cpu_serves_on_its_main_thread(daemons):
    a, _ = two_cpus()
    with running_on({a}):
        d = daemons.start("echo", CONFIG)
    with socket.create_connection(d.addr("echo"), timeout=10) as s:
        round_trips(s, 100)
    assert [n for n in threads(d.pid) if n.startswith("echo-cpu")] == []
    assert "cannot pin a thread" not in d.log()
    assert "cannot start a session thread" not in d.log()


def test_lanes_off_in_the_config_keep_sessions_on_the_main_thread(daemons):
    two_cpus()
    d = daemons.start("echo", CONFIG + "[tcp]\nlanes = false\n")
    with socket.create_connection(d.addr("echo"), timeout=10) as s:
        round_trips(s, 100)
        assert [n for n in threads(d.pid) if n.startswith("echo-cpu")] == []


def test_the_one_connection_of_an_accept_yes_process_stays_on_its_main_thread(tmp_path):
    """inetkit-echo-inetd@.service: a process per connection has nothing to gain from a lane
    (and its unit does not allow pinning one)."""
    two_cpus()
    conf = tmp_path / "echo.toml"
    conf.write_text("")
    activator, port = accept_yes("echo", conf, "echo")
    try:
        s = connect_when_listening(port)
        with s:
            round_trips(s, 100)
            children = subprocess.run(["pgrep", "-P", str(activator.pid)], capture_output=True,
                                      text=True).stdout.split()
            assert len(children) == 1, children
            assert [n for n in threads(int(children[0])) if n.startswith("echo-cpu")] == []
    finally:
        activator.send_signal(signal.SIGTERM)
        activator.wait(timeout=10)
