"""System test of inetkit-rpcd: install, add a method to /etc/inetkit/rpcd.toml, enable the
sockets, and call it from the host with xmlrpc.client and curl, over HTTP (8000) and HTTPS
(8443), as the transient user the unit runs it as, with logins from /etc/inetkit/users."""

from __future__ import annotations

import json
import re
import subprocess
import time
import xmlrpc.client

import pytest

from .container import busy_ports, unverified_tls

SERVICE = "inetkit-rpcd.service"
SOCKETS = ("inetkit-rpcd.socket", "inetkit-rpcs.socket")
PASSWORD = "rpc system test"
METHODS = """
[[method]]
name = "whoami"
help = "The user and groups the commands run as."
argv = ["/usr/bin/id"]

[[method]]
name = "say"
help = "Runs /bin/echo."
params = [{ name = "text", type = "string" }]
argv = ["/bin/echo"]
"""



def proxy(user: str | None = None, password: str = PASSWORD, https: bool = False):
    auth = f"{user}:{password}@" if user else ""
    if https:
        return xmlrpc.client.ServerProxy(f"https://{auth}127.0.0.1:8443/RPC2",
                                         context=unverified_tls(), allow_none=True)
    return xmlrpc.client.ServerProxy(f"http://{auth}127.0.0.1:8000/RPC2", allow_none=True)


@pytest.fixture(scope="module")
def rpcd(inetkit):
    busy = busy_ports([8000, 8443])
    assert not busy, f"something on the host holds {busy}; stop it"
    c = inetkit
    original = c.run("cat", "/etc/inetkit/rpcd.toml").stdout
    c.write("/etc/inetkit/rpcd.toml", original + METHODS)
    c.run("inetkit-rpcd", "--check-config")
    c.run("inetkit", "user", "add", "erin", input=PASSWORD + "\n")
    c.systemctl("enable", "--now", *SOCKETS)
    yield c
    c.systemctl("disable", "--now", *SOCKETS, SERVICE)
    c.write("/etc/inetkit/rpcd.toml", original)
    c.run("inetkit", "user", "del", "erin", check=False)


def test_list_methods_through_the_socket_activated_unit(rpcd):
    assert rpcd.systemctl("is-active", SERVICE, check=False) == "inactive"
    # Anonymous: the introspection methods only (nothing is public by default).
    assert proxy().system.listMethods() == [
        "system.listMethods", "system.methodHelp", "system.methodSignature",
        "system.multicall"]
    assert rpcd.systemctl("is-active", SERVICE) == "active"


def test_login_from_the_users_file_and_a_configured_method(rpcd):
    p = proxy("erin")
    methods = p.system.listMethods()
    assert {"host.uptime", "host.hostname", "say", "whoami"} <= set(methods)
    assert p.say("; rm -rf / $(reboot)") == "; rm -rf / $(reboot)\n"
    assert p.host.hostname() == rpcd.run("hostname").stdout.strip()
    # The command runs as the service's transient user, not as root or inetkit.
    pid = rpcd.show(SERVICE, "MainPID")["MainPID"]
    status = rpcd.run("cat", f"/proc/{pid}/status").stdout
    uid = next(line for line in status.splitlines() if line.startswith("Uid:")).split()[1]
    assert uid != "0"
    whoami = p.whoami()
    assert whoami.startswith(f"uid={uid}"), whoami
    # A user added while the service runs can log in at once: the file is read through the
    # inetkit supplementary group, not copied at start.
    rpcd.run("inetkit", "user", "add", "frank", input=PASSWORD + "\n")
    try:
        assert proxy("frank").say("hello") == "hello\n"
    finally:
        rpcd.run("inetkit", "user", "del", "frank")
    with pytest.raises(xmlrpc.client.ProtocolError) as e:
        proxy("erin", password="wrong").say("x")
    assert e.value.errcode == 401


def test_https_and_jsonrpc_with_curl(rpcd):
    p = proxy("erin", https=True)
    assert isinstance(p.host.time(), xmlrpc.client.DateTime)
    out = subprocess.run(
        ["curl", "-sSk", "-u", f"erin:{PASSWORD}", "-H", "Content-Type: application/json",
         "-d", '[{"jsonrpc":"2.0","method":"host.loadavg","id":1},'
               '{"jsonrpc":"2.0","method":"say","params":{"text":"json"},"id":2}]',
         "https://127.0.0.1:8443/jsonrpc"],
        capture_output=True, text=True, check=True, timeout=60).stdout
    replies = json.loads(out)
    assert len(replies[0]["result"]) == 3
    assert replies[1] == {"jsonrpc": "2.0", "result": "json\n", "id": 2}


def test_every_call_is_in_the_journal(rpcd):
    proxy("erin").say("logged")
    out = rpcd.run("journalctl", "--no-pager", "--boot", f"--unit={SERVICE}", "-o", "json").stdout
    entries = [json.loads(line) for line in out.splitlines() if line.strip()]
    # tracing-journald: the message, and each field as an upper-case journal field with its
    # default "F_" prefix.
    calls = [e for e in entries if e.get("MESSAGE") == "call ok" and e.get("F_METHOD") == "say"]
    assert any(e.get("F_USER") == "erin" and e.get("F_PEER") for e in calls), calls[:3]


def test_hardening_exposure(rpcd):
    out = rpcd.run("systemd-analyze", "security", "--no-pager", SERVICE).stdout
    exposure = float(re.search(rf"Overall exposure level for {SERVICE}: ([0-9.]+)", out)[1])
    print(f"{SERVICE} exposure {exposure}")
    assert exposure <= 1.5, out


def test_the_shipped_idle_exit_stops_the_idle_daemon_and_the_socket_starts_it_again(rpcd):
    """rpcd is shipped with idle_exit = 120, so an idle host runs no rpcd process; the socket
    stays with systemd and the next call starts it again (120 s shortened to 1 here)."""
    c = rpcd
    config = "/etc/inetkit/rpcd.toml"
    with_methods = c.run("cat", config).stdout
    assert "\nidle_exit = 120\n" in with_methods
    c.systemctl("stop", SERVICE)
    c.write(config, with_methods.replace("\nidle_exit = 120\n", "\nidle_exit = 1\n"))
    try:
        assert "system.multicall" in proxy().system.listMethods()
        first = c.show(SERVICE, "MainPID")["MainPID"]
        deadline = time.monotonic() + 30
        while c.systemctl("is-active", SERVICE, check=False) != "inactive":
            assert time.monotonic() < deadline, "the idle rpcd did not exit"
            time.sleep(0.1)
        assert c.show(SERVICE, "Result", "ExecMainStatus") == {
            "Result": "success", "ExecMainStatus": "0"}
        assert c.systemctl("is-active", *SOCKETS) == "active\nactive"
        assert proxy("erin").say("again") == "again\n"
        assert c.show(SERVICE, "MainPID")["MainPID"] not in ("0", first)
    finally:
        c.write(config, with_methods)
        c.systemctl("stop", SERVICE)
