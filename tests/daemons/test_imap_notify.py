"""inetkit-imapd's NOTIFY (RFC 5465) over real sockets: STATUS of other mailboxes when another
session or a delivery changes them (at command boundaries and during IDLE), LIST for names and
subscriptions, the selected mailbox's new messages fetched, the refusals (BADEVENT, BAD, LIMIT)
and the overflow past the bound on followed mailboxes."""

import re

import pytest

from support.homes import daemon_config, message, seed
from support.imap import RawImap


def config(users, mail):
    return daemon_config(("imap",), users, auth="failure_delay = 0\n",
                         rest=f'[mail]\nroot = "{mail}"\n[log]\nlevel = "debug"\n')


@pytest.fixture
def imap(daemons, mailhome):
    users, mail = mailhome
    seed(mail, "alice", message(1))
    d = daemons.start("imapd", config(users, mail))
    d.mail = mail
    d.users = users
    return d


Raw = RawImap


def untagged(lines, prefix: bytes) -> list[bytes]:
    return [l for l in lines if l.startswith(prefix)]


def test_capability_and_initial_status(imap):
    a = Raw(imap)
    assert b"NOTIFY" in a.command("CAPABILITY")[0].split()
    a.command("CREATE box")
    a.command("APPEND box {3+}\r\nx\r\n")
    out = a.command("NOTIFY SET STATUS (mailboxes box (MessageExpunge))")
    assert untagged(out, b"* STATUS") == [b'* STATUS "box" (MESSAGES 1)\r\n']
    out = a.command("NOTIFY SET STATUS (mailboxes box (MessageNew))")
    assert re.fullmatch(rb'\* STATUS "box" \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+\)\r\n',
                        untagged(out, b"* STATUS")[0])
    out = a.command("NOTIFY SET STATUS (mailboxes box (FlagChange))")
    assert re.fullmatch(rb'\* STATUS "box" \(UIDVALIDITY \d+ HIGHESTMODSEQ \d+\)\r\n',
                        untagged(out, b"* STATUS")[0])
    # Without STATUS, nothing at once.
    out = a.command("NOTIFY SET (mailboxes box (MessageNew MessageExpunge FlagChange))")
    assert untagged(out, b"* STATUS") == []


def test_other_sessions_changes_at_command_boundaries(imap):
    a, b = Raw(imap), Raw(imap)
    a.command("CREATE box")
    a.command("ENABLE CONDSTORE")
    a.command("NOTIFY SET (personal (MessageNew MessageExpunge FlagChange))")
    b.command("APPEND box {3+}\r\nx\r\n")
    out = a.command("NOOP")
    assert re.fullmatch(rb'\* STATUS "box" \(MESSAGES 1 UIDNEXT 2 UIDVALIDITY \d+ UNSEEN 1 '
                        rb"HIGHESTMODSEQ \d+\)\r\n", untagged(out, b"* STATUS")[0]), out
    # Nothing changed: nothing told.
    assert untagged(a.command("NOOP"), b"* STATUS") == []
    b.command("SELECT box")
    b.command("STORE 1 +FLAGS (\\Seen)")
    out = a.command("NOOP")
    assert b" UNSEEN 0 " in untagged(out, b"* STATUS")[0], out
    b.command("STORE 1 +FLAGS (\\Deleted)")
    b.command("EXPUNGE")
    out = a.command("NOOP")
    assert untagged(out, b"* STATUS")[0].startswith(b'* STATUS "box" (MESSAGES 0 '), out
    # NOTIFY NONE: no more.
    a.command("NOTIFY NONE")
    b.command("APPEND box {3+}\r\nx\r\n")
    assert untagged(a.command("NOOP"), b"* STATUS") == []


def test_events_not_asked_for_are_not_told(imap):
    a, b = Raw(imap), Raw(imap)
    a.command("CREATE box")
    b.command("APPEND box {3+}\r\nx\r\n")
    a.command("NOTIFY SET (mailboxes box (MessageExpunge))")
    b.command("APPEND box {3+}\r\ny\r\n")
    assert untagged(a.command("NOOP"), b"* STATUS") == []
    b.command("SELECT box")
    b.command("STORE 1 +FLAGS (\\Deleted)")
    b.command("EXPUNGE")
    assert untagged(a.command("NOOP"), b"* STATUS") == [b'* STATUS "box" (MESSAGES 1)\r\n']


def test_delivery_told_during_idle(imap):
    a = Raw(imap)
    a.command("CREATE box")
    a.command("SELECT box")
    a.command("NOTIFY SET (selected (MessageNew MessageExpunge)) (inboxes (MessageNew MessageExpunge))")
    a.s.sendall(b"i IDLE\r\n")
    assert a.f.readline().startswith(b"+ ")
    seed(imap.mail, "alice", message(2))
    lines = a.until(rb"^\* STATUS INBOX ")
    assert re.fullmatch(rb"\* STATUS INBOX \(MESSAGES 2 UIDNEXT 3 UIDVALIDITY \d+ UNSEEN 2\)\r\n",
                        lines[-1]), lines
    a.s.sendall(b"DONE\r\n")
    assert a.until(rb"^i ")[-1] == b"i OK IDLE terminated.\r\n"


def test_selected_mailbox_is_not_told_by_status_and_fetches_new_messages(imap):
    a, b = Raw(imap), Raw(imap)
    a.command("SELECT INBOX")
    a.command("NOTIFY SET (selected (MessageNew (UID FLAGS) MessageExpunge)) "
              "(personal (MessageNew MessageExpunge))")
    b.command("APPEND INBOX {3+}\r\nx\r\n")
    out = a.command("NOOP")
    assert b"* 2 EXISTS\r\n" in out, out
    assert untagged(out, b"* STATUS") == [], out
    assert any(re.fullmatch(rb"\* 2 FETCH \(UID 2 FLAGS \(.*\)\)\r\n", l) for l in out), out
    # During IDLE too.
    a.s.sendall(b"i IDLE\r\n")
    assert a.f.readline().startswith(b"+ ")
    b.command("APPEND INBOX {3+}\r\ny\r\n")
    lines = a.until(rb"^\* 3 FETCH \(UID 3 ")
    assert b"* 3 EXISTS\r\n" in lines
    a.s.sendall(b"DONE\r\n")
    a.until(rb"^i OK")
    # Once unselected, INBOX is told by STATUS.
    a.command("UNSELECT")
    b.command("APPEND INBOX {3+}\r\nz\r\n")
    assert untagged(a.command("NOOP"), b"* STATUS INBOX (MESSAGES 4 ")


def test_mailbox_names_and_subscriptions(imap):
    a, b = Raw(imap), Raw(imap)
    a.command("NOTIFY SET (personal (MailboxName SubscriptionChange))")
    b.command("CREATE new")
    assert untagged(a.command("NOOP"), b"* LIST") == [b'* LIST () "/" "new"\r\n']
    b.command("RENAME new renamed")
    assert untagged(a.command("NOOP"), b"* LIST") == [
        b'* LIST () "/" "renamed" ("OLDNAME" ("new"))\r\n']
    b.command("SUBSCRIBE renamed")
    assert untagged(a.command("NOOP"), b"* LIST") == [b'* LIST (\\Subscribed) "/" "renamed"\r\n']
    b.command("UNSUBSCRIBE renamed")
    assert untagged(a.command("NOOP"), b"* LIST") == [b'* LIST () "/" "renamed"\r\n']
    # After the commands imapd parses itself too (MULTIAPPEND here).
    a.command("NOTIFY SET (personal (MailboxName SubscriptionChange MessageNew MessageExpunge))")
    b.command("APPEND renamed {3+}\r\nx\r\n")
    out = a.command("APPEND INBOX {3+}\r\nx\r\n {3+}\r\ny\r\n")
    assert untagged(out, b'* STATUS "renamed" (MESSAGES 1 '), out
    b.command("DELETE renamed")
    assert untagged(a.command("NOOP"), b"* LIST") == [
        b'* LIST (\\NonExistent) "/" "renamed"\r\n']


def test_refusals(imap):
    a = Raw(imap)
    out = a.command("NOTIFY SET (personal (MessageNew MessageExpunge AnnotationChange))", b"NO")
    assert out[-1].startswith(b"r%d NO [BADEVENT" % a.n + b" (MessageNew MessageExpunge FlagChange "
                              b"MailboxName SubscriptionChange)]"), out
    a.command("NOTIFY SET (selected (MessageNew))", b"BAD")
    a.command("NOTIFY SET (selected (FlagChange MessageNew))", b"BAD")
    a.command("NOTIFY SET (personal (MessageNew (UID) MessageExpunge))", b"BAD")
    a.command("NOTIFY SET (selected (MessageNew (NOSUCHATT) MessageExpunge))", b"BAD")
    a.command("NOTIFY SET (everything (MessageNew))", b"BAD")
    names = " ".join(f"m{i}" for i in range(257))
    a.command(f"NOTIFY SET (mailboxes ({names}) (MessageNew))", b"BAD")


def test_bound_on_followed_mailboxes_and_overflow(imap):
    a, b = Raw(imap), Raw(imap)
    # 256 folders (INBOX and the special-use ones included): the most one NOTIFY follows.
    existing = len(untagged(a.command('LIST "" *'), b"* LIST"))
    for i in range(256 - existing):
        a.command(f"CREATE f{i:03}")
    a.command("NOTIFY SET (personal (MessageNew MessageExpunge))")
    b.command("APPEND f000 {3+}\r\nx\r\n")
    assert untagged(a.command("NOOP"), b'* STATUS "f000" (MESSAGES 1 ')
    # The last folder has no inotify watch (32 per NOTIFY): compared at each look instead.
    last = f"f{256 - existing - 1:03}"
    b.command(f"APPEND {last} {{3+}}\r\nx\r\n")
    assert untagged(a.command("NOOP"), b'* STATUS "%s" (MESSAGES 1 ' % last.encode())
    b.command(f"APPEND {last} {{3+}}\r\ny\r\n")
    assert untagged(a.command("NOOP"), b'* STATUS "%s" (MESSAGES 2 ' % last.encode())
    # One more: the client is told of the overflow, and NOTIFY is off.
    b.command("CREATE extra")
    out = a.command("NOOP")
    assert untagged(out, b"* OK [NOTIFICATIONOVERFLOW]"), out
    b.command("APPEND f000 {3+}\r\ny\r\n")
    assert untagged(a.command("NOOP"), b"* STATUS") == []
    out = a.command("NOTIFY SET (personal (MessageNew MessageExpunge))", b"NO")
    assert out[-1].startswith(b"r%d NO [LIMIT]" % a.n), out
    # A narrower filter is fine.
    a.command("NOTIFY SET (inboxes (MessageNew MessageExpunge))")
