"""COPY and MOVE as a client sees them: MOVE's responses (RFC 6851), and \\Recent on messages
that arrive by COPY, MOVE or APPEND, flags or not (RFC 3501 §2.3.2, §6.3.11, §6.4.7): the
first session to select the folder after they arrived sees them \\Recent, and no session
after it does. What a kill -9 or a full disk in the middle leaves is in test_crash*.py."""

import re

import pytest

from support.homes import daemon_config, message, seed
from support.imap import client, ok


@pytest.fixture
def imap(daemons, mailhome, cert):
    users, mail = mailhome
    for n in range(1, 4):
        seed(mail, "alice", message(n))
    return daemons.start("imapd", daemon_config(
        ("imap",), users, cert, auth="failure_delay = 0\n", rest=f'[mail]\nroot = "{mail}"\n'))


def flags_by_uid(c) -> dict:
    """{uid: set of flags} of the selected folder."""
    out = {}
    for line in ok(c.uid("FETCH", "1:*", "(FLAGS)")):
        uid = int(re.search(rb"UID (\d+)", line).group(1))
        out[uid] = set(re.search(rb"FLAGS \(([^)]*)\)", line).group(1).decode().split())
    return out


def test_copied_moved_and_appended_messages_are_recent_to_the_first_session(imap, cert):
    a = client(imap, cert)
    ok(a.create("Archive"))
    ok(a.select("INBOX"))
    ok(a.uid("STORE", "1", "+FLAGS", "(\\Seen)"))
    ok(a.uid("STORE", "2", "+FLAGS", "(\\Flagged $Label1)"))
    ok(a.uid("COPY", "1", "Archive"))
    ok(a._simple_command("UID", "MOVE", "2", "Archive"))
    ok(a.uid("COPY", "3", "Archive"))
    ok(a.append("Archive", "(\\Seen \\Answered)", None, message(4)))
    ok(a.append("Archive", None, None, message(5)))

    b = client(imap, cert)
    ok(b.select("Archive"))
    assert b.response("RECENT")[1] == [b"5"]
    assert flags_by_uid(b) == {
        1: {"\\Seen", "\\Recent"},
        2: {"\\Flagged", "$Label1", "\\Recent"},
        3: {"\\Recent"},
        4: {"\\Seen", "\\Answered", "\\Recent"},
        5: {"\\Recent"},
    }
    assert ok(b.search(None, "RECENT")) == [b"1 2 3 4 5"]

    # Only the first session: the next one sees the same flags without \Recent.
    c = client(imap, cert)
    ok(c.select("Archive"))
    assert c.response("RECENT")[1] == [b"0"]
    assert flags_by_uid(c) == {
        1: {"\\Seen"}, 2: {"\\Flagged", "$Label1"}, 3: set(), 4: {"\\Seen", "\\Answered"},
        5: set(),
    }
    for s in (a, b, c):
        s.logout()


def test_a_copy_into_the_selected_folder_is_recent_to_the_copying_session(imap, cert):
    a = client(imap, cert)
    ok(a.select("INBOX"))
    ok(a.uid("STORE", "1", "+FLAGS", "(\\Seen)"))
    ok(a.uid("COPY", "1", "INBOX"))
    ok(a.noop())
    assert a.response("EXISTS")[1][-1] == b"4"
    assert flags_by_uid(a)[4] == {"\\Seen", "\\Recent"}
    a.logout()


def test_move_answers_copyuid_then_expunges_from_the_highest(imap, cert):
    a = client(imap, cert)
    ok(a.create("Archive"))
    validity = re.search(rb"UIDVALIDITY (\d+)",
                         ok(a.status("Archive", "(UIDVALIDITY)"))[0]).group(1)
    ok(a.select("INBOX"))
    typ, _ = a._simple_command("UID", "MOVE", "1,3", "Archive")
    assert typ == "OK"
    # Each EXPUNGE's number holds when the client applies them in order.
    assert a.untagged_responses.pop("EXPUNGE") == [b"3", b"1"]
    copyuid = a.response("COPYUID")[1][0].split()
    assert copyuid == [validity, b"1,3", b"1:2"], copyuid
    assert ok(a.fetch("1:*", "(UID)")) == [b"1 (UID 2)"]
    assert b"MESSAGES 2" in ok(a.status("Archive", "(MESSAGES)"))[0]

    # Read-only: COPY is allowed, MOVE is not, and nothing moves.
    ok(a.select("INBOX", readonly=True))
    ok(a.uid("COPY", "2", "Archive"))
    typ, _ = a._simple_command("UID", "MOVE", "2", "Archive")
    assert typ == "NO"
    assert ok(a.fetch("1:*", "(UID)")) == [b"1 (UID 2)"]
    assert b"MESSAGES 3" in ok(a.status("Archive", "(MESSAGES)"))[0]
    a.logout()
