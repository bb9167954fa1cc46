"""System test of inetkit-dns-forwarder: install, point the config at an authoritative server
(NSD on the host's loopback, which the container shares), enable the socket, and resolve names
from the host with dig through the socket-activated unit."""

from __future__ import annotations

import re
import subprocess
import time

import pytest

from support.nsd import Nsd

from .container import busy_ports

SERVICE = "inetkit-dns-forwarder.service"
SOCKET = "inetkit-dns-forwarder.socket"
CONFIG = "/etc/inetkit/dns-forwarder.toml"
DYNAMIC_UIDS = range(61184, 65520)


def dig(*args: str, server: str = "127.0.0.1") -> str:
    return subprocess.run(["dig", f"@{server}", "+time=5", "+tries=2", *args],
                          capture_output=True, text=True, timeout=60).stdout


def answer_data(out: str) -> list[str]:
    """The data of the answer section's records."""
    data, section = [], False
    for line in out.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            section = True
        elif not line.strip() or line.startswith(";"):
            section = False
        elif section:
            data.append(line.split()[-1])
    return data


@pytest.fixture(scope="module")
def forwarder(inetkit, tmp_path_factory):
    busy = busy_ports([53])
    assert not busy, f"something on the host holds {busy}; the unit listens on 127.0.0.1:53"
    c = inetkit
    with Nsd(tmp_path_factory.mktemp("nsd")) as nsd:
        original = c.run("cat", CONFIG).stdout
        c.write(CONFIG, original + f'\n[[upstream]]\naddress = "127.0.0.1:{nsd.port}"\n')
        c.run("inetkit-dns-forwarder", "--check-config")
        c.systemctl("enable", "--now", SOCKET)
        yield c, nsd
        c.systemctl("disable", "--now", SOCKET, SERVICE)
        c.write(CONFIG, original)


def test_default_config_is_valid(inetkit):
    out = inetkit.run("inetkit-dns-forwarder", "--check-config").stdout.strip()
    assert out == f"{CONFIG}: ok"


def test_security_exposure(inetkit):
    out = inetkit.run("systemd-analyze", "security", "--no-pager", SERVICE).stdout
    exposure = float(re.search(rf"Overall exposure level for {SERVICE}: ([0-9.]+)", out)[1])
    print(f"{SERVICE} exposure {exposure}")
    assert exposure <= 1.5, out


def test_resolves_through_the_socket_activated_unit(forwarder):
    c, nsd = forwarder
    assert c.systemctl("is-active", SERVICE, check=False) == "inactive"
    out = dig("www.example.test", "A")
    assert "status: NOERROR" in out and answer_data(out) == ["192.0.2.10"]
    assert c.systemctl("is-active", SERVICE) == "active"
    assert answer_data(dig("+tcp", "www.example.test", "AAAA")) == ["2001:db8::10"]
    assert answer_data(dig("www.example.test", "A", server="::1")) == ["192.0.2.10"]
    # The TC→TCP path to the upstream, and truncation towards a small-buffer client.
    out = dig("+tcp", "big.example.test", "TXT")
    assert len(answer_data(out)) == 40
    assert " tc" in dig("+ignore", "+bufsize=512", "big.example.test", "TXT")
    assert "status: NXDOMAIN" in dig("nothing.example.test", "A")


def test_runs_as_a_dynamic_user_in_its_sandbox(forwarder):
    c, nsd = forwarder
    dig("www.example.test", "A")
    props = c.show(SERVICE, "DynamicUser", "Type", "MainPID")
    assert props["DynamicUser"] == "yes" and props["Type"] == "notify"
    status = c.run("cat", f"/proc/{props['MainPID']}/status").stdout
    fields = {k: v.strip() for k, _, v in (line.partition(":") for line in status.splitlines())}
    assert all(int(u) in DYNAMIC_UIDS for u in fields["Uid"].split())
    assert fields["NoNewPrivs"] == "1" and fields["Seccomp"] == "2"
    assert int(fields["CapEff"], 16) == 0
    # Statistics in the unit's status line (sent within a second of a change).
    deadline = time.monotonic() + 10
    while "queries" not in c.show(SERVICE, "StatusText")["StatusText"]:
        assert time.monotonic() < deadline, c.show(SERVICE, "StatusText")
        time.sleep(0.2)


def test_reload_keeps_process_and_cache(forwarder):
    c, nsd = forwarder
    assert answer_data(dig("mixed.example.test", "A")) == ["192.0.2.12"]
    pid = c.show(SERVICE, "MainPID")["MainPID"]
    c.systemctl("reload", SERVICE)
    assert c.show(SERVICE, "MainPID")["MainPID"] == pid
    nsd.stop()
    # The upstream is gone; the answer comes from the cache that survived the reload.
    assert answer_data(dig("mixed.example.test", "A")) == ["192.0.2.12"]
