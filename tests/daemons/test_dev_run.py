"""dev/run, the local development loop: started with `--no-build` on the binaries the other
tests use, on ports of the test's choosing (INETKIT_DEV_PORT_BASE) and a state directory in
the test's tmp_path (INETKIT_DEV_DIR)."""

from __future__ import annotations

import os
import poplib
import random
import signal
import socket
import subprocess
from pathlib import Path

import pytest

from support.inetkit import ROOT, binary

DEV_RUN = ROOT / "dev" / "run"
# Every port dev/run listens on, as offsets from INETKIT_DEV_PORT_BASE.
OFFSETS = [7, 8, 9, 13, 19, 37, 110, 995, 143, 993, 587, 465, 21, 990, 53, 8000, 8443]


def _free(port: int) -> bool:
    for kind in (socket.SOCK_STREAM, socket.SOCK_DGRAM):
        with socket.socket(socket.AF_INET, kind) as s:
            # Still fails on a listening socket, but not on a closed connection's TIME_WAIT.
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                return False
    return True


def _port_base() -> int:
    """A base whose every dev/run port is free right now."""
    for _ in range(50):
        base = random.randrange(20000, 50000, 1000)
        if all(_free(base + offset) for offset in OFFSETS):
            return base
    pytest.skip("no free range of ports for dev/run")


@pytest.fixture
def dev_env(tmp_path):
    binary("inetkit-echo")  # the binaries exist (dev/run --no-build does not build them)
    return dict(os.environ, INETKIT_DEV_DIR=str(tmp_path / "dev"), INETKIT_DEV_PORT_BASE=str(_port_base()))


def _run_with_port_taken(env, offset):
    port = int(env["INETKIT_DEV_PORT_BASE"]) + offset
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", port))
        taken.listen()
        return subprocess.run(
            [str(DEV_RUN), "--no-build"], capture_output=True, text=True, env=env, timeout=120
        )


def test_a_taken_port_names_the_daemon_and_its_own_error(dev_env):
    result = _run_with_port_taken(dev_env, 110)
    assert result.returncode == 1, result.stdout + result.stderr
    port = int(dev_env["INETKIT_DEV_PORT_BASE"]) + 110
    failures = [line for line in result.stderr.splitlines() if "did not start" in line]
    assert len(failures) == 1, result.stderr
    assert failures[0].startswith("dev/run: inetkit-pop3d did not start: ")
    assert f"cannot listen on 127.0.0.1:{port} for pop3: Address already in use" in failures[0]
    # The daemons that did start were stopped on the way out: their ports are free again.
    base = int(dev_env["INETKIT_DEV_PORT_BASE"])
    assert _free(base + 143) and _free(base + 7)


def test_dev_mode_gives_the_demo_mail_to_the_runner_without_a_warning(dev_env):
    result = _run_with_port_taken(dev_env, 7)
    assert "inetkit-echo did not start" in result.stderr
    # The demo user's welcome message was delivered, without a warning about the missing
    # `inetkit` system user (dev/run gives the mail to whoever runs it).
    assert "inetkit` user" not in result.stderr, result.stderr
    new = Path(dev_env["INETKIT_DEV_DIR"]) / "mail" / "demo" / "new"
    assert len(list(new.iterdir())) == 1
    assert all(p.stat().st_uid == os.geteuid() for p in new.iterdir())


def test_each_run_starts_its_logs_afresh_and_serves_the_demo_user(dev_env):
    base = int(dev_env["INETKIT_DEV_PORT_BASE"])
    log = Path(dev_env["INETKIT_DEV_DIR"]) / "pop3d.log"
    _run_with_port_taken(dev_env, 110)
    assert "Address already in use" in log.read_text()

    run = subprocess.Popen(
        [str(DEV_RUN), "--no-build"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=dev_env
    )
    try:
        banner = []
        for line in run.stdout:
            banner.append(line)
            if line.startswith("Ctrl-C stops it"):
                break
        assert banner and banner[0].startswith("inetkit is running"), "".join(banner) + run.stderr.read()
        # The hints name this run's ports.
        assert f"pop3://127.0.0.1:{base + 110}/1" in "".join(banner)
        pop = poplib.POP3("127.0.0.1", base + 110, timeout=10)
        pop.user("demo")
        pop.pass_("demo")
        assert pop.stat()[0] == 1
        pop.quit()
        text = log.read_text()
        assert "Address already in use" not in text and "listening (tcp) socket=pop3" in text
    finally:
        run.send_signal(signal.SIGINT)
        run.wait(timeout=30)
    assert _free(base + 110)


def test_a_bad_port_base_is_refused(dev_env):
    env = dict(dev_env, INETKIT_DEV_PORT_BASE="60000")
    result = subprocess.run([str(DEV_RUN), "--no-build"], capture_output=True, text=True, env=env, timeout=30)
    assert result.returncode == 2 and "INETKIT_DEV_PORT_BASE must be between" in result.stderr
