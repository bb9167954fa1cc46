"""System test of inetkit-echo: the package as a sysadmin installs it on a fresh Debian 12,
its sockets enabled with systemctl, and clients on the host talking to them.

The tests run in file order and share one container; each leaves the units as it found them
where it changes them.
"""

from __future__ import annotations

import re
import selectors
import socket
import ssl
import subprocess
import time

import pytest

from .container import busy_ports

# The ports of the shipped units, and the TLS socket this test adds.
PORTS = [7, 9, 13, 19, 37]
TLS_PORT = 7007
# systemd's range for DynamicUser= (systemd.exec(5)).
DYNAMIC_UIDS = range(61184, 65520)
SERVICE = "inetkit-echo.service"


def nc(*args: str, data: bytes = b"", timeout: float = 20) -> bytes:
    """OpenBSD netcat on the host; returns what it received."""
    result = subprocess.run(["nc", *args], input=data, capture_output=True, timeout=timeout)
    assert result.returncode == 0, f"nc {' '.join(args)}: {result.returncode} {result.stderr!r}"
    return result.stdout


def tcp_echo(host: str = "127.0.0.1", port: int = 7, data: bytes = b"hello inetkit\n") -> bytes:
    # -N: shut down our side at the end of input, so the server's close ends nc.
    return nc("-N", "-w", "10", host, str(port), data=data)


def wait_for(predicate, what: str, timeout: float = 30):
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.1)


def proc_status(c, pid: str) -> dict[str, str]:
    """/proc/<pid>/status of a process in the container, read from inside."""
    text = c.run("cat", f"/proc/{pid}/status").stdout
    return {k: v.strip() for k, _, v in (line.partition(":") for line in text.splitlines())}


def assert_sandboxed(c, pid: str) -> None:
    """The process runs as a dynamic user, without capabilities, under seccomp."""
    status = proc_status(c, pid)
    uids = [int(u) for u in status["Uid"].split()]
    assert all(u in DYNAMIC_UIDS for u in uids), f"uids {uids} not in the dynamic range"
    assert status["NoNewPrivs"] == "1"
    assert status["Seccomp"] == "2"
    assert int(status["CapEff"], 16) == 0 and int(status["CapBnd"], 16) == 0


def main_pid(c) -> str:
    pid = c.show(SERVICE, "MainPID")["MainPID"]
    assert pid != "0", f"{SERVICE} has no main process"
    return pid


@pytest.fixture(scope="module")
def echo(inetkit):
    """The container with inetkit-echo.socket enabled and started, as the README says."""
    busy = busy_ports(PORTS + [TLS_PORT])
    assert not busy, (
        f"something on the host holds {busy}; the container shares the host's network. "
        "Stop it (xinetd?) and look with: ss -lntup"
    )
    inetkit.systemctl("enable", "--now", "inetkit-echo.socket")
    return inetkit


def test_default_config_is_valid(inetkit):
    out = inetkit.run("inetkit-echo", "--check-config").stdout.strip()
    assert out == "/etc/inetkit/echo.toml: ok"


def test_security_exposure(inetkit):
    out = inetkit.run("systemd-analyze", "security", "--no-pager", SERVICE).stdout
    exposure = float(re.search(rf"Overall exposure level for {SERVICE}: ([0-9.]+)", out)[1])
    print(f"{SERVICE} exposure {exposure}")
    assert exposure <= 1.5, out


def test_tcp_echo_starts_the_service(echo):
    assert echo.systemctl("is-active", "inetkit-echo.socket") == "active"
    data = b"hello inetkit\n" + bytes(range(256)) * 64
    assert tcp_echo(data=data) == data
    assert echo.systemctl("is-active", SERVICE) == "active"


def test_udp_echo(echo):
    # -w: UDP has no end; stop listening for answers after 3 idle seconds.
    assert nc("-u", "-w", "3", "127.0.0.1", "7", data=b"hello udp\n") == b"hello udp\n"


def test_ipv6_echo(echo):
    assert tcp_echo(host="::1") == b"hello inetkit\n"
    assert nc("-u", "-w", "3", "::1", "7", data=b"hello udp6\n") == b"hello udp6\n"


def test_service_runs_as_dynamic_user_in_its_sandbox(echo):
    tcp_echo()
    props = echo.show(SERVICE, "DynamicUser", "PrivateNetwork", "Type", "NotifyAccess")
    assert props == {
        "DynamicUser": "yes",
        "PrivateNetwork": "yes",
        "Type": "notify",
        "NotifyAccess": "main",
    }
    assert_sandboxed(echo, main_pid(echo))


def test_reload_keeps_the_process(echo):
    tcp_echo()
    pid = main_pid(echo)
    echo.systemctl("reload", SERVICE)
    assert echo.systemctl("is-active", SERVICE) == "active"
    assert main_pid(echo) == pid
    assert tcp_echo() == b"hello inetkit\n"


def test_tls_echo_with_the_snakeoil_credential(echo):
    """An echo-tls socket added by drop-in, as inetkit-echo(8) describes; the daemon gets the
    certificate through LoadCredential= and cannot read /etc/ssl/private itself."""
    c = echo
    c.write(
        "/etc/systemd/system/inetkit-echo-tls.socket",
        f"[Socket]\nListenStream=127.0.0.1:{TLS_PORT}\nFileDescriptorName=echo-tls\n"
        f"Service={SERVICE}\n\n[Install]\nWantedBy=sockets.target\n",
    )
    c.systemctl("daemon-reload")
    # systemd refuses to start a socket whose service runs (it could not hand it over).
    c.systemctl("stop", SERVICE)
    c.systemctl("enable", "--now", "inetkit-echo-tls.socket")
    try:
        client = subprocess.Popen(
            ["openssl", "s_client", "-connect", f"127.0.0.1:{TLS_PORT}", "-quiet"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        try:
            client.stdin.write(b"hello tls\n")
            client.stdin.flush()
            assert read_line(client.stdout, timeout=15) == b"hello tls\n"
        finally:
            client.kill()
            client.wait()

        served = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", TLS_PORT)))
        snakeoil = (c.root / "etc/ssl/certs/ssl-cert-snakeoil.pem").read_text()
        assert served == ssl.PEM_cert_to_DER_cert(snakeoil)
        # The key is unreadable to the service's user: it only has the credential's copy.
        pid = main_pid(c)
        uid = proc_status(c, pid)["Uid"].split()[0]
        denied = c.run(
            "setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups",
            "cat", "/etc/ssl/private/ssl-cert-snakeoil.key", check=False,
        )
        assert denied.returncode != 0 and "Permission denied" in denied.stderr

        # Another pair is one drop-in away, as inetkit-echo.toml(5) documents.
        c.run(
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2",
            "-subj", "/CN=other.example", "-keyout", "/etc/ssl/private/other.key",
            "-out", "/etc/ssl/certs/other.pem",
        )
        c.run("chmod", "600", "/etc/ssl/private/other.key")
        c.write(
            f"/etc/systemd/system/{SERVICE}.d/tls.conf",
            "[Service]\nLoadCredential=\n"
            "LoadCredential=tls-cert:/etc/ssl/certs/other.pem\n"
            "LoadCredential=tls-key:/etc/ssl/private/other.key\n",
        )
        c.systemctl("daemon-reload")
        c.systemctl("restart", SERVICE)
        served = ssl.PEM_cert_to_DER_cert(ssl.get_server_certificate(("127.0.0.1", TLS_PORT)))
        other = (c.root / "etc/ssl/certs/other.pem").read_text()
        assert served == ssl.PEM_cert_to_DER_cert(other)
    finally:
        c.run("rm", "-rf", f"/etc/systemd/system/{SERVICE}.d")
        c.systemctl("stop", SERVICE)
        c.systemctl("disable", "--now", "inetkit-echo-tls.socket")
        c.run("rm", "/etc/systemd/system/inetkit-echo-tls.socket")
        c.systemctl("daemon-reload")


def read_line(stream, timeout: float) -> bytes:
    sel = selectors.DefaultSelector()
    sel.register(stream, selectors.EVENT_READ)
    line = b""
    deadline = time.monotonic() + timeout
    while not line.endswith(b"\n"):
        if not sel.select(max(0.0, deadline - time.monotonic())):
            break
        chunk = stream.read1(4096)
        if not chunk:
            break
        line += chunk
    return line


def test_inetd_builtins_on_their_own_sockets(echo):
    c = echo
    builtins = ["inetkit-discard.socket", "inetkit-chargen.socket", "inetkit-daytime.socket", "inetkit-time.socket"]
    c.systemctl("stop", SERVICE)
    c.systemctl("enable", "--now", *builtins)
    try:
        # The first connection, to daytime, starts the daemon with all five sockets.
        daytime = re.compile(rb"[A-Z][a-z]+, \d+ [A-Z][a-z]+ \d{4} \d\d:\d\d:\d\d[^\n]*\r?\n")
        tcp = nc("-N", "-w", "10", "127.0.0.1", "13")
        assert daytime.fullmatch(tcp), tcp
        udp = nc("-u", "-w", "3", "127.0.0.1", "13", data=b"\n")
        assert daytime.fullmatch(udp), udp

        stamp = nc("-N", "-w", "10", "127.0.0.1", "37")
        assert len(stamp) == 4
        # RFC 868: seconds since 1900.
        assert abs(int.from_bytes(stamp, "big") - 2208988800 - time.time()) < 60

        with socket.create_connection(("127.0.0.1", 19), timeout=10) as s:
            lines = b""
            while lines.count(b"\n") < 3:
                lines += s.recv(4096)
        first = lines.split(b"\r\n")[0]
        assert first == bytes(range(32, 32 + 72)), first

        with socket.create_connection(("127.0.0.1", 9), timeout=10) as s:
            s.sendall(b"into the void\n" * 1000)
            s.shutdown(socket.SHUT_WR)
            assert s.recv(4096) == b""

        assert tcp_echo() == b"hello inetkit\n"
        assert_sandboxed(c, main_pid(c))
    finally:
        c.systemctl("stop", SERVICE)
        c.systemctl("disable", "--now", *builtins)


def test_stop_lets_an_open_session_finish(echo):
    c = echo
    tcp_echo()
    with socket.create_connection(("127.0.0.1", 7), timeout=10) as s:
        s.sendall(b"before\n")
        assert s.recv(100) == b"before\n"
        c.systemctl("stop", "--no-block", SERVICE)
        wait_for(lambda: c.systemctl("is-active", SERVICE, check=False) == "deactivating", "SIGTERM")
        # Draining: the open session is still served, new ones wait in the socket's backlog.
        s.sendall(b"during\n")
        assert s.recv(100) == b"during\n"
    wait_for(lambda: c.systemctl("is-active", SERVICE, check=False) == "inactive", "the stop", timeout=20)
    props = c.show(SERVICE, "Result", "ExecMainCode", "ExecMainStatus")
    # Exited (CLD_EXITED=1) with status 0 on its own, not killed after a timeout.
    assert props == {"Result": "success", "ExecMainCode": "1", "ExecMainStatus": "0"}, props
    # The socket stayed with systemd: the next client starts the daemon again.
    assert c.systemctl("is-active", "inetkit-echo.socket") == "active"
    assert tcp_echo() == b"hello inetkit\n"
    assert c.systemctl("is-active", SERVICE) == "active"


def test_idle_exit_under_systemd(echo):
    """With idle_exit set, the daemon leaves when idle and systemd, still holding the socket,
    starts it again on the next connection: nothing is refused meanwhile."""
    c = echo
    config = "/etc/inetkit/echo.toml"
    original = c.run("cat", config).stdout
    # Shipped so that an idle host runs no echo daemon (60 s: shortened here).
    assert "\nidle_exit = 60\n" in original
    c.systemctl("stop", SERVICE)
    c.write(config, original.replace("\nidle_exit = 60\n", "\nidle_exit = 1\n"))
    try:
        assert tcp_echo() == b"hello inetkit\n"
        first = c.show(SERVICE, "MainPID")["MainPID"]
        wait_for(lambda: c.systemctl("is-active", SERVICE, check=False) == "inactive",
                 "the idle daemon to exit", timeout=30)
        props = c.show(SERVICE, "Result", "ExecMainStatus")
        assert props == {"Result": "success", "ExecMainStatus": "0"}, props
        assert c.systemctl("is-active", "inetkit-echo.socket") == "active"
        assert tcp_echo(data=b"after idle exit\n") == b"after idle exit\n"
        assert c.show(SERVICE, "MainPID")["MainPID"] not in ("0", first)
    finally:
        c.write(config, original)
        c.systemctl("stop", SERVICE)


def test_inetd_pair_serves_one_process_per_connection(echo):
    c = echo
    # The resident daemon holds port 7 too; take it and its socket away first.
    c.systemctl("stop", SERVICE, "inetkit-echo.socket")
    try:
        c.systemctl("start", "inetkit-echo-inetd.socket")
        with socket.create_connection(("127.0.0.1", 7), timeout=10) as s:
            s.sendall(b"inetd style\n")
            assert s.recv(100) == b"inetd style\n"
            instances = c.systemctl(
                "list-units", "--no-legend", "--plain", "--state=active", "inetkit-echo-inetd@*.service"
            ).splitlines()
            assert len(instances) == 1, instances
            instance = instances[0].split()[0]
            pid = c.show(instance, "MainPID")["MainPID"]
            assert_sandboxed(c, pid)
        assert tcp_echo() == b"hello inetkit\n"
        # Each connection had its own process, gone once the connection closed.
        wait_for(
            lambda: not c.systemctl(
                "list-units", "--no-legend", "--plain", "--state=active", "inetkit-echo-inetd@*.service"
            ),
            "the per-connection instances to finish",
        )
        failed = c.systemctl("list-units", "--no-legend", "--plain", "--state=failed", "inetkit-*")
        assert failed == "", failed
        assert c.systemctl("is-active", SERVICE, check=False) == "inactive"
    finally:
        c.systemctl("stop", "inetkit-echo-inetd.socket")
        c.systemctl("start", "inetkit-echo.socket")


def test_sessions_run_on_a_thread_pinned_to_the_clients_cpu(echo):
    """The unit's system call filter lets the daemon pin its session threads (lanes): one
    pinned to a single CPU serves the connection, and nothing was refused, here or in the
    inetd pair's processes (which make no lanes; test_inetd_pair_… above ran them)."""
    assert tcp_echo() == b"hello inetkit\n"
    pid = main_pid(echo)
    allowed = proc_status(echo, pid)["Cpus_allowed_list"]
    if re.fullmatch(r"[0-9]+", allowed):
        pytest.skip(f"the service may run on CPU {allowed} only: no lanes")
    tasks = echo.run("sh", "-c", f"grep -H '' /proc/{pid}/task/*/comm").stdout.splitlines()
    # Lines "/proc/<pid>/task/<tid>/comm:<name>"; the lanes' tasks.
    lanes = [line.split(":", 1)[0].rsplit("/", 1)[0] for line in tasks
             if re.fullmatch(r".*:echo-cpu[0-9]+", line)]
    assert lanes, tasks
    for task in lanes:
        status = echo.run("cat", f"{task}/status").stdout
        allowed = re.search(r"^Cpus_allowed_list:\s*(\S+)$", status, re.M)[1]
        assert re.fullmatch(r"[0-9]+", allowed), f"{task} runs on {allowed}, not one CPU"
    journal = echo.run("journalctl", "--no-pager", "-u", "inetkit-echo*").stdout
    assert "cannot pin a thread" not in journal
    assert "cannot start a session thread" not in journal
