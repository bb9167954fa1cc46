"""inetkit-dns-forwarder as dnsmasq users know it: local CNAMEs followed to an address, MX,
SRV, TXT and PTR records, SOAs in local negative answers, per-domain forwarding, upstreams
that refuse skipped at once, a warning when every upstream fails, hosts-file lines that do not
parse reported. Clients: dig."""

import re
import socket
import struct

from support.dns import ScriptedUpstream, a_answer, answers, config, dig, start, status_of
from support.dns import nsd  # noqa: F401 (a fixture)
from support.nsd import free_port


def section(output, name):
    """The records of a section of dig's output as (name, ttl, type, data)."""
    out = []
    inside = False
    for line in output.splitlines():
        if line.startswith(f";; {name} SECTION"):
            inside = True
            continue
        if not line.strip() or line.startswith(";;"):
            inside = False
        if inside and not line.startswith(";"):
            parts = line.split(None, 4)
            if len(parts) == 5 and parts[2] == "IN":
                out.append((parts[0].lower(), int(parts[1]), parts[3], parts[4]))
    return out


def record(name, kind, value, ttl=None):
    return (f'\n[[record]]\nname = "{name}"\ntype = "{kind}"\nvalue = "{value}"\n'
            + (f"ttl = {ttl}\n" if ttl is not None else ""))


def test_local_cname_is_followed_to_its_targets_address(daemons, nsd):
    """RFC 1034 §4.3.2: the CNAME and its target's records in one answer (glibc does not
    chase a lone CNAME), through local data and on to an upstream."""
    extra = (record("printer.lan", "A", "192.0.2.30")
             + record("alias.lan", "CNAME", "printer.lan")
             + record("second.lan", "CNAME", "alias.lan")
             + record("web.lan", "CNAME", "www.example.test"))
    d, udp, tcp = start(daemons, [f"127.0.0.1:{nsd.port}"], extra)
    out = dig(udp, "second.lan", "A")
    assert status_of(out) == "NOERROR" and " aa" in out
    assert [(a[0], a[2], a[3]) for a in answers(out)] == [
        ("second.lan.", "CNAME", "alias.lan."),
        ("alias.lan.", "CNAME", "printer.lan."),
        ("printer.lan.", "A", "192.0.2.30"),
    ]
    # A target that is not local is asked upstream, the chain in front of its answer.
    out = dig(udp, "web.lan", "A")
    assert [(a[0], a[2], a[3]) for a in answers(out)] == [
        ("web.lan.", "CNAME", "www.example.test."),
        ("www.example.test.", "A", "192.0.2.10"),
    ]
    # Again, with the target cached; and over TCP.
    assert answers(dig(udp, "web.lan", "A")) and answers(dig(tcp, "+tcp", "web.lan", "A"))
    assert [a[3] for a in answers(dig(tcp, "+tcp", "web.lan", "A"))][-1] == "192.0.2.10"
    # Asked for the CNAME itself, only that.
    assert [a[2] for a in answers(dig(udp, "alias.lan", "CNAME"))] == ["CNAME"]


def test_local_mx_srv_txt_and_ptr_records(daemons, nsd):
    extra = (record("lan", "MX", "10 mail.lan")
             + record("mail.lan", "A", "192.0.2.25")
             + record("_sip._udp.lan", "SRV", "0 5 5060 sip.lan", ttl=120)
             + record("info.lan", "TXT", "x" * 300)
             + record("40.2.0.192.in-addr.arpa", "PTR", "gateway.lan"))
    d, udp, tcp = start(daemons, [f"127.0.0.1:{nsd.port}"], extra)
    assert answers(dig(udp, "lan", "MX")) == [("lan.", 300, "MX", "10 mail.lan.")]
    assert answers(dig(udp, "_sip._udp.lan", "SRV")) == [
        ("_sip._udp.lan.", 120, "SRV", "0 5 5060 sip.lan.")]
    # Longer than one TXT string holds: split in two.
    assert answers(dig(udp, "info.lan", "TXT"))[0][3] == f'"{"x" * 255}" "{"x" * 45}"'
    assert answers(dig(udp, "-x", "192.0.2.40"))[0][3] == "gateway.lan."
    # And the PTR an A record implies.
    assert answers(dig(udp, "-x", "192.0.2.25"))[0][3] == "mail.lan."


def test_local_negative_answers_carry_an_soa(daemons, nsd):
    """RFC 2308 §3: NODATA and NXDOMAIN with an SOA in the authority section, so that a
    client caches them (for the SOA's minimum: the local TTL)."""
    extra = '[local]\nttl = 120\nblocklist = ["ads.example"]\n' + record("printer.lan", "A",
                                                                           "192.0.2.30")
    d, udp, tcp = start(daemons, [f"127.0.0.1:{nsd.port}"], extra)
    out = dig(udp, "printer.lan", "AAAA")
    assert status_of(out) == "NOERROR" and answers(out) == []
    soa = section(out, "AUTHORITY")
    assert [(s[0], s[2]) for s in soa] == [("lan.", "SOA")], out
    assert soa[0][3].split()[-1] == "120"
    out = dig(udp, "x.ads.example", "A")
    assert status_of(out) == "NXDOMAIN"
    assert [(s[0], s[2]) for s in section(out, "AUTHORITY")] == [("ads.example.", "SOA")], out


def test_per_domain_forwarding_and_local_only_domains(daemons, nsd):
    """dnsmasq's server=/corp.example/ADDR and local=/lan/ as [[domain]]s."""
    def corp(sock, addr, q):
        qid, flags, name, qtype, do, question = q
        sock.sendto(a_answer(qid, question, "198.51.100.7"), addr)

    up = ScriptedUpstream(corp)
    try:
        extra = f"""
[[domain]]
name = "corp.example"
upstreams = ["127.0.0.1:{up.port}"]

[[domain]]
name = "public.corp.example"
upstreams = ["127.0.0.1:{nsd.port}"]

[[domain]]
name = "home.lan"
upstreams = []
""" + record("nas.home.lan", "A", "192.0.2.50")
        d, udp, tcp = start(daemons, [f"127.0.0.1:{nsd.port}"], extra)
        assert answers(dig(udp, "intranet.corp.example", "A"))[0][3] == "198.51.100.7"
        assert [q[1][2] for q in up.queries] == ["intranet.corp.example."]
        # The closest domain wins: NSD does not serve corp.example, so it says REFUSED.
        assert status_of(dig(udp, "www.public.corp.example", "A")) != "NOERROR"
        assert len(up.queries) == 1
        # Everything else goes to the general upstreams.
        assert answers(dig(udp, "www.example.test", "A"))[0][3] == "192.0.2.10"
        assert len(up.queries) == 1
        # A local-only domain: its names come from local data, the rest is NXDOMAIN with an
        # SOA, and nobody is asked.
        assert answers(dig(udp, "nas.home.lan", "A"))[0][3] == "192.0.2.50"
        out = dig(udp, "nothere.home.lan", "A")
        assert status_of(out) == "NXDOMAIN"
        assert [(s[0], s[2]) for s in section(out, "AUTHORITY")] == [("home.lan.", "SOA")]
        assert len(up.queries) == 1
    finally:
        up.close()


def test_an_upstream_that_refuses_is_skipped_at_once(daemons, nsd):
    """ICMP port unreachable (ECONNREFUSED on the connected UDP socket) and a TCP RST fail the
    upstream at once: with a 30-second timeout, dig's 5 seconds are only enough if the
    forwarder does not wait it out."""
    dead = free_port()
    with socket.socket() as tcp_dead:
        tcp_dead.bind(("127.0.0.1", 0))
        dead_tcp = tcp_dead.getsockname()[1]
    tls = (f'\n[[upstream]]\naddress = "127.0.0.1:{dead_tcp}"\nprotocol = "tls"\n'
           'tls_name = "dns.test"\n')
    for upstreams in ([f"127.0.0.1:{dead}"], [tls]):
        conf = config(upstreams).replace("timeout = 0.7", "timeout = 30")
        d = daemons.start("dns-forwarder", conf)
        udp = d.addr("dns", "udp")[1]
        out = dig(udp, "www.example.test", "A")
        assert status_of(out) == "SERVFAIL", out
        d.stop()
    # Before a live one.
    conf = config([f"127.0.0.1:{dead}", f"127.0.0.1:{nsd.port}"]).replace(
        "timeout = 0.7", "timeout = 30")
    d = daemons.start("dns-forwarder", conf)
    udp = d.addr("dns", "udp")[1]
    for n in ["www", "alias", "mixed", "ns"]:
        out = dig(udp, f"{n}.example.test", "A")
        assert status_of(out) == "NOERROR", out


def test_every_upstream_failing_is_a_warning_once_a_minute(daemons):
    dead = free_port()
    d, udp, tcp = start(daemons, [f"127.0.0.1:{dead}"])
    for n in range(3):
        assert status_of(dig(udp, f"n{n}.example.test", "A")) == "SERVFAIL"
    line = d.wait_log("every upstream failed")
    assert "WARN" in line and f"127.0.0.1:{dead}" in line and "refused" in line.lower(), line
    warned = [l for l in d.log().splitlines() if "every upstream failed" in l]
    assert len(warned) == 1, warned


def test_hosts_file_lines_that_do_not_parse_are_reported_with_their_number(daemons, nsd,
                                                                           tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("192.0.2.20 nas.lan\n192.0.2.300 broken.lan\n# fine\n\n"
                     "192.0.2.21\n192.0.2.22 good.lan bad..name\n")
    d, udp, tcp = start(daemons, [f"127.0.0.1:{nsd.port}"],
                        f'[local]\nhosts_file = "{hosts}"\n')
    line = d.wait_log(f"{hosts}:2: ")
    assert "WARN" in line and "192.0.2.300" in line, line
    assert "WARN" in d.wait_log(f"{hosts}:5: no name for 192.0.2.21")
    assert "bad..name" in d.wait_log(f"{hosts}:6: ")
    # The lines that parse are answered.
    assert answers(dig(udp, "nas.lan", "A"))[0][3] == "192.0.2.20"
    assert answers(dig(udp, "good.lan", "A"))[0][3] == "192.0.2.22"
