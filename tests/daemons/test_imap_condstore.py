"""inetkit-imapd's CONDSTORE and QRESYNC (RFC 7162) over real sockets: mod-sequences that
follow changes by other sessions and other processes (a delivery by `inetkit deliver`, a file
removed by another program), survive a restart, and come back above the old numbers when the
record is damaged."""

import re
from pathlib import Path

import pytest

from support.homes import daemon_config, message, seed
from support.imap import RawImap


def config(users, mail):
    return daemon_config(("imap",), users, auth="failure_delay = 0\n",
                         rest=f'[mail]\nroot = "{mail}"\n[log]\nlevel = "debug"\n')


@pytest.fixture
def imap(daemons, mailhome):
    users, mail = mailhome
    for n in range(1, 4):
        seed(mail, "alice", message(n))
    d = daemons.start("imapd", config(users, mail))
    d.mail = mail
    d.users = users
    return d


class Raw(RawImap):
    """A raw session on a daemon that offers CONDSTORE and QRESYNC from the greeting on."""

    def __init__(self, d):
        super().__init__(d)
        assert b"CONDSTORE" in self.greeting and b"QRESYNC" in self.greeting, self.greeting


def number(lines: list[bytes], pattern: bytes) -> int:
    for line in lines:
        m = re.search(pattern, line)
        if m:
            return int(m.group(1))
    raise AssertionError(f"{pattern!r} not in {lines}")


def highest(lines):
    return number(lines, rb"\[HIGHESTMODSEQ (\d+)\]")


def modseq_of(lines, uid):
    return number(lines, rb"UID %d .*MODSEQ \((\d+)\)" % uid)


def test_modseq_follows_sessions_processes_and_a_restart(imap, daemons):
    a = Raw(imap)
    assert a.command("ENABLE QRESYNC")[0] == b"* ENABLED QRESYNC\r\n"
    selected = a.command("SELECT INBOX")
    h0 = highest(selected)
    validity = number(selected, rb"\[UIDVALIDITY (\d+)\]")
    # Another session's flag change reaches a with its MODSEQ.
    b = Raw(imap)
    b.command("SELECT INBOX")
    b.command("STORE 1 +FLAGS (\\Flagged)")
    told = a.command("NOOP")
    h1 = modseq_of(told, 1)
    assert h1 > h0, told
    # A delivery by another process gets a MODSEQ of its own.
    seed(imap.mail, "alice", message(4))
    assert b"* 4 EXISTS\r\n" in a.command("NOOP")
    h2 = modseq_of(a.command("FETCH 4 (UID MODSEQ)"), 4)
    assert h2 > h1
    # Another program removes message 2's file: VANISHED, not EXPUNGE, once QRESYNC is on.
    files = [p for sub in ("cur", "new") for p in (imap.mail / "alice" / sub).iterdir()
             if b"Subject: message 2\r\n" in p.read_bytes()]
    assert len(files) == 1
    files[0].unlink()
    assert b"* VANISHED 2\r\n" in a.command("NOOP")
    after = a.command(f"UID FETCH 1:* (FLAGS) (CHANGEDSINCE {h0} VANISHED)")
    assert after[0] == b"* VANISHED (EARLIER) 2\r\n", after
    assert [re.search(rb"UID (\d+)", l).group(1) for l in after[1:-1]] == [b"1", b"4"], after
    now = highest(Raw(imap).command("EXAMINE INBOX"))
    assert now > h2

    # Restarted, the daemon knows the same numbers: a client that knew the folder at h0
    # resyncs with one SELECT.
    imap.stop()
    d = daemons.start("imapd", config(imap.users, imap.mail))
    c = Raw(d)
    status = c.command("STATUS INBOX (HIGHESTMODSEQ)")
    assert status[0] == f"* STATUS INBOX (HIGHESTMODSEQ {now})\r\n".encode(), status
    c.command("ENABLE QRESYNC")
    resync = c.command(f"SELECT INBOX (QRESYNC ({validity} {h0} 1:4))")
    assert highest(resync) == now
    assert b"* VANISHED (EARLIER) 2\r\n" in resync, resync
    fetched = [l for l in resync if b" FETCH " in l]
    assert [modseq_of([l], uid) for l, uid in zip(fetched, (1, 4))] == [h1, h2], resync
    assert b"\\Flagged" in fetched[0]
    # A SELECT that replaces a selected folder says [CLOSED] first.
    again = c.command(f"SELECT INBOX (QRESYNC ({validity} {now}))")
    assert again[0].startswith(b"* OK [CLOSED]"), again
    assert not [l for l in again if b"FETCH" in l or b"VANISHED" in l], again


def test_a_modseq_change_alone_is_told(imap):
    """RFC 7162 §3.1: a client with CONDSTORE on learns every new MODSEQ, even when the flags
    were changed and changed back before it looked."""
    a = Raw(imap)
    h = highest(a.command("SELECT INBOX (CONDSTORE)"))
    b = Raw(imap)
    b.command("SELECT INBOX")
    b.command("STORE 1 +FLAGS.SILENT (\\Seen)")
    b.command("STORE 1 -FLAGS.SILENT (\\Seen)")
    told = a.command("NOOP")
    assert modseq_of(told, 1) > h, told
    assert number(a.command("FETCH 1 (MODSEQ)"), rb"MODSEQ \((\d+)\)") == modseq_of(told, 1)
    # Also when a's own STORE is the next thing a does: it does not swallow b's change.
    h = modseq_of(told, 1)
    b.command("STORE 2 +FLAGS.SILENT (\\Seen)")
    b.command("STORE 2 -FLAGS.SILENT (\\Seen)")
    stored = a.command("STORE 3 +FLAGS (\\Flagged)")
    assert modseq_of(stored, 3) > h and modseq_of(stored, 2) > h, stored


def test_unchangedsince_sees_another_sessions_change(imap):
    a = Raw(imap)
    h = highest(a.command("SELECT INBOX (CONDSTORE)"))
    b = Raw(imap)
    b.command("SELECT INBOX")
    b.command("STORE 2 +FLAGS (\\Answered)")
    reply = a.command(f"UID STORE 1:3 (UNCHANGEDSINCE {h}) +FLAGS (\\Seen)")
    assert reply[-1].endswith(b"OK [MODIFIED 2] Conditional STORE failed.\r\n"), reply
    seen = a.command("UID FETCH 1:3 (FLAGS)")
    flags = {int(re.search(rb"UID (\d+)", l).group(1)): l for l in seen if l.startswith(b"* ")}
    assert b"\\Seen" in flags[1] and b"\\Seen" in flags[3] and b"\\Seen" not in flags[2], seen
    # Bad modifiers are BAD, not ignored.
    a.command("FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)", expect=b"BAD")
    a.command(f"SELECT INBOX (QRESYNC (1 {h}))", expect=b"BAD")


def test_a_damaged_record_is_rebuilt_above_the_old_numbers(imap):
    a = Raw(imap)
    h0 = highest(a.command("SELECT INBOX (CONDSTORE)"))
    a.command("LOGOUT", expect=b"OK")
    record = imap.mail / "alice" / "inetkit-modseq"
    assert record.read_text().startswith("inetkit-modseq 2 ")
    record.write_bytes(b"inetkit-modseq 2 nonsense\n\xff\x00")
    c = Raw(imap)
    h1 = highest(c.command("SELECT INBOX (CONDSTORE)"))
    assert h1 > h0
    # A client with h0 cached is told every message changed: it refetches, it misses nothing.
    changed = c.command(f"FETCH 1:* (FLAGS) (CHANGEDSINCE {h0})")
    assert len([l for l in changed if l.startswith(b"* ")]) == 3, changed
    record.unlink()
    d = Raw(imap)
    assert highest(d.command("EXAMINE INBOX")) > h0
    assert Path(record).exists()


def test_search_and_esearch_carry_the_modseq_of_what_they_answer(imap):
    # RFC 7162 §3.1.5 with RFC 4731: the highest mod-sequence of all messages found, or of the
    # MIN/MAX ones when only those are returned (imaptest's esearch-condstore group).
    a = Raw(imap)
    a.command("SELECT INBOX (CONDSTORE)")
    for n in (3, 1, 2):  # message 2 changes last: it has the highest modseq
        a.command(f"STORE {n} +FLAGS (\\Seen)")
    fetched = a.command("FETCH 1:3 (UID MODSEQ)")
    mod = {n: number(fetched, rb"\* %d FETCH .*MODSEQ \((\d+)\)" % n) for n in (1, 2, 3)}
    assert mod[2] > mod[1] > mod[3], fetched
    reply = a.command("SEARCH MODSEQ 1")
    assert reply[0] == b"* SEARCH 1 2 3 (MODSEQ %d)\r\n" % mod[2], reply
    expected = {"MIN": b"MIN 1 MODSEQ %d" % mod[1], "MAX": b"MAX 3 MODSEQ %d" % mod[3],
                "MIN MAX": b"MIN 1 MAX 3 MODSEQ %d" % mod[1], "ALL": b"ALL 1:3 MODSEQ %d" % mod[2],
                "COUNT": b"COUNT 3 MODSEQ %d" % mod[2]}
    for options, answer in expected.items():
        reply = a.command(f"SEARCH RETURN ({options}) MODSEQ 1")
        assert reply[0].endswith(b") " + answer + b"\r\n"), (options, reply)
    # Without a MODSEQ key there is none.
    reply = a.command("SEARCH RETURN (ALL) ALL")
    assert b"MODSEQ" not in reply[0], reply
