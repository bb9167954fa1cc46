"""inetkit-imapd against requests made to cost it memory or CPU (issue 13): one FETCH naming a
large section many times, literals announced and never sent, SEARCH with many keys from a
client that then leaves. The daemon's memory and CPU time are read from /proc; the bounds are
generous ratios of what the old code took, never timings."""

import os
import socket
import time

from support.homes import PASSWORD, seed
from support.imap import client, imap, ok, raw  # noqa: F401 (fixtures)

MIB = 1024 * 1024


def status_kib(pid: int, field: str) -> int:
    """A `/proc/<pid>/status` figure in KiB (VmRSS, VmHWM)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise KeyError(field)


def cpu_seconds(pid: int) -> float:
    """User and system CPU time of a process so far (`/proc/<pid>/stat`)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    # utime and stime are fields 14 and 15; the split starts at field 3.
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def big_message(size: int, subject: str = "big") -> bytes:
    head = f"From: Big <big@example.org>\r\nSubject: {subject}\r\n\r\n".encode()
    line = b"the quick brown fox jumps over the lazy dog, line %08d\r\n"
    lines = [line % i for i in range(size // len(line % 0))]
    return head + b"".join(lines)


def test_fetch_of_one_section_many_times_is_neither_built_nor_sent(imap, cert):
    """`UID FETCH n (BODY.PEEK[TEXT] ...x50)` on a 4 MiB message grew the daemon by 580 MiB
    before a byte went out: each item was copied, then all encoded into one buffer."""
    big = big_message(4 * MIB)
    seed(imap.mail, "alice", big)
    c = client(imap, cert)
    ok(c.select("INBOX"))
    before = status_kib(imap.pid, "VmHWM")
    typ, data = c.uid("FETCH", "4", "(" + " ".join(["BODY.PEEK[TEXT]"] * 50) + ")")
    assert typ == "NO" and b"[LIMIT]" in data[-1], (typ, data)
    # Within the budget: the message three times over, streamed item by item.
    data = ok(c.uid("FETCH", "4", "(BODY.PEEK[TEXT] BODY.PEEK[] BODY.PEEK[TEXT]<100.1000>)"))
    text = big[big.index(b"\r\n\r\n") + 4:]
    assert data[0][0].startswith(b"4 (UID 4 BODY[TEXT] {%d}" % len(text))
    assert data[0][1] == text and data[1][1] == big and data[2][1] == text[100:1100]
    grown = status_kib(imap.pid, "VmHWM") - before
    # The old code: about 140 times the message for the 50 items, 5 times for the three.
    assert grown < len(big) // 1024, f"the daemon grew by {grown} KiB"
    ok(c.noop())


def test_literals_announced_and_never_sent_take_no_memory(imap, cert):
    """`APPEND INBOX {67108000}` zero-filled 64 MiB before any data came and held it until
    the idle timeout: 8 such connections sending nothing grew the daemon by 525 MiB; `{n+}`
    did the same without waiting for a `+`."""
    before = status_kib(imap.pid, "VmHWM")
    idle = []
    for n in range(8):
        r = raw(imap, cert)
        r.send(f'l LOGIN alice "{PASSWORD}"\r\n'.encode())
        assert r.until(b"l")[-1].startswith(b"l OK")
        if n % 2:
            r.send(b"a APPEND INBOX {67108000}\r\n")
            assert r.line() == b"+ Ready for literal data\r\n"
        else:
            r.send(b"a APPEND INBOX {67108000+}\r\n" + b"x" * 1000)
        idle.append(r)
    # Nothing to wait for on the LITERAL+ ones: give their sessions a moment to read.
    time.sleep(1)
    grown = status_kib(imap.pid, "VmHWM") - before
    assert grown < 32 * 1024, f"the daemon grew by {grown} KiB"
    # They hold none of the budget either: a real APPEND of 4 MiB goes through meanwhile.
    c = client(imap, cert)
    big = big_message(4 * MIB)
    ok(c.append("INBOX", None, None, big))
    ok(c.select("INBOX"))
    assert ok(c.fetch("4", "(BODY.PEEK[])"))[0][1] == big
    for r in idle:
        r.s.close()


def big_inbox(imap, n=3):
    for i in range(n):
        seed(imap.mail, "alice", big_message(4 * MIB, subject=f"big {i}"))


def test_search_with_many_keys_costs_about_one_key(imap, cert):
    """Each TEXT key lowercased each message again and each header key parsed it again: 100
    keys over three 4 MiB messages took 2 s. Now a message is prepared once per SEARCH and a
    key given many times is one key."""
    big_inbox(imap)
    c = client(imap, cert)
    ok(c.select("INBOX"))
    # Every key holds, so each is looked at (a key that fails ends the AND early).
    start = cpu_seconds(imap.pid)
    assert ok(c.search(None, "NOT", "TEXT", "nowhere"))[0] == b"1 2 3 4 5 6"
    one = cpu_seconds(imap.pid) - start
    keys = ["NOT", "TEXT", "nowhere"] * 100
    for i in range(50):
        keys += ["NOT", "FROM", f"sender{i}"]
    start = cpu_seconds(imap.pid)
    assert ok(c.search(None, *keys))[0] == b"1 2 3 4 5 6"
    many = cpu_seconds(imap.pid) - start
    # The old code: about 150 times the one key.
    assert many < 10 * max(one, 0.1), (one, many)
    assert ok(c.search(None, "TEXT", "nowhere", "TEXT", "lazy", "FROM", "big@"))[0] == b""
    assert ok(c.search(None, "TEXT", "lazy", "TEXT", "lazy", "FROM", "big@"))[0] == b"4 5 6"


def test_search_stops_when_the_client_leaves(imap, cert):
    """A client that sent a SEARCH of 1,000 TEXT keys and left kept the daemon busy for about
    14 CPU-seconds. Now the search looks at the client between keys. (Every key here holds,
    so each must be looked at: some seconds of CPU even now.)"""
    big_inbox(imap)
    r = raw(imap, cert)
    r.send(f'l LOGIN alice "{PASSWORD}"\r\n'.encode())
    r.until(b"l")
    r.send(b"s SELECT INBOX\r\n")
    r.until(b"s")
    keys = " ".join(f"NOT BODY w{i:04}" for i in range(4000))
    start = cpu_seconds(imap.pid)
    r.send(f"a SEARCH {keys}\r\n".encode())
    # Once the search is under way (it takes seconds of CPU), the client leaves.
    give_up = time.monotonic() + 60
    while cpu_seconds(imap.pid) - start < 0.5:
        assert time.monotonic() < give_up, "the search never got under way"
        time.sleep(0.05)
    r.s.shutdown(socket.SHUT_RDWR)
    r.s.close()
    time.sleep(0.5)
    before, since = cpu_seconds(imap.pid), time.monotonic()
    time.sleep(2)
    burned = cpu_seconds(imap.pid) - before
    # The old code went on at a full core.
    assert burned < 0.25 * (time.monotonic() - since), burned
    # And the daemon still serves.
    c = client(imap, cert)
    ok(c.select("INBOX"))
    assert ok(c.search(None, "TEXT", "word0001"))[0] == b""
