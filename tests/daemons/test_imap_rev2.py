"""inetkit-imapd's IMAP4rev2 (RFC 9051) behind `ENABLE IMAP4rev2`, over real sockets: each
rev2 behaviour beside what a session that did not enable it still gets (a rev1 client sees no
difference), with mail delivered by `inetkit deliver` while the sessions run, and the mailbox
names a rev2 client writes in UTF-8 kept on disk in modified UTF-7, as Dovecot keeps them."""

import re

import pytest

from support.homes import daemon_config, message, seed
from support.imap import RawImap


def config(users, mail):
    return daemon_config(("imap",), users, auth="failure_delay = 0\n",
                         rest=f'[mail]\nroot = "{mail}"\n')


@pytest.fixture
def imap(daemons, mailhome):
    users, mail = mailhome
    for n in (1, 2):
        seed(mail, "alice", message(n))
    d = daemons.start("imapd", config(users, mail))
    d.mail = mail
    d.users = users
    return d


class Rev2(RawImap):
    """A raw session that enabled IMAP4rev2 right after login."""

    def __init__(self, d):
        super().__init__(d)
        assert self.command("ENABLE IMAP4rev2")[0] == b"* ENABLED IMAP4rev2\r\n"


def untagged(lines, prefix: bytes) -> list[bytes]:
    return [l for l in lines if l.startswith(prefix)]


def test_capability_lists_both_revisions(imap):
    a = RawImap(imap)
    assert re.match(rb"\* OK \[CAPABILITY IMAP4REV1 IMAP4rev2 ", a.greeting), a.greeting
    caps = a.command("CAPABILITY")[0].split()
    assert b"IMAP4REV1" in caps and b"IMAP4rev2" in caps and b"ENABLE" in caps


def test_select_and_new_mail_without_recent(imap):
    rev2 = Rev2(imap)
    # rev2 selects first: the two new messages are its \Recent ones, never shown.
    out = rev2.command("SELECT INBOX")
    assert b"* 2 EXISTS\r\n" in out, out
    assert not any(b"RECENT" in l or b"[UNSEEN" in l for l in out), out
    assert untagged(out, b"* LIST") == [b'* LIST (\\HasNoChildren) "/" INBOX\r\n']
    assert any(b"[PERMANENTFLAGS (" in l for l in out), out
    assert not any(b"\\Recent" in l for l in out), out
    fetched = rev2.command("FETCH 1:2 (FLAGS)")
    assert len(untagged(fetched, b"* ")) == 2
    assert not any(b"\\Recent" in l for l in fetched), fetched
    # A delivery while selected: EXISTS, no RECENT, no \Recent.
    seed(imap.mail, "alice", message(3))
    out = rev2.command("NOOP")
    assert b"* 3 EXISTS\r\n" in out and not any(b"RECENT" in l for l in out), out
    assert b"\\Recent" not in rev2.command("FETCH 3 (FLAGS)")[0]

    # A rev1 session on the same INBOX: RECENT and UNSEEN as always, no LIST line.
    rev1 = RawImap(imap)
    out = rev1.command("SELECT INBOX")
    assert b"* 0 RECENT\r\n" in out and any(b"[UNSEEN 1]" in l for l in out), out
    assert untagged(out, b"* LIST") == []
    seed(imap.mail, "alice", message(4))
    out = rev1.command("NOOP")
    assert b"* 4 EXISTS\r\n" in out and b"* 1 RECENT\r\n" in out, out
    assert b"\\Recent" in rev1.command("FETCH 4 (FLAGS)")[0]
    assert rev1.command("SEARCH RECENT")[0] == b"* SEARCH 4\r\n"
    out = rev2.command("NOOP")
    assert b"* 4 EXISTS\r\n" in out and not any(b"RECENT" in l for l in out), out
    # rev2 refuses what tests \Recent.
    rev2.command("SEARCH NEW", expect=b"BAD")
    rev2.command("STATUS INBOX (RECENT)", expect=b"BAD")
    rev1.close()
    rev2.close()


def test_search_answers_esearch(imap):
    rev1, rev2 = RawImap(imap), Rev2(imap)
    rev1.command("SELECT INBOX")
    rev2.command("EXAMINE INBOX")
    assert rev1.command("SEARCH ALL")[0] == b"* SEARCH 1 2\r\n"
    assert rev2.command("SEARCH ALL")[0] == b'* ESEARCH (TAG "r%d") ALL 1:2\r\n' % rev2.n
    out = rev2.command('UID SEARCH SUBJECT "message 2"')
    assert out[0] == b'* ESEARCH (TAG "r%d") UID ALL 2\r\n' % rev2.n
    # Nothing found: the tag alone.
    assert rev2.command("SEARCH DELETED")[0] == b'* ESEARCH (TAG "r%d")\r\n' % rev2.n
    out = rev2.command("SEARCH RETURN (COUNT) ALL")
    assert out[0] == b'* ESEARCH (TAG "r%d") COUNT 2\r\n' % rev2.n
    # SORT and THREAD keep their own responses.
    assert rev2.command("SORT (SUBJECT) UTF-8 ALL")[0] == b"* SORT 1 2\r\n"
    assert rev2.command("THREAD ORDEREDSUBJECT UTF-8 ALL")[0] == b"* THREAD (1)(2)\r\n"


def test_status_deleted(imap):
    rev1, rev2 = RawImap(imap), Rev2(imap)
    rev2.command("SELECT INBOX")
    rev2.command("STORE 1 +FLAGS.SILENT (\\Deleted)")
    out = rev2.command("STATUS INBOX (MESSAGES DELETED UNSEEN)")
    assert out[0] == b"* STATUS INBOX (MESSAGES 2 DELETED 1 UNSEEN 2)\r\n", out
    out = rev2.command('LIST "" "*" RETURN (STATUS (DELETED))')
    assert b"* STATUS INBOX (DELETED 1)\r\n" in out, out
    # A rev1 session answers as before: RECENT yes, DELETED no.
    assert rev1.command("STATUS INBOX (RECENT)")[0].startswith(b"* STATUS INBOX (RECENT ")
    rev1.command("STATUS INBOX (DELETED)", expect=b"BAD")


def test_utf8_mailbox_names_and_modified_utf7_on_disk(imap):
    rev1, rev2 = RawImap(imap), Rev2(imap)
    rev2.command('CREATE "Entwürfe"')
    rev2.command('CREATE "R&D"')
    home = imap.mail / "alice"
    assert (home / ".Entw&APw-rfe" / "cur").is_dir()
    assert (home / ".R&-D" / "cur").is_dir()
    # The same folders, as each revision names them.
    out1 = rev1.command('LIST "" "*"')
    assert b'* LIST (\\HasNoChildren) "/" "Entw&APw-rfe"\r\n' in out1, out1
    assert b'* LIST (\\HasNoChildren) "/" "R&-D"\r\n' in out1, out1
    out2 = rev2.command('LIST "" "*"')
    at = out2.index(b'* LIST (\\HasNoChildren) "/" {9}\r\n')
    assert out2[at + 1] == "Entwürfe\r\n".encode()
    assert b'* LIST (\\HasNoChildren) "/" "R&D"\r\n' in out2, out2
    # Quoted and as a literal.
    rev2.command('APPEND "Entwürfe" {3+}\r\nx\r\n')
    out = rev2.command("STATUS {9+}\r\nEntwürfe (MESSAGES)")
    assert out[:2] == [b"* STATUS {9}\r\n", "Entwürfe (MESSAGES 1)\r\n".encode()], out
    out = rev2.command('SELECT "Entwürfe"')
    assert b"* 1 EXISTS\r\n" in out, out
    # rev1 may not quote 8-bit bytes; it names the folder in modified UTF-7.
    rev1.command('SELECT "Entwürfe"', expect=b"BAD")
    assert b"* 1 EXISTS\r\n" in rev1.command('SELECT "Entw&APw-rfe"')
    # Invalid UTF-8 in a rev2 quoted string.
    rev2.s.sendall(b'x1 SELECT "Entw\xfcrfe"\r\n')
    assert rev2.f.readline() == b"x1 BAD Quoted string is not UTF-8.\r\n"
    # Renamed in UTF-8, seen renamed by rev1.
    rev2.command('RENAME "R&D" "Ablage/Forschung & Entwicklung ü"')
    assert (home / ".Ablage.Forschung &- Entwicklung &APw-" / "cur").is_dir()
    out1 = rev1.command('LIST "" "Ablage/*"')
    assert b'* LIST (\\HasNoChildren) "/" "Ablage/Forschung &- Entwicklung &APw-"\r\n' in out1


def test_enable_after_select_and_in_one_session(imap):
    """ENABLE belongs before SELECT (RFC 9051 §6.3.1); a client that sends it later all the
    same stops seeing \\Recent at once."""
    a = RawImap(imap)
    a.command("SELECT INBOX")
    assert b"\\Recent" in a.command("FETCH 1 FLAGS")[0]
    assert a.command("ENABLE IMAP4rev2")[0] == b"* ENABLED IMAP4rev2\r\n"
    assert b"\\Recent" not in a.command("FETCH 1 FLAGS")[0]
    assert a.command("SEARCH ALL")[0].startswith(b"* ESEARCH ")
