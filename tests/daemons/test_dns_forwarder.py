"""inetkit-dns-forwarder against a real authoritative server (NSD on loopback), a DoT upstream
behind socat's TLS, and a scripted upstream for the spoofing cases; clients dig and kdig, and
hand-made packets for bad input."""

import os
import re
import signal
import socket
import struct
import subprocess
import threading
import time
from pathlib import Path

import pytest

from support.inetkit import RemoteHost, close_serving
from support.nsd import Nsd, free_port


# -- helpers --------------------------------------------------------------------------------

def config(upstreams, extra="", listen=None):
    if listen is None:
        # One port for UDP and TCP, as on 53: dig retries a truncated answer on the same port.
        port = free_port()
        listen = f'"udp://127.0.0.1:{port}", "tcp://127.0.0.1:{port}"'
    ups = "".join(u if u.startswith("\n[[") else f'\n[[upstream]]\naddress = "{u}"\n'
                  for u in upstreams)
    return f"""
[listen]
dns = [{listen}]
[forward]
timeout = 0.7
{ups}
{extra}
"""


def dig(port, *args, tool="dig", host="127.0.0.1"):
    tries = "+tries=1" if tool == "dig" else "+retry=0"
    argv = [tool, "-p", str(port), f"@{host}", "+time=5", tries, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout


def answers(output):
    """The answer section's records as (name, ttl, type, data)."""
    out = []
    section = False
    for line in output.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            section = True
            continue
        if not line.strip() or line.startswith(";;"):
            section = False
        if not section or line.startswith(";"):
            continue
        parts = line.split(None, 4)
        if len(parts) == 5 and parts[2] == "IN":
            out.append((parts[0].lower(), int(parts[1]), parts[3], parts[4]))
    return out


def status_of(output):
    m = re.search(r"status: (\w+)", output)
    return m.group(1) if m else None


def flags_of(output):
    m = re.search(r";; flags: ([^;]*);", output)
    return m.group(1).split() if m else []


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def query_packet(name, qtype=1, qid=0x4242, flags=0x0100, qdcount=None, edns=None):
    """A query in wire format; `edns` is (payload, do)."""
    q = encode_name(name) + struct.pack(">HH", qtype, 1)
    ar = 0
    tail = b""
    if edns:
        ar = 1
        tail = b"\0" + struct.pack(">HHIH", 41, edns[0], 0x8000 if edns[1] else 0, 0)
    header = struct.pack(">HHHHHH", qid, flags, 1 if qdcount is None else qdcount, 0, 0, ar)
    return header + q + tail


def decode_name(data, off):
    labels = []
    jumped = False
    end = off
    for _ in range(128):
        n = data[off]
        if n & 0xC0 == 0xC0:
            if not jumped:
                end = off + 2
            off = ((n & 0x3F) << 8) | data[off + 1]
            jumped = True
            continue
        off += 1
        if n == 0:
            break
        labels.append(data[off:off + n].decode())
        off += n
    return ".".join(labels) + ".", (end if jumped else off)


def parse_query(data):
    """(id, flags, name, qtype, do) of a query, as the scripted upstream sees it."""
    qid, flags, qd, an, ns, ar = struct.unpack(">HHHHHH", data[:12])
    name, off = decode_name(data, 12)
    qtype, qclass = struct.unpack(">HH", data[off:off + 4])
    off += 4
    do = False
    if ar:
        # The OPT record: root name, type 41, class = payload, ttl carries DO.
        if data[off] == 0 and struct.unpack(">H", data[off + 1:off + 3])[0] == 41:
            ttl = struct.unpack(">I", data[off + 5:off + 9])[0]
            do = bool(ttl & 0x8000)
    return qid, flags, name, qtype, do, data[12:off]


def a_answer(qid, question, ip, ttl=60, flags=0x8180):
    """A response with one A record for the question (name by pointer)."""
    header = struct.pack(">HHHHHH", qid, flags, 1, 1, 0, 0)
    rr = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, ttl, 4) + socket.inet_aton(ip)
    return header + question + rr


def udp_exchange(port, packet, timeout=3.0, host="127.0.0.1"):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, (host, port))
        try:
            return s.recv(65535)
        except socket.timeout:
            return None


def rcode(reply):
    return reply[3] & 0x0F


class ScriptedUpstream:
    """A UDP upstream run by the test: records each query and answers as `respond` says."""

    def __init__(self, respond):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.respond = respond
        self.queries = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                return
            if not data:  # woken by close()
                return
            q = parse_query(data)
            self.queries.append((addr, q))
            threading.Thread(target=self.respond, args=(self.sock, addr, q), daemon=True).start()

    def close(self):
        close_serving(self.sock, self.thread)


@pytest.fixture
def nsd(tmp_path):
    with Nsd(tmp_path / "nsd") as server:
        yield server


def start(daemons, upstreams, extra=""):
    d = daemons.start("dns-forwarder", config(upstreams, extra))
    return d, d.addr("dns", "udp")[1], d.addr("dns", "tcp")[1]


# -- serving and forwarding -----------------------------------------------------------------

def test_udp_and_tcp_with_dig_and_kdig(daemons, nsd):
    d, udp, tcp = start(daemons, [f"127.0.0.1:{nsd.port}"])
    out = dig(udp, "www.example.test", "A")
    assert status_of(out) == "NOERROR"
    assert "ra" in flags_of(out) and "qr" in flags_of(out)
    assert [a[3] for a in answers(out)] == ["192.0.2.10"]
    out = dig(tcp, "+tcp", "www.example.test", "AAAA")
    assert [a[3] for a in answers(out)] == ["2001:db8::10"]
    out = dig(udp, "alias.example.test", "A", tool="kdig")
    assert ("alias.example.test.", "CNAME") in [(a[0], a[2]) for a in answers(out)]
    assert "192.0.2.10" in [a[3] for a in answers(out)]
    out = dig(tcp, "+tcp", "www.example.test", "A", tool="kdig")
    assert [a[3] for a in answers(out)] == ["192.0.2.10"]
    # NXDOMAIN passed on, with the SOA.
    out = dig(udp, "nothing.example.test", "A")
    assert status_of(out) == "NXDOMAIN"
    assert "SOA" in out


def test_udp_over_ipv4_and_ipv6_alike(daemons, nsd):
    """Sockets of both families served side by side (datagrams read in batches must keep each
    sender's address whole, an IPv6 one after IPv4 ones included)."""
    port = free_port()
    listen = f'"udp://127.0.0.1:{port}", "udp://[::1]:{port}"'
    daemons.start("dns-forwarder", config([f"127.0.0.1:{nsd.port}"], listen=listen))
    for i in range(12):
        for host in ("127.0.0.1", "::1"):
            # Each name asked first from one family, then the other: misses and hits both.
            name = f"{'www' if i % 2 else 'mixed'}.example.test"
            reply = udp_exchange(port, query_packet(name, qid=i), host=host, timeout=3.0)
            assert reply is not None, (i, host)
            assert rcode(reply) == 0 and reply[:2] == struct.pack(">H", i)


def test_truncation_and_tcp_retry(daemons, nsd):
    d, udp, tcp = start(daemons, [f"127.0.0.1:{nsd.port}"])
    # The upstream truncates this over UDP; the forwarder retries over TCP and so has it all.
    out = dig(tcp, "+tcp", "big.example.test", "TXT")
    assert len(answers(out)) == 40
    # A UDP client gets TC when the answer does not fit its buffer...
    for args in (["+bufsize=1232"], ["+bufsize=512"], ["+noedns"]):
        out = dig(udp, "+ignore", *args, "big.example.test", "TXT")
        assert "tc" in flags_of(out), args
        assert answers(out) == []
    # ...and dig's own TCP retry after TC then gets everything.
    out = dig(udp, "big.example.test", "TXT")
    assert len(answers(out)) == 40
    # A client buffer that fits: no TC.
    out = dig(udp, "+bufsize=1232", "www.example.test", "A")
    assert "tc" not in flags_of(out)
    assert "udp: 1232" in out


def test_dnssec_records_passed_back_unchanged(daemons, nsd):
    d, udp, tcp = start(daemons, [f"127.0.0.1:{nsd.port}"])
    for qname, qtype in (("www.example.test", "RRSIG"), ("example.test", "DNSKEY")):
        direct = dig(nsd.port, "+dnssec", "+norec", qname, qtype)
        via = dig(udp, "+dnssec", qname, qtype)
        strip = lambda out: sorted((a[0], a[2], a[3]) for a in answers(out))
        assert strip(via) == strip(direct) and strip(via)
        assert "flags: do" in via
        via_kdig = dig(tcp, "+tcp", "+dnssec", qname, qtype, tool="kdig")
        assert qtype in via_kdig


def test_do_and_cd_passed_upstream_fresh_id_and_port(daemons):
    def respond(sock, addr, q):
        qid, flags, name, qtype, do, question = q
        sock.sendto(a_answer(qid, question, "192.0.2.99"), addr)

    up = ScriptedUpstream(respond)
    try:
        d, udp, tcp = start(daemons, [f"127.0.0.1:{up.port}"])
        dig(udp, "+dnssec", "+cd", "one.example", "A")
        dig(udp, "two.example", "A")
        dig(udp, "three.example", "A")
        assert len(up.queries) == 3
        (a1, q1), (a2, q2), (a3, q3) = up.queries
        assert q1[4] is True and q1[1] & 0x0010  # DO and CD
        assert q2[4] is False and not q2[1] & 0x0010
        # A new socket (source port) and a new ID per query.
        assert len({a1[1], a2[1], a3[1]}) == 3
        assert len({q1[0], q2[0], q3[0]}) == 3
    finally:
        up.close()


def test_spoofed_answers_are_ignored(daemons):
    """Answers from the wrong port or with the wrong ID come first; the forwarder must wait for
    the real one."""
    spoofer = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    spoofer.bind(("127.0.0.1", 0))

    def respond(sock, addr, q):
        qid, flags, name, qtype, do, question = q
        spoofer.sendto(a_answer(qid, question, "6.6.6.1"), addr)          # wrong port
        sock.sendto(a_answer(qid ^ 0x5555, question, "6.6.6.2"), addr)    # wrong ID
        other = encode_name("evil.example") + struct.pack(">HH", 1, 1)
        sock.sendto(a_answer(qid, other, "6.6.6.3"), addr)                # wrong question
        time.sleep(0.05)
        sock.sendto(a_answer(qid, question, "192.0.2.99"), addr)          # the real one

    up = ScriptedUpstream(respond)
    try:
        d, udp, tcp = start(daemons, [f"127.0.0.1:{up.port}"])
        out = dig(udp, "victim.example", "A")
        assert [a[3] for a in answers(out)] == ["192.0.2.99"]
    finally:
        up.close()
        spoofer.close()


def test_pipelined_tcp_answers_out_of_order(daemons):
    def respond(sock, addr, q):
        qid, flags, name, qtype, do, question = q
        time.sleep(0.5)
        sock.sendto(a_answer(qid, question, "192.0.2.50"), addr)

    up = ScriptedUpstream(respond)
    try:
        extra = '[[record]]\nname = "fast.lan"\ntype = "A"\nvalue = "192.0.2.1"\n'
        d, udp, tcp = start(daemons, [f"127.0.0.1:{up.port}"], extra)
        with socket.create_connection(("127.0.0.1", tcp)) as s:
            slow = query_packet("slow.example", qid=1)
            fast = query_packet("fast.lan", qid=2)
            s.sendall(struct.pack(">H", len(slow)) + slow + struct.pack(">H", len(fast)) + fast)
            f = s.makefile("rb")
            ids = []
            for _ in range(2):
                n = struct.unpack(">H", f.read(2))[0]
                ids.append(struct.unpack(">H", f.read(n)[:2])[0])
        assert ids == [2, 1]
    finally:
        up.close()


def test_identical_questions_in_flight_share_one_upstream_query(daemons):
    def respond(sock, addr, q):
        qid, flags, name, qtype, do, question = q
        time.sleep(0.4)
        sock.sendto(a_answer(qid, question, "192.0.2.77"), addr)

    up = ScriptedUpstream(respond)
    try:
        d, udp, tcp = start(daemons, [f"127.0.0.1:{up.port}"])
        socks = []
        for i in range(20):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            s.settimeout(5)
            s.sendto(query_packet("popular.example", qid=i), ("127.0.0.1", udp))
            socks.append(s)
        replies = [s.recv(4096) for s in socks]
        for s in socks:
            s.close()
        assert all(rcode(r) == 0 and r.endswith(socket.inet_aton("192.0.2.77")) for r in replies)
        assert len(up.queries) == 1
    finally:
        up.close()


# -- the cache --------------------------------------------------------------------------------

def test_cache_counts_down_and_expires(daemons, nsd):
    d, udp, tcp = start(daemons, [f"127.0.0.1:{nsd.port}"])
    first = answers(dig(udp, "www.example.test", "A"))
    assert first[0][1] == 300
    short = answers(dig(udp, "short.example.test", "A"))
    assert short[0][1] == 2
    nsd.stop()
    # With the upstream gone, answers come from the cache, TTLs counted down.
    time.sleep(1.1)
    again = answers(dig(udp, "www.example.test", "A"))
    assert again[0][3] == "192.0.2.10" and again[0][1] < 300
    # Later hits are copies of a rendered reply with TTLs and the question's case patched.
    time.sleep(1.1)
    out = dig(udp, "WWW.Example.TEST", "A")
    later = [line for line in out.splitlines() if line.startswith("WWW.Example.TEST.")]
    assert later and "192.0.2.10" in later[0] and int(later[0].split()[1]) < again[0][1]
    assert "id: " in out and status_of(dig(tcp, "+tcp", "www.example.test", "A")) == "NOERROR"
    # Once its 2 seconds are up, `short` is gone: nobody is left to ask.
    time.sleep(1.5)
    out = dig(udp, "short.example.test", "A")
    assert status_of(out) == "SERVFAIL"
    assert answers(dig(udp, "www.example.test", "A"))[0][3] == "192.0.2.10"


def test_negative_answers_cached_from_soa(daemons, nsd):
    d, udp, tcp = start(daemons, [f"127.0.0.1:{nsd.port}"])
    out = dig(udp, "missing.example.test", "A")
    assert status_of(out) == "NXDOMAIN"
    # RFC 2308: the SOA in the authority section carries the negative TTL (the minimum, 2).
    soa = [line for line in out.splitlines() if "\tSOA\t" in line]
    assert soa and int(soa[0].split()[1]) <= 2
    nodata = dig(udp, "www.example.test", "MX")
    assert status_of(nodata) == "NOERROR" and answers(nodata) == []
    nsd.stop()
    assert status_of(dig(udp, "missing.example.test", "A")) == "NXDOMAIN"
    time.sleep(2.5)
    assert status_of(dig(udp, "missing.example.test", "A")) == "SERVFAIL"


def test_serve_stale_when_upstreams_fail(daemons, nsd):
    d, udp, tcp = start(daemons, [f"127.0.0.1:{nsd.port}"],
                        "[cache]\nserve_stale = true\nmax_stale = 600\n")
    assert answers(dig(udp, "short.example.test", "A"))[0][1] == 2
    nsd.stop()
    time.sleep(2.5)
    stale = answers(dig(udp, "short.example.test", "A"))
    assert stale and stale[0][3] == "192.0.2.11" and stale[0][1] == 30


def test_ttl_clamps(daemons, nsd):
    d, udp, tcp = start(daemons, [f"127.0.0.1:{nsd.port}"], "[cache]\nmin_ttl = 60\nmax_ttl = 100\n")
    assert answers(dig(udp, "short.example.test", "A"))[0][1] == 60
    assert answers(dig(udp, "www.example.test", "A"))[0][1] == 100


# -- upstreams ----------------------------------------------------------------------------------

def test_failover_when_first_upstream_is_down(daemons, nsd):
    # One upstream that never answers (a bound socket nobody reads) and one refusing port.
    silent = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    silent.bind(("127.0.0.1", 0))
    dead = free_port()
    try:
        d, udp, tcp = start(daemons, [f"127.0.0.1:{silent.getsockname()[1]}",
                                      f"127.0.0.1:{dead}", f"127.0.0.1:{nsd.port}"])
        names = ["www", "alias", "mixed", "ns"]
        for n in names:
            out = dig(udp, f"{n}.example.test", "A")
            assert status_of(out) == "NOERROR", out
        # Having seen the others fail, the forwarder asks the live one first: the silent
        # upstream was tried at most for the first few questions.
        d.signal(signal.SIGUSR1)
        line = d.wait_log("statistics")
        assert f"127.0.0.1:{nsd.port}" in line
    finally:
        silent.close()


def test_servfail_upstream_fails_over(daemons, nsd):
    def respond(sock, addr, q):
        qid, flags, name, qtype, do, question = q
        header = struct.pack(">HHHHHH", qid, 0x8182, 1, 0, 0, 0)  # SERVFAIL
        sock.sendto(header + question, addr)

    up = ScriptedUpstream(respond)
    try:
        d, udp, tcp = start(daemons, [f"127.0.0.1:{up.port}", f"127.0.0.1:{nsd.port}"])
        for _ in range(3):
            out = dig(udp, "www.example.test", "A")
            assert [a[3] for a in answers(out)] == ["192.0.2.10"]
    finally:
        up.close()


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


# -- bad input and abuse ------------------------------------------------------------------------

def test_bad_input(daemons, nsd):
    d, udp, tcp = start(daemons, [f"127.0.0.1:{nsd.port}"])
    good = query_packet("www.example.test")
    # Truncated question.
    r = udp_exchange(udp, good[:20])
    assert r is not None and rcode(r) == 1 and r[:2] == b"\x42\x42"
    # A compression pointer that points at itself.
    loop = struct.pack(">HHHHHH", 7, 0x0100, 1, 0, 0, 0) + b"\xc0\x0c" + struct.pack(">HH", 1, 1)
    r = udp_exchange(udp, loop)
    assert r is not None and rcode(r) == 1
    # No question, and 65535 questions (only one there).
    r = udp_exchange(udp, query_packet("www.example.test", qdcount=0)[:12])
    assert r is not None and rcode(r) == 1
    r = udp_exchange(udp, query_packet("www.example.test", qdcount=65535))
    assert r is not None and rcode(r) == 1
    # NOTIFY (opcode 4) and UPDATE (5): not implemented.
    for opcode in (4, 5):
        r = udp_exchange(udp, query_packet("example.test", qtype=6, flags=opcode << 11))
        assert r is not None and rcode(r) == 4
    # Shorter than a header, and a response: no answer at all.
    assert udp_exchange(udp, b"\x01\x02\x03", timeout=0.5) is None
    assert udp_exchange(udp, query_packet("x.example", flags=0x8100), timeout=0.5) is None
    # The same over TCP, then a good query on the same connection.
    with socket.create_connection(("127.0.0.1", tcp)) as s:
        s.sendall(struct.pack(">H", len(loop)) + loop + struct.pack(">H", len(good)) + good)
        f = s.makefile("rb")
        got = {}
        for _ in range(2):
            n = struct.unpack(">H", f.read(2))[0]
            msg = f.read(n)
            got[struct.unpack(">H", msg[:2])[0]] = rcode(msg)
        assert got == {7: 1, 0x4242: 0}
    assert "192.0.2.10" in dig(udp, "www.example.test", "A")


def test_any_gets_a_minimal_answer(daemons, nsd):
    d, udp, tcp = start(daemons, [f"127.0.0.1:{nsd.port}"])
    out = dig(udp, "example.test", "ANY")
    recs = answers(out)
    assert len(recs) == 1 and recs[0][2] == "HINFO" and "RFC8482" in recs[0][3]


def test_disallowed_network_is_refused(daemons, nsd):
    with RemoteHost(index=7) as remote:
        d = daemons.start("dns-forwarder", config(
            [f"127.0.0.1:{nsd.port}"], listen='"udp://0.0.0.0:0", "tcp://0.0.0.0:0"'))
        udp, tcp = d.addr("dns", "udp")[1], d.addr("dns", "tcp")[1]
        for args in ([], ["+tcp"]):
            argv = ["dig", "-p", str(udp if not args else tcp), f"@{remote.local}", "+time=3",
                    "+tries=1", *args, "www.example.test", "A"]
            out = remote.run(argv, capture_output=True, text=True, timeout=30).stdout
            assert status_of(out) == "REFUSED", out
            assert answers(out) == []
        # Loopback is still answered.
        assert "192.0.2.10" in dig(udp, "www.example.test", "A")


FLOOD = """
import socket, sys
host, port, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
packet = bytes.fromhex(sys.argv[4])
with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
    for _ in range(count):
        s.sendto(packet, (host, port))
    s.settimeout(1.0)
    got = 0
    try:
        while True:
            s.recv(4096)
            got += 1
    except socket.timeout:
        pass
print(got)
"""


def flood(port, count=3000, host="127.0.0.1", remote=None):
    """Sends `count` queries at once and returns how many answers came back."""
    argv = ["python3", "-c", FLOOD, host, str(port), str(count),
            query_packet("www.example.test").hex()]
    run = remote.run if remote else subprocess.run
    return int(run(argv, capture_output=True, text=True, timeout=60, check=True).stdout)


def rate_limited(d):
    """The rate-limited count, as SIGUSR1 logs it and STATUS= says it (the same figure)."""
    d.lines.clear()
    d.signal(signal.SIGUSR1)
    line = d.wait_log("statistics")
    logged = int(re.search(r"(\d+) rate-limited", line).group(1))
    deadline = time.monotonic() + 10
    while True:
        status = [m for m in d.notify.messages if m.startswith("STATUS=") and "rate-limited" in m]
        if status and int(re.search(r"(\d+) rate-limited", status[-1]).group(1)) == logged:
            return logged
        assert time.monotonic() < deadline, (line, status[-1:])
        time.sleep(0.2)


def test_loopback_is_never_rate_limited(daemons, nsd):
    """Every program on the host shares 127.0.0.1: a limit there throttles the host's own
    resolver (and a forged loopback source cannot come from outside the host)."""
    d, udp, tcp = start(daemons, [f"127.0.0.1:{nsd.port}"],
                        "[rate_limit]\nrate = 50\nburst = 50\nexempt_allowed = false\n")
    dig(udp, "www.example.test", "A")
    got = flood(udp)
    # Past the burst of 50 (the flood takes well under a second): the kernel drops what does
    # not fit its buffer, more on a loaded machine (256 of 3,000 answered once under load), so
    # the decisive check is that the daemon counted no query as rate-limited.
    assert got > 200, got
    assert rate_limited(d) == 0


def test_flood_from_a_network_the_acl_allows_is_limited_when_not_exempt(daemons, nsd):
    with RemoteHost(index=6) as remote:
        limits = f"""
[acl]
allow = ["127.0.0.0/8", "{remote.remote}/32"]
[rate_limit]
rate = 50
burst = 50
"""
        listen = '"udp://0.0.0.0:0", "tcp://0.0.0.0:0"'
        conf = config([f"127.0.0.1:{nsd.port}"], limits, listen=listen)
        # By default the networks the ACL allows are exempt, as loopback is.
        d = daemons.start("dns-forwarder", conf)
        udp = d.addr("dns", "udp")[1]
        assert flood(udp, host=remote.local, remote=remote) > 500
        assert rate_limited(d) == 0
        d.stop()
        d = daemons.start("dns-forwarder", conf + "exempt_allowed = false\n")
        udp = d.addr("dns", "udp")[1]
        got = flood(udp, host=remote.local, remote=remote)
        assert 0 < got < 3000
        assert rate_limited(d) > 0
        # Still up, and answering once the bucket refills.
        argv = ["dig", "-p", str(udp), f"@{remote.local}", "+time=2", "+tries=1",
                "www.example.test", "A"]
        deadline = time.monotonic() + 10
        while "192.0.2.10" not in remote.run(argv, capture_output=True, text=True).stdout:
            assert time.monotonic() < deadline
        assert d.proc.poll() is None


def test_refused_answers_to_other_networks_are_rate_limited(daemons, nsd):
    """A forged source outside the ACL would have REFUSED answers reflected at it: those are
    what the limit is for, exemption or not."""
    with RemoteHost(index=5) as remote:
        d = daemons.start("dns-forwarder", config(
            [f"127.0.0.1:{nsd.port}"], "[rate_limit]\nrate = 50\nburst = 50\n",
            listen='"udp://0.0.0.0:0", "tcp://0.0.0.0:0"'))
        udp = d.addr("dns", "udp")[1]
        got = flood(udp, host=remote.local, remote=remote)
        assert 0 < got < 3000
        assert rate_limited(d) > 0


# -- local data and operations ------------------------------------------------------------------

def test_local_records_hosts_file_and_blocklist(daemons, nsd, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("192.0.2.20 nas.lan nas\n2001:db8::20 nas.lan\n# comment\n")
    blocks = tmp_path / "blocked"
    blocks.write_text("0.0.0.0 tracker.example\n")
    extra = f"""
[local]
hosts_file = "{hosts}"
blocklist = ["ads.example"]
blocklist_file = "{blocks}"
[[record]]
name = "printer.lan"
type = "A"
value = "192.0.2.30"
ttl = 60
[[record]]
name = "printer.lan"
type = "TXT"
value = "second floor"
"""
    d, udp, tcp = start(daemons, [f"127.0.0.1:{nsd.port}"], extra)
    out = dig(udp, "printer.lan", "A")
    assert answers(out) == [("printer.lan.", 60, "A", "192.0.2.30")] and " aa" in out
    assert answers(dig(udp, "printer.lan", "TXT"))[0][3] == '"second floor"'
    assert answers(dig(udp, "-x", "192.0.2.30"))[0][3] == "printer.lan."
    assert answers(dig(udp, "nas", "A"))[0][3] == "192.0.2.20"
    assert answers(dig(udp, "nas.lan", "AAAA"))[0][3] == "2001:db8::20"
    assert answers(dig(udp, "-x", "2001:db8::20"))[0][3] == "nas.lan."
    assert status_of(dig(udp, "x.ads.example", "A")) == "NXDOMAIN"
    assert status_of(dig(udp, "tracker.example", "A")) == "NXDOMAIN"
    d.stop()
    extra = extra.replace("[local]", '[local]\nblock_mode = "zero"')
    d, udp, tcp = start(daemons, [f"127.0.0.1:{nsd.port}"], extra)
    assert answers(dig(udp, "ads.example", "A"))[0][3] == "0.0.0.0"
    assert answers(dig(udp, "ads.example", "AAAA"))[0][3] == "::"


def test_sighup_reloads_and_keeps_the_cache(daemons, nsd):
    d, udp, tcp = start(daemons, [f"127.0.0.1:{nsd.port}"])
    assert "192.0.2.10" in dig(udp, "www.example.test", "A")
    conf = daemons.workdir / "dns-forwarder.toml"
    conf.write_text(conf.read_text().replace(
        "[listen]", '[[record]]\nname = "new.lan"\ntype = "A"\nvalue = "192.0.2.40"\n\n[listen]'))
    d.signal(signal.SIGHUP)
    d.wait_log("configuration reloaded")
    assert answers(dig(udp, "new.lan", "A"))[0][3] == "192.0.2.40"
    nsd.stop()
    # Cached before the reload, still there after it.
    assert answers(dig(udp, "www.example.test", "A"))[0][3] == "192.0.2.10"
    d.notify.wait_for("STATUS=3 queries, 1 cache hits")
    d.signal(signal.SIGUSR1)
    line = d.wait_log("statistics")
    assert re.search(r"[1-9]\d* cache hits", line)


def test_randomized_case_must_come_back(daemons, nsd):
    """0x20: the question goes upstream in random case; an answer that does not echo it
    exactly is not accepted."""
    # NSD echoes the question as sent: answers flow.
    conf = config([f"127.0.0.1:{nsd.port}"]).replace("timeout = 0.7",
                                                    "timeout = 0.7\nrandomize_case = true")
    d = daemons.start("dns-forwarder", conf)
    port = d.addr("dns", "udp")[1]
    assert [a[3] for a in answers(dig(port, "www.example.test", "A"))] == ["192.0.2.10"]

    def lowercasing(sock, addr, q):
        qid, flags, name, qtype, do, question = q
        sock.sendto(a_answer(qid, question.lower(), "192.0.2.66"), addr)

    up = ScriptedUpstream(lowercasing)
    try:
        conf = config([f"127.0.0.1:{up.port}"]).replace(
            "timeout = 0.7", "timeout = 0.7\nrandomize_case = true")
        d = daemons.start("dns-forwarder", conf)
        port = d.addr("dns", "udp")[1]
        name = "abcdefghijklmnopqrstuvwxyz.example"
        out = dig(port, name, "A")
        sent = up.queries[0][1][2]
        assert sent.lower() == name + "." and sent != name + "."
        assert status_of(out) == "SERVFAIL"
    finally:
        up.close()


def test_follows_resolv_conf_when_no_upstream_is_configured(daemons, tmp_path):
    resolv = tmp_path / "resolv.conf"
    resolv.write_text("search example\nnameserver 192.0.2.1\n")
    d = daemons.start("dns-forwarder", config([]).replace(
        "timeout = 0.7", f'timeout = 0.7\nresolv_conf = "{resolv}"'))
    d.wait_log(r"upstream upstream=192\.0\.2\.1:53")
    resolv.write_text("nameserver 192.0.2.2\nnameserver 192.0.2.3\n")
    later = time.time() + 5
    os.utime(resolv, (later, later))
    d.wait_log("resolv.conf changed upstreams=2")
    d.signal(signal.SIGUSR1)
    line = d.wait_log("statistics")
    assert "192.0.2.2:53" in line and "192.0.2.3:53" in line and "192.0.2.1:53" not in line


def test_idle_tcp_connections_are_closed(daemons, nsd):
    d, udp, tcp = start(daemons, [f"127.0.0.1:{nsd.port}"], "[limits]\nidle_timeout = 1\n")
    with socket.create_connection(("127.0.0.1", tcp)) as s:
        s.settimeout(30)
        packet = query_packet("www.example.test")
        s.sendall(struct.pack(">H", len(packet)) + packet)
        n = struct.unpack(">H", s.recv(2))[0]
        assert len(s.recv(n, socket.MSG_WAITALL)) == n
        # Then nothing: the forwarder closes the connection (RFC 7766 §6.2.3).
        assert s.recv(1) == b""


def test_outstanding_upstream_questions_are_bounded(daemons):
    release = threading.Event()

    def slow(sock, addr, q):
        qid, flags, name, qtype, do, question = q
        release.wait(10)
        sock.sendto(a_answer(qid, question, "192.0.2.88"), addr)

    up = ScriptedUpstream(slow)
    try:
        conf = config([f"127.0.0.1:{up.port}"]).replace(
            "timeout = 0.7", "timeout = 5\nmax_outstanding = 1")
        d = daemons.start("dns-forwarder", conf)
        port = d.addr("dns", "udp")[1]
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as first:
            first.settimeout(10)
            first.sendto(query_packet("first.example", qid=1), ("127.0.0.1", port))
            deadline = time.monotonic() + 10
            while not up.queries:
                assert time.monotonic() < deadline
                time.sleep(0.01)
            # The one slot is taken: a second, different question is refused at once.
            r = udp_exchange(port, query_packet("second.example", qid=2))
            assert r is not None and rcode(r) == 2
            release.set()
            r = first.recv(4096)
            assert rcode(r) == 0 and r.endswith(socket.inet_aton("192.0.2.88"))
        d.signal(signal.SIGUSR1)
        assert "1 over max_outstanding" in d.wait_log("statistics")
    finally:
        release.set()
        up.close()
