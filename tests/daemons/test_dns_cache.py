"""inetkit-dns-forwarder's cache, with NSD upstream and dig: TTLs counted down and expired,
negative answers cached for the SOA's time, stale answers served when the upstreams fail, TTL
clamps."""

import time

from support.dns import answers, dig, start, status_of
from support.dns import nsd  # noqa: F401 (a fixture)


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
