"""inetkit-dns-forwarder with a DNS-over-TLS upstream: socat's TLS in front of NSD, the server
name checked, questions pipelined on one connection, a connection the upstream closed
replaced."""

import os
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.dns import a_answer, dig, parse_query, start, status_of
from support.dns import nsd  # noqa: F401 (a fixture)
from support.inetkit import close_serving
from support.nsd import free_port


@pytest.fixture
def dot_cert(tmp_path):
    """A CA and a server certificate for localhost it signed (webpki will not take a
    self-signed CA certificate as the server's own)."""
    d = tmp_path / "pki"
    d.mkdir()
    run = lambda *a: subprocess.run(["openssl", *a], check=True, capture_output=True, cwd=d)
    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-days", "30", "-subj", "/CN=test CA", "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr")
    (d / "ext").write_text("subjectAltName=DNS:localhost\nbasicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "30", "-extfile", "ext", "-out", "server.pem")
    return d / "ca.pem", d / "server.pem", d / "server.key"


@pytest.fixture
def dot(nsd, dot_cert, tmp_path):
    """socat terminating TLS in front of NSD's TCP port: a DNS-over-TLS upstream."""
    port = free_port()
    log = open(tmp_path / "socat.log", "w")
    proc = subprocess.Popen(
        ["socat", "-d", "-d",
         f"OPENSSL-LISTEN:{port},bind=127.0.0.1,reuseaddr,fork,cert={dot_cert[1]},"
         f"key={dot_cert[2]},verify=0",
         f"TCP:127.0.0.1:{nsd.port}"], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.05)
    yield port, tmp_path / "socat.log"
    proc.terminate()
    proc.wait()
    log.close()


def test_dns_over_tls_upstream(daemons, dot, dot_cert):
    port, log = dot
    up = (f'\n[[upstream]]\naddress = "127.0.0.1:{port}"\nprotocol = "tls"\n'
          f'tls_name = "localhost"\ntls_ca = "{dot_cert[0]}"\n')
    d, udp, tcp = start(daemons, [up])
    accepted_before = log.read_text().count("accepting connection")
    for name in ("www", "alias", "mixed"):
        out = dig(udp, f"{name}.example.test", "A")
        assert status_of(out) == "NOERROR"
        assert "192.0.2.1" in out
    # One TLS connection for all three questions (the probe above made the first one).
    assert log.read_text().count("accepting connection") - accepted_before == 1


def test_dns_over_tls_checks_the_server_name(daemons, dot, dot_cert):
    port, log = dot
    up = (f'\n[[upstream]]\naddress = "127.0.0.1:{port}"\nprotocol = "tls"\n'
          f'tls_name = "not-localhost.example"\ntls_ca = "{dot_cert[0]}"\n')
    d, udp, tcp = start(daemons, [up])
    assert status_of(dig(udp, "www.example.test", "A")) == "SERVFAIL"


def test_dns_over_tls_queries_are_pipelined(daemons, dot_cert):
    """Questions in flight together share one DoT connection without waiting for each other's
    answer (RFC 7858 §3.4): this upstream answers only once it holds two questions, and the
    later one first, so answers must be matched by ID."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(dot_cert[1]), str(dot_cert[2]))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []
    ips = {"one.example.test.": "192.0.2.101", "two.example.test.": "192.0.2.102",
           "three.example.test.": "192.0.2.103", "four.example.test.": "192.0.2.104"}

    def handle(raw):
        try:
            with ctx.wrap_socket(raw, server_side=True) as tls:
                stream = tls.makefile("rb")
                while True:
                    held = []
                    for _ in range(2):
                        size = struct.unpack(">H", stream.read(2))[0]
                        held.append(parse_query(stream.read(size)))
                    for qid, _flags, name, _qtype, _do, question in reversed(held):
                        answer = a_answer(qid, question, ips.get(name.lower(), "192.0.2.99"))
                        tls.sendall(struct.pack(">H", len(answer)) + answer)
        except (OSError, struct.error, ssl.SSLError):
            pass

    def serve():
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            accepted.append(raw)
            threading.Thread(target=handle, args=(raw,), daemon=True).start()

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    up = (f'\n[[upstream]]\naddress = "127.0.0.1:{listener.getsockname()[1]}"\n'
          f'protocol = "tls"\ntls_name = "localhost"\ntls_ca = "{dot_cert[0]}"\n')
    try:
        d, udp, tcp = start(daemons, [up])
        # Two questions at once, twice (the second pair on the kept connection).
        for names in (["one.example.test", "two.example.test"],
                      ["three.example.test", "four.example.test"]):
            digs = [subprocess.Popen(["dig", "-p", str(udp), "@127.0.0.1", "+time=5",
                                      "+tries=1", n, "A"], stdout=subprocess.PIPE, text=True)
                    for n in names]
            outs = [p.communicate(timeout=30)[0] for p in digs]
            for name, out in zip(names, outs):
                assert status_of(out) == "NOERROR", out
                assert ips[name.lower() + "."] in out, out
        assert len(accepted) == 1
    finally:
        close_serving(listener, server)


def test_dns_over_tls_connection_closed_by_the_upstream_is_replaced(daemons, dot_cert):
    """An upstream that closes the connection after each answer: the next question goes out on
    a new connection, and the closed ones are not kept open on the forwarder's side."""
    import ssl
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(str(dot_cert[1]), str(dot_cert[2]))
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted = []

    def serve():
        while True:
            try:
                raw, _ = listener.accept()
            except OSError:
                return
            accepted.append(raw)
            try:
                # (The file is closed too: until it is, closing the socket does not.)
                with ctx.wrap_socket(raw, server_side=True) as tls, tls.makefile("rb") as stream:
                    size = struct.unpack(">H", stream.read(2))[0]
                    qid, _flags, _name, _qtype, _do, question = parse_query(stream.read(size))
                    answer = a_answer(qid, question, "192.0.2.110")
                    tls.sendall(struct.pack(">H", len(answer)) + answer)
            except (OSError, struct.error, ssl.SSLError):
                pass

    server = threading.Thread(target=serve, daemon=True)
    server.start()
    up = (f'\n[[upstream]]\naddress = "127.0.0.1:{listener.getsockname()[1]}"\n'
          f'protocol = "tls"\ntls_name = "localhost"\ntls_ca = "{dot_cert[0]}"\n')

    def sockets(pid):
        fds = Path(f"/proc/{pid}/fd")
        return sum(1 for fd in fds.iterdir() if os.readlink(fd).startswith("socket:"))

    def settled(pid):
        # Closing the forwarder's side follows the upstream's close a moment later.
        last, deadline = None, time.monotonic() + 5
        while time.monotonic() < deadline:
            now = sockets(pid)
            if now == last:
                return now
            last = now
            time.sleep(0.3)
        return last

    try:
        d, udp, tcp = start(daemons, [up])
        counts = []
        for i in range(6):
            out = dig(udp, f"n{i}.example.test", "A")
            assert status_of(out) == "NOERROR", out
            assert "192.0.2.110" in out
            if i in (1, 5):
                counts.append(settled(d.proc.pid))
        assert len(accepted) == 6
        assert counts[0] == counts[1]
    finally:
        close_serving(listener, server)
