"""inetkit-dns-forwarder serving and forwarding, against a real authoritative server (NSD on
loopback) and a scripted upstream for the spoofing cases, with dig and kdig: UDP and TCP,
IPv4 and IPv6, truncation, DNSSEC records, spoofed answers, pipelined TCP, questions in flight
shared, failover between upstreams. The cache is in test_dns_cache.py, DNS over TLS in
test_dns_over_tls.py, bad input and rate limits in test_dns_abuse.py, local data and
operations in test_dns_operations.py."""

import signal
import socket
import struct
import time

from support.dns import (ScriptedUpstream, a_answer, answers, config, dig, encode_name, flags_of,
                         query_packet, rcode, start, status_of, udp_exchange)
from support.dns import nsd  # noqa: F401 (a fixture)
from support.nsd import free_port


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
