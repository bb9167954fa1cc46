"""inetkit-dns-forwarder's local data and operations: local records, hosts file and blocklist,
SIGHUP reloading and keeping the cache, 0x20 randomized case, resolv.conf when no upstream is
configured, idle TCP connections closed, outstanding upstream questions bounded."""

import os
import re
import signal
import socket
import struct
import threading
import time

from support.dns import (ScriptedUpstream, a_answer, answers, config, dig, query_packet, rcode,
                         start, status_of, udp_exchange)
from support.dns import nsd  # noqa: F401 (a fixture)


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
