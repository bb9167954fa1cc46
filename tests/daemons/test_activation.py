"""Sockets from systemd: checked against the daemon's socket names as `[listen]` is, and the
LISTEN_* variables gone before anything the daemon runs could see them."""

import os
import socket
import subprocess
import sys
import xmlrpc.client

import pytest

from support.inetkit import _ACTIVATE, binary


def listening():
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    s.listen()
    return s


def test_programs_the_daemon_runs_never_see_listen_variables(daemons):
    """rpcd passes the variables a method lists through to its command: LISTEN_* are not
    there to pass (PATH, listed alike, is)."""
    with listening() as s:
        config = ('[[method]]\nname = "env"\nargv = ["/usr/bin/env"]\npublic = true\n'
                  'env = ["PATH", "LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"]\n')
        daemons.activate("rpcd", [("rpc", s)], config=config)
        proxy = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{s.getsockname()[1]}/RPC2")
        out = proxy.env()
    assert "PATH=" in out, out
    assert "LISTEN_" not in out, out


@pytest.mark.parametrize("name, words", [("pop3x", "pop3 and pop3s"), ("pop3s", "needs TLS")])
def test_sockets_from_systemd_are_checked_as_listen_is(tmp_path, name, words):
    conf = tmp_path / "pop3d.toml"
    conf.write_text("")
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("LISTEN_", "NOTIFY_", "CREDENTIALS_", "JOURNAL_"))}
    env.update({"LISTEN_FDS": "1", "LISTEN_FDNAMES": name})
    with listening() as s:
        out = subprocess.run([sys.executable, "-c", _ACTIVATE, str(s.fileno()),
                              str(binary("inetkit-pop3d")), "-c", str(conf)],
                             pass_fds=(s.fileno(),), env=env, capture_output=True, text=True,
                             timeout=30)
    assert out.returncode != 0
    assert f'socket "{name}"' in out.stderr and words in out.stderr, out.stderr
