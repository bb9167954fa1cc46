"""\\Recent as the RFC has it (RFC 3501 §2.3.2): one session gets it for each message, the
first to see it; a message a session appends to the folder it has selected is that session's.
The test files beside this one check \\Recent after delivery, COPY and MOVE."""

import re

from support.imap import client, config, imap, ok  # noqa: F401 (imap is a fixture)
from support.homes import message


def test_a_message_appended_to_the_selected_folder_is_recent_to_its_appender(imap, cert):
    """RFC 3501 §6.3.11: APPEND into the selected folder; the appending session takes the
    message as \\Recent (stored straight into cur/), another session with the folder selected
    sees it arrive without."""
    a = client(imap, cert)
    b = client(imap, cert)
    ok(a.select("INBOX"))
    ok(b.select("INBOX"))
    typ, data = a.append("INBOX", "(\\Flagged)", None, message(7))
    assert typ == "OK", data
    assert a.untagged_responses.get("RECENT")[-1] == b"4", a.untagged_responses
    uid = re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1).decode()
    assert ok(a.uid("FETCH", uid, "(FLAGS)")) == [f"4 (UID {uid} FLAGS (\\Flagged \\Recent))".encode()]
    ok(b.noop())
    assert b.untagged_responses.get("EXISTS") == [b"3", b"4"], b.untagged_responses
    assert b.untagged_responses.get("RECENT") in (None, [b"0"], [b"0", b"0"]), b.untagged_responses
    assert ok(b.uid("FETCH", uid, "(FLAGS)")) == [f"4 (UID {uid} FLAGS (\\Flagged))".encode()]
    inbox = imap.mail / "alice"
    assert list((inbox / "new").iterdir()) == []
    assert [p.name.endswith(":2,F") for p in (inbox / "cur").iterdir()].count(True) == 1
