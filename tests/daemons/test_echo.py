"""inetkit-echo driven as users drive it: sockets, nc, openssl s_client, systemd-socket-activate."""

import os
import signal
import socket
import ssl
import struct
import subprocess
import threading
import time
from datetime import datetime, timezone
from email.utils import parsedate_to_datetime

import pytest

from support.inetkit import (
    accept_yes,
    binary,
    connect_when_listening,
    free_port,
    listening_socket,
    recv_exact,
)

ALL_SERVICES = """
[listen]
echo = ["127.0.0.1:0", "udp://127.0.0.1:0"]
discard = ["127.0.0.1:0", "udp://127.0.0.1:0"]
chargen = ["127.0.0.1:0", "udp://127.0.0.1:0"]
daytime = ["127.0.0.1:0", "udp://127.0.0.1:0"]
time = ["127.0.0.1:0", "udp://127.0.0.1:0"]
"""


def connect(addr, timeout=10):
    return socket.create_connection(addr, timeout=timeout)


def udp_ask(addr, payload=b"", timeout=2.0, source=("127.0.0.1", 0)):
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind(source)
        s.settimeout(timeout)
        s.sendto(payload, addr)
        try:
            return s.recvfrom(65536)[0]
        except socket.timeout:
            return None


@pytest.fixture
def echo(daemons):
    return daemons.start("echo", ALL_SERVICES)


# -- the services -------------------------------------------------------------------------------

def test_tcp_echo_returns_what_was_sent(echo):
    with connect(echo.addr("echo")) as s:
        for msg in [b"hello\r\n", b"\x00\xff binary \x01", b"x" * 100_000]:
            s.sendall(msg)
            assert recv_exact(s, len(msg)) == msg
        s.shutdown(socket.SHUT_WR)
        assert s.recv(1) == b"", "the daemon closes after the client does"


def test_tcp_echo_with_nc(echo):
    host, port = echo.addr("echo")
    out = subprocess.run(["nc", "-q", "1", host, str(port)], input=b"one\ntwo\n",
                         capture_output=True, timeout=20)
    assert out.stdout == b"one\ntwo\n"


def test_udp_echo(echo):
    assert udp_ask(echo.addr("echo", "udp"), b"ping 123") == b"ping 123"
    big = os.urandom(8000)
    assert udp_ask(echo.addr("echo", "udp"), big) == big


def test_udp_echo_with_nc(echo):
    host, port = echo.addr("echo", "udp")
    out = subprocess.run(["nc", "-u", "-w", "1", host, str(port)], input=b"datagram\n",
                         capture_output=True, timeout=20)
    assert out.stdout == b"datagram\n"


def test_discard_answers_nothing(echo):
    with connect(echo.addr("discard")) as s:
        s.sendall(b"thrown away\r\n" * 1000)
        s.settimeout(0.5)
        with pytest.raises(socket.timeout):
            s.recv(1)
    assert udp_ask(echo.addr("discard", "udp"), b"x", timeout=0.5) is None


def test_chargen_streams_rfc864_lines(echo):
    with connect(echo.addr("chargen")) as s:
        data = recv_exact(s, 74 * 200)
    lines = data.split(b"\r\n")[:200]
    printable = bytes(range(32, 127))
    for i, line in enumerate(lines):
        start = i % 95
        expected = (printable * 2)[start:start + 72]
        assert line == expected, f"line {i}"
    reply = udp_ask(echo.addr("chargen", "udp"), b"")
    assert reply is not None and len(reply) <= 512


def test_daytime_is_now(echo):
    with connect(echo.addr("daytime")) as s:
        text = s.makefile("rb").read()
    assert text.endswith(b"\r\n") and text.count(b"\n") == 1
    when = parsedate_to_datetime(text.decode().strip())
    assert abs((datetime.now(timezone.utc) - when).total_seconds()) < 5
    reply = udp_ask(echo.addr("daytime", "udp"), b"")
    assert abs((datetime.now(timezone.utc) - parsedate_to_datetime(reply.decode().strip())).total_seconds()) < 5


def test_time_is_rfc868_seconds(echo):
    with connect(echo.addr("time")) as s:
        data = s.makefile("rb").read()
    assert len(data) == 4
    (since_1900,) = struct.unpack("!I", data)
    assert abs(since_1900 - (int(time.time()) + 2_208_988_800) % 2**32) <= 2
    (udp_value,) = struct.unpack("!I", udp_ask(echo.addr("time", "udp"), b""))
    assert abs(udp_value - since_1900) <= 2


# -- TLS ----------------------------------------------------------------------------------------

def tls_config(cert, key):
    return f"""
[listen]
echo-tls = ["127.0.0.1:0"]
[tls]
cert = "{cert}"
key = "{key}"
"""


def test_tls_echo_with_openssl_s_client(daemons, cert):
    d = daemons.start("echo", tls_config(*cert))
    host, port = d.addr("echo-tls")
    client = subprocess.Popen(
        ["openssl", "s_client", "-connect", f"{host}:{port}", "-quiet", "-verify_return_error",
         "-CAfile", str(cert[0]), "-servername", "localhost"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        client.stdin.write(b"over tls\n")
        client.stdin.flush()
        assert client.stdout.readline() == b"over tls\n"
    finally:
        client.kill()
        client.wait()
    assert b"verify return:1" in client.stderr.read()


def test_tls_versions_below_1_2_are_refused(daemons, cert):
    d = daemons.start("echo", tls_config(*cert))
    host, port = d.addr("echo-tls")
    ctx = ssl.create_default_context(cafile=str(cert[0]))
    ctx.minimum_version = ssl.TLSVersion.TLSv1
    ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    try:
        ctx.set_ciphers("ALL:@SECLEVEL=0")
    except ssl.SSLError:
        pass
    with pytest.raises((ssl.SSLError, ConnectionError)):
        with connect((host, port)) as raw, ctx.wrap_socket(raw, server_hostname="localhost"):
            pass
    for version in (ssl.TLSVersion.TLSv1_2, ssl.TLSVersion.TLSv1_3):
        ctx = ssl.create_default_context(cafile=str(cert[0]))
        ctx.minimum_version = ctx.maximum_version = version
        with connect((host, port)) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as s:
            s.sendall(b"v")
            assert s.recv(1) == b"v"
            assert s.version() == {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}[version]


def test_sighup_reloads_the_certificate_without_dropping_sessions(daemons, tmp_path, cert):
    from support.inetkit import make_cert
    live_cert, live_key = tmp_path / "live.pem", tmp_path / "live.key"
    live_cert.write_bytes(cert[0].read_bytes())
    live_key.write_bytes(cert[1].read_bytes())
    d = daemons.start("echo", tls_config(live_cert, live_key))
    addr = d.addr("echo-tls")

    def peer_cert():
        ctx = ssl.create_default_context()
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
        raw = connect(addr)
        s = ctx.wrap_socket(raw, server_hostname="localhost")
        return s, s.getpeercert(binary_form=True)

    old_session, old_der = peer_cert()
    other = make_cert(tmp_path / "..", cn="localhost2") if False else None
    new_dir = tmp_path / "new"
    new_dir.mkdir()
    new_cert, new_key = make_cert(new_dir)
    live_cert.write_bytes(new_cert.read_bytes())
    live_key.write_bytes(new_key.read_bytes())
    d.signal(signal.SIGHUP)
    d.wait_log("TLS certificate reloaded")
    new_session, new_der = peer_cert()
    assert new_der != old_der
    assert new_der == ssl.PEM_cert_to_DER_cert(new_cert.read_text())
    # The session opened before the reload still works.
    old_session.sendall(b"still here")
    assert recv_exact(old_session, 10) == b"still here"
    old_session.close()
    new_session.close()
    del other


def test_broken_certificate_on_reload_keeps_the_old_one(daemons, tmp_path, cert):
    live_cert, live_key = tmp_path / "c.pem", tmp_path / "c.key"
    live_cert.write_bytes(cert[0].read_bytes())
    live_key.write_bytes(cert[1].read_bytes())
    d = daemons.start("echo", tls_config(live_cert, live_key))
    live_cert.write_text("not a certificate\n")
    d.signal(signal.SIGHUP)
    d.wait_log("TLS reload failed")
    ctx = ssl.create_default_context(cafile=str(cert[0]))
    with connect(d.addr("echo-tls")) as raw, ctx.wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"ok")
        assert s.recv(2) == b"ok"


# -- configuration ------------------------------------------------------------------------------

def run_check(tmp_path, text):
    conf = tmp_path / "echo.toml"
    conf.write_text(text)
    return subprocess.run([str(binary("inetkit-echo")), "--check-config", "-c", str(conf)],
                          capture_output=True, text=True, timeout=20)


def test_check_config_accepts_a_good_file(tmp_path):
    out = run_check(tmp_path, ALL_SERVICES)
    assert out.returncode == 0, out.stderr
    assert "ok" in out.stdout


def test_check_config_names_file_line_and_column(tmp_path):
    out = run_check(tmp_path, "[limits]\nmax_connections = 10\n  idle_timout = 5\n")
    assert out.returncode != 0
    assert f"{tmp_path}/echo.toml:3:3:" in out.stderr
    assert "idle_timout" in out.stderr


def test_unknown_socket_name_is_refused_at_start(tmp_path):
    conf = tmp_path / "echo.toml"
    conf.write_text('[listen]\nfinger = ["127.0.0.1:0"]\n')
    out = subprocess.run([str(binary("inetkit-echo")), "-c", str(conf)],
                         capture_output=True, text=True, timeout=20)
    assert out.returncode != 0
    assert "finger" in out.stderr


def test_tls_socket_without_certificate_is_refused_at_start(tmp_path):
    conf = tmp_path / "echo.toml"
    conf.write_text('[listen]\necho-tls = ["127.0.0.1:0"]\n')
    out = subprocess.run([str(binary("inetkit-echo")), "-c", str(conf)],
                         capture_output=True, text=True, timeout=20, env={"PATH": os.environ["PATH"]})
    assert out.returncode != 0
    assert "needs TLS" in out.stderr


# -- socket activation --------------------------------------------------------------------------

def test_activation_with_fds_from_the_caller(daemons):
    tcp, udp = listening_socket("tcp"), listening_socket("udp")
    d = daemons.activate("echo", [("echo", tcp), ("echo", udp)])
    with connect(tcp.getsockname()) as s:
        s.sendall(b"activated")
        assert recv_exact(s, 9) == b"activated"
    assert udp_ask(udp.getsockname(), b"dgram") == b"dgram"
    assert "STATUS=" in " ".join(d.notify.messages)


def test_systemd_socket_activate_tcp_and_udp(tmp_path):
    port = free_port()
    conf = tmp_path / "echo.toml"
    conf.write_text("")
    for extra, kind in [([], socket.SOCK_STREAM), (["--datagram"], socket.SOCK_DGRAM)]:
        proc = subprocess.Popen(
            ["systemd-socket-activate", *extra, "-l", f"127.0.0.1:{port}", "--fdname=echo",
             str(binary("inetkit-echo")), "-c", str(conf)],
            stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    if kind == socket.SOCK_STREAM:
                        with connect(("127.0.0.1", port), timeout=2) as s:
                            s.sendall(b"via systemd")
                            got = recv_exact(s, 11)
                    else:
                        got = udp_ask(("127.0.0.1", port), b"via systemd", timeout=0.5)
                    if got == b"via systemd":
                        break
                except OSError:
                    pass
                assert time.monotonic() < deadline, "no echo through systemd-socket-activate"
                time.sleep(0.1)
        finally:
            proc.send_signal(signal.SIGTERM)
            assert proc.wait(timeout=10) == 0, proc.stderr.read().decode()


def test_systemd_socket_activate_accept_yes(tmp_path):
    """inetd style: one process per connection, fd 3 is the connection itself."""
    conf = tmp_path / "echo.toml"
    conf.write_text("")
    proc, port = accept_yes("echo", conf, "echo")
    try:
        s = connect_when_listening(port)
        with s, connect(("127.0.0.1", port)) as s2:
            s.sendall(b"first")
            s2.sendall(b"second")
            assert recv_exact(s, 5) == b"first"
            assert recv_exact(s2, 6) == b"second"
            s.shutdown(socket.SHUT_WR)
            assert s.recv(1) == b""
        # Each connection had its own process; none is left once they are closed.
        time.sleep(0.5)
        children = subprocess.run(["pgrep", "-P", str(proc.pid)], capture_output=True, text=True)
        assert children.stdout.strip() == "", "per-connection processes exit with their connection"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=10)


# -- lifecycle ----------------------------------------------------------------------------------

def test_sigterm_lets_an_open_session_finish(daemons):
    d = daemons.start("echo", '[listen]\necho = ["127.0.0.1:0"]\n[limits]\nshutdown_timeout = 30\n')
    addr = d.addr("echo")
    s = connect(addr)
    s.sendall(b"before")
    assert recv_exact(s, 6) == b"before"
    d.signal(signal.SIGTERM)
    d.notify.wait_for("STOPPING=1")
    # No new sessions once stopping…
    time.sleep(0.3)
    with pytest.raises(OSError):
        with connect(addr, timeout=2) as late:
            late.sendall(b"x")
            if late.recv(1) == b"":
                raise ConnectionResetError("closed")
    # …but the open one is still served, and the daemon exits 0 when it ends.
    s.sendall(b"after")
    assert recv_exact(s, 5) == b"after"
    assert d.proc.poll() is None
    s.close()
    assert d.wait(timeout=10) == 0


def test_sigterm_deadline_cuts_sessions_that_do_not_end(daemons):
    d = daemons.start("echo", '[listen]\necho = ["127.0.0.1:0"]\n[limits]\nshutdown_timeout = 1\n')
    s = connect(d.addr("echo"))
    s.sendall(b"x")
    assert recv_exact(s, 1) == b"x"
    d.signal(signal.SIGTERM)
    assert d.wait(timeout=10) == 0
    s.settimeout(5)
    assert s.recv(1) == b""
    s.close()


def test_watchdog_and_status_are_sent(daemons):
    tcp = listening_socket("tcp")
    d = daemons.activate("echo", [("echo", tcp)], env={"WATCHDOG_USEC": "400000"})
    d.notify.wait_for("WATCHDOG=1", timeout=5)
    with connect(tcp.getsockname()) as s:
        s.sendall(b"a")
        recv_exact(s, 1)
        d.notify.wait_for("STATUS=1 active sessions", timeout=5)


def test_idle_exit_and_the_kept_socket_serves_the_next_connection(daemons):
    """As under systemd: the daemon exits when idle; the socket stays open in the activator;
    a connection made meanwhile waits in the backlog and the next daemon serves it."""
    tcp = listening_socket("tcp")
    config = "[limits]\nidle_exit = 1\n"
    first = daemons.activate("echo", [("echo", tcp)], config=config)
    with connect(tcp.getsockname()) as s:
        s.sendall(b"one")
        assert recv_exact(s, 3) == b"one"
        time.sleep(1.5)
        assert first.proc.poll() is None, "a daemon with a session is not idle"
    assert first.wait(timeout=10) == 0
    waiting = connect(tcp.getsockname())
    waiting.sendall(b"two")
    # The activator sees traffic on its socket and starts the daemon again.
    daemons.activate("echo", [("echo", tcp)], config=config)
    assert recv_exact(waiting, 3) == b"two"
    waiting.close()


# -- bad input and abuse ------------------------------------------------------------------------

def test_ten_mib_without_newline_streams_through(echo):
    payload = os.urandom(10 << 20)
    with connect(echo.addr("echo")) as s:
        got = bytearray()
        sender = threading.Thread(target=s.sendall, args=(payload,))
        sender.start()
        while len(got) < len(payload):
            chunk = s.recv(1 << 20)
            assert chunk
            got += chunk
        sender.join()
    assert got == payload


def test_one_gib_costs_constant_memory(daemons):
    d = daemons.start("echo", '[listen]\necho = ["127.0.0.1:0"]\n')
    block = os.urandom(1 << 20)
    total = 1 << 30
    peak = [0]
    with connect(d.addr("echo")) as s:
        def send():
            for _ in range(total // len(block)):
                s.sendall(block)
        sender = threading.Thread(target=send)
        sender.start()
        received = 0
        while received < total:
            chunk = s.recv(1 << 20)
            assert chunk
            received += len(chunk)
            if received % (64 << 20) < len(chunk):
                peak[0] = max(peak[0], d.rss_kib())
        sender.join()
    assert received == total
    assert peak[0] < 16 * 1024, f"RSS grew to {peak[0]} KiB while streaming"


def test_client_that_never_reads_is_not_buffered_and_is_cut(daemons):
    d = daemons.start("echo", '[listen]\necho = ["127.0.0.1:0"]\n[limits]\nwrite_timeout = 3\n')
    before = d.rss_kib()
    s = connect(d.addr("echo"))
    s.setblocking(False)
    sent = 0
    # Well within the write timeout: the daemon is stuck writing to us by now.
    deadline = time.monotonic() + 1
    chunk = b"z" * 65536
    while time.monotonic() < deadline:
        try:
            sent += s.send(chunk)
        except BlockingIOError:
            time.sleep(0.05)
    # The kernel buffers hold a few MiB at most; the daemon holds no more than one buffer.
    assert sent < 64 << 20
    assert d.rss_kib() - before < 8 * 1024
    # Others are still served meanwhile.
    with connect(d.addr("echo")) as other:
        other.sendall(b"ok")
        assert recv_exact(other, 2) == b"ok"
    # The write timeout ends the stuck session (reading now would unblock it, so watch the
    # daemon's own count instead).
    d.notify.wait_for("STATUS=0 active sessions, 2 served", timeout=15)
    s.close()


def test_idle_timeout_counts_from_the_last_message(daemons):
    # The idle timer is armed once per session and moved on when it goes off: a session that
    # keeps talking outlives its first deadline, and one that falls silent is closed.
    d = daemons.start("echo", '[listen]\necho = ["127.0.0.1:0"]\n[limits]\nidle_timeout = 2\n')
    with connect(d.addr("echo")) as s:
        for i in range(8):  # 4 s of messages, 0.5 s apart: twice the idle timeout
            s.sendall(b"%d" % i)
            assert recv_exact(s, 1) == b"%d" % i
            time.sleep(0.5)
        s.settimeout(20)
        assert s.recv(1) == b"", "the silent session was not closed"
    d.notify.wait_for("STATUS=0 active sessions, 1 served", timeout=5)
    d.wait_log(r"session ended .*reason=idle-timeout")


def test_connections_beyond_the_limit_are_refused_and_the_daemon_stays_up(daemons):
    d = daemons.start("echo", '[listen]\necho = ["127.0.0.1:0"]\n[limits]\n'
                              'max_connections = 50\nmax_connections_per_ip = 50\n')
    addr = d.addr("echo")
    socks = []
    for _ in range(500):
        socks.append(connect(addr))
    served = refused = 0
    for s in socks:
        s.settimeout(5)
        try:
            s.sendall(b"?")
            reply = s.recv(1)
        except (ConnectionResetError, BrokenPipeError):
            reply = b""
        if reply == b"?":
            served += 1
        else:
            refused += 1
    assert served == 50
    assert refused == 450
    for s in socks:
        s.close()
    assert d.proc.poll() is None
    time.sleep(0.3)
    with connect(addr) as s:
        s.sendall(b"after the flood")
        assert recv_exact(s, 15) == b"after the flood"
    d.notify.wait_for("STATUS=0 active sessions, 51 served, 450 refused", timeout=5)


def test_per_address_limit(daemons):
    d = daemons.start("echo", '[listen]\necho = ["127.0.0.1:0"]\n[limits]\nmax_connections_per_ip = 3\n')
    host, port = d.addr("echo")
    # 127.0.0.2 is another client address on loopback.
    socks = [socket.create_connection((host, port), source_address=("127.0.0.1", 0)) for _ in range(4)]
    other = socket.create_connection((host, port), source_address=("127.0.0.2", 0))
    results = []
    for s in socks + [other]:
        s.settimeout(5)
        try:
            s.sendall(b"!")
            results.append(s.recv(1))
        except ConnectionResetError:
            results.append(b"")
    # Closed only now: a slot freed earlier could admit the fourth before the daemon got to it.
    for s in socks + [other]:
        s.close()
    assert results == [b"!", b"!", b"!", b"", b"!"]


@pytest.mark.skipif(os.geteuid() != 0, reason="binding source port 19 needs root")
def test_udp_from_privileged_ports_is_never_answered(echo):
    addr = echo.addr("echo", "udp")
    for port in (19, 7, 13, 37, 53, 123):
        assert udp_ask(addr, b"loop?", timeout=0.5, source=("127.0.0.1", port)) is None
    assert udp_ask(addr, b"normal") == b"normal"
    assert udp_ask(echo.addr("chargen", "udp"), b"", timeout=0.5, source=("127.0.0.1", 7)) is None


def test_udp_is_rate_limited_per_source(daemons):
    d = daemons.start("echo", '[listen]\necho = ["udp://127.0.0.1:0"]\n[udp]\nrate = 10\nburst = 20\n')
    addr = d.addr("echo", "udp")
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        for i in range(300):
            s.sendto(b"%d" % i, addr)
        s.settimeout(0.5)
        replies = 0
        try:
            while True:
                s.recvfrom(100)
                replies += 1
        except socket.timeout:
            pass
    assert 20 <= replies <= 30, replies
    # Another source has its own bucket.
    assert udp_ask(addr, b"fresh", source=("127.0.0.3", 0)) == b"fresh"
    assert d.proc.poll() is None


def _replies_from_sources(addr, sources):
    """One datagram from each source address; how many were answered."""
    socks = []
    try:
        for source in sources:
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            socks.append(s)
            s.bind((source, 0))
            s.sendto(b"x", addr)
        replies = 0
        for s in socks:
            s.settimeout(0.3)
            try:
                s.recvfrom(100)
                replies += 1
            except socket.timeout:
                pass
        return replies
    finally:
        for s in socks:
            s.close()


def test_udp_forged_sources_of_one_network_share_a_budget(daemons):
    # rate 1/s, burst 2 per source: a /24 gets 4 sources' worth (8 at once), the socket 20
    # (40). 60 addresses of 127.0.5.0/24, one datagram each: 8 answered, not 60.
    d = daemons.start("echo", '[listen]\necho = ["udp://127.0.0.1:0"]\n[udp]\nrate = 1\nburst = 2\n')
    addr = d.addr("echo", "udp")
    assert _replies_from_sources(addr, [f"127.0.5.{i}" for i in range(1, 61)]) == 8
    # Another /24 has its own budget.
    assert udp_ask(addr, b"fresh", source=("127.0.6.1", 0)) == b"fresh"
    # One source per /24 over 200 networks: the total budget (40 at once, less the 9 spent,
    # refilled at 20 a second while the test runs) holds, where each network alone would allow.
    started = time.monotonic()
    answered = _replies_from_sources(addr, [f"127.{10 + i}.0.1" for i in range(200)])
    refilled = 20 * (time.monotonic() - started)
    assert answered <= 40 - 9 + refilled + 1, (answered, refilled)
    assert answered < 200
    assert d.proc.poll() is None
