"""inetkit-imapd's commands with imaplib over STARTTLS: LIST, LSUB, NAMESPACE, STATUS, RENAME
of INBOX, SELECT, FETCH (sections, BODYSTRUCTURE, large and LF-only messages, sizes of messages
another program delivered), STORE, EXPUNGE, APPEND, COPY, MOVE (UIDPLUS) and SEARCH. Login is
in test_imap_login.py, several sessions at once in test_imap_sessions.py, other clients in
test_imap_clients.py, bad input in test_imap_bad_input.py."""

import imaplib
import re

import pytest

from support.homes import message, seed
from support.imap import client, config, imap, ok  # noqa: F401 (imap is a fixture)


MULTIPART = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: parts\r\n"
             b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
             b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nfirst part\r\n"
             b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
             b"Content-Disposition: attachment; filename=a.bin\r\n\r\nAAEC\r\n--XX--\r\n")


def test_list_lsub_namespace_status(imap, cert):
    c = client(imap, cert)
    lines = [l.decode() for l in ok(c.list('""', "*"))]
    assert '(\\HasNoChildren) "/" INBOX' in lines
    assert '(\\HasNoChildren \\Sent) "/" "Sent"' in lines
    for flag, name in [("\\Drafts", "Drafts"), ("\\Trash", "Trash"), ("\\Junk", "Junk")]:
        assert f'(\\HasNoChildren {flag}) "/" "{name}"' in lines
    ok(c.create("Projekte/Entwürfe".encode("utf-7").replace(b"+", b"&").decode()))
    ok(c.create("a/b"))
    lines = [l.decode() for l in ok(c.list('""', "%"))]
    # "a" itself does not exist: shown as a \\Noselect parent.
    assert '(\\Noselect \\HasChildren) "/" "a"' in lines
    assert not any('"a/b"' in l for l in lines)
    lines = [l.decode() for l in ok(c.list('""', "*"))]
    assert '(\\HasNoChildren) "/" "a/b"' in lines
    assert any("Projekte/Entw&APw-rfe" in l for l in lines), lines
    assert ok(c.list('""', '""')) == [b'(\\Noselect) "/" ""']
    # Subscribed: the folders there at the first login, not those CREATEd since (the client
    # subscribes what it creates) nor the \\Noselect parents.
    assert len(ok(c.lsub('""', "*"))) == len(lines) - 4
    ok(c.unsubscribe("Junk"))
    assert not any(b"Junk" in l for l in ok(c.lsub('""', "*")))
    ok(c.subscribe("Junk"))
    assert any(b"Junk" in l for l in ok(c.lsub('""', "*")))
    typ, data = c._simple_command("NAMESPACE")
    assert typ == "OK" and c.untagged_responses["NAMESPACE"] == [b'(("" "/")) NIL NIL']
    status = ok(c.status("INBOX", "(MESSAGES RECENT UIDNEXT UIDVALIDITY UNSEEN)"))[0].decode()
    assert re.fullmatch(r'INBOX \(MESSAGES 3 RECENT 3 UIDNEXT 4 UIDVALIDITY \d+ UNSEEN 3\)', status)
    ok(c.rename("a/b", "c/d"))
    assert any(b'"c/d"' in l for l in ok(c.list('""', "*")))
    ok(c.delete("c/d"))
    assert c.delete("c/d")[0] == "NO"
    assert c.delete("INBOX")[0] == "NO"
    assert c.create("Sent")[0] == "NO"


def test_rename_inbox_moves_its_messages(imap, cert):
    c = client(imap, cert)
    ok(c.select("INBOX"))
    ok(c.store("1", "+FLAGS", "(\\Flagged $Label1)"))
    ok(c.close())
    ok(c.rename("INBOX", "Old"))
    assert ok(c.status("INBOX", "(MESSAGES)"))[0] == b'INBOX (MESSAGES 0)'
    assert ok(c.status("Old", "(MESSAGES)"))[0] == b'"Old" (MESSAGES 3)'
    ok(c.select("Old"))
    flags = ok(c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
    assert b"\\Flagged" in flags[0][0] and b"$Label1" in flags[0][0]
    assert [f[1] for f in flags if isinstance(f, tuple)] == [
        f"Subject: message {n}\r\n\r\n".encode() for n in (1, 2, 3)]


def test_select_fetch_store_expunge(imap, cert):
    c = client(imap, cert)
    ok(c.select("INBOX"))
    r = c.untagged_responses
    assert r["EXISTS"] == [b"3"] and r["RECENT"] == [b"3"]
    assert r["FLAGS"] == [b"(\\Answered \\Flagged \\Deleted \\Seen \\Draft)"]
    assert c.untagged_responses.get("UIDVALIDITY")
    assert c.untagged_responses["UIDNEXT"] == [b"4"]
    assert c.untagged_responses["UNSEEN"] == [b"1"]
    data = ok(c.uid("FETCH", "1:*", "(FLAGS)"))
    assert data == [b"1 (UID 1 FLAGS (\\Recent))", b"2 (UID 2 FLAGS (\\Recent))",
                    b"3 (UID 3 FLAGS (\\Recent))"]
    data = ok(c.fetch("2", "(UID RFC822.SIZE INTERNALDATE ENVELOPE BODY.PEEK[HEADER.FIELDS (SUBJECT FROM)])"))
    head = data[0][0].decode()
    assert head.startswith("2 (UID 2 RFC822.SIZE %d INTERNALDATE \"" % len(message(2)))
    assert '"message 2"' in head and '(("Sender" NIL "sender" "example.org"))' in head
    assert "<2@example.org>" in head
    assert data[0][1] == b"From: Sender <sender@example.org>\r\nSubject: message 2\r\n\r\n"
    # BODY.PEEK does not set \Seen, BODY[] does.
    assert ok(c.fetch("2", "(FLAGS)")) == [b"2 (FLAGS (\\Recent))"]
    data = ok(c.fetch("2", "(BODY.PEEK[]<0.10>)"))
    assert data[0][1] == message(2)[:10] and b"BODY[]<0>" in data[0][0]
    data = ok(c.fetch("2", "(BODY[])"))
    assert data[0][1] == message(2) and b"\\Seen" in b" ".join(x if isinstance(x, bytes) else x[0] for x in data)
    data = ok(c.fetch("2", "(BODY[TEXT] RFC822.HEADER)"))
    assert data[0][1] == b"This is message 2.\r\n"
    data = ok(c.store("1:2", "+FLAGS", "(\\Flagged $Forwarded)"))
    assert b"\\Flagged" in data[0] and b"$Forwarded" in data[0]
    assert ok(c.store("1", "-FLAGS.SILENT", "(\\Flagged)")) == [None]
    assert ok(c.fetch("1", "(FLAGS)")) == [b"1 (FLAGS (\\Recent $Forwarded))"]
    ok(c.store("1,3", "+FLAGS.SILENT", "(\\Deleted)"))
    data = ok(c.expunge())
    assert data == [b"3", b"1"]
    assert ok(c.uid("FETCH", "1:*", "(FLAGS)")) == [b"1 (UID 2 FLAGS (\\Flagged \\Seen \\Recent $Forwarded))"]
    ok(c.close())
    ok(c.select("INBOX"))
    assert c.untagged_responses["EXISTS"] == [b"1"]
    assert c.untagged_responses["RECENT"] == [b"0"]
    assert "$Forwarded" in c.untagged_responses["FLAGS"][0].decode()


def test_bodystructure_and_parts(imap, cert):
    seed(imap.mail, "alice", MULTIPART)
    c = client(imap, cert)
    ok(c.select("INBOX", readonly=True))
    data = ok(c.fetch("4", "(BODYSTRUCTURE)"))[0].decode()
    assert data == ('4 (BODYSTRUCTURE (("TEXT" "PLAIN" ("CHARSET" "utf-8") NIL NIL "7BIT" 10 1 NIL NIL NIL NIL)'
                    '("APPLICATION" "OCTET-STREAM" NIL NIL NIL "BASE64" 4 NIL ("ATTACHMENT" ("FILENAME" "a.bin")) NIL NIL)'
                    ' "MIXED" ("BOUNDARY" "XX") NIL NIL NIL))'), data
    data = ok(c.fetch("4", "(BODY[1] BODY[2] BODY[2.MIME] BODY[3])"))
    # The CRLF before a boundary belongs to the boundary (RFC 2046 §5.1.1).
    assert data[0][1] == b"first part"
    assert data[1][1] == b"AAEC"
    assert data[2][1].startswith(b"Content-Type: application/octet-stream\r\n")
    assert data[3][1] == b""
    # EXAMINE is read-only: BODY[] leaves \Seen alone and STORE is refused.
    assert b"\\Seen" not in ok(c.fetch("4", "(FLAGS)"))[0]
    assert c.store("4", "+FLAGS", "(\\Seen)")[0] == "NO"


def test_append_copy_move_uidplus(imap, cert):
    c = client(imap, cert)
    ok(c.append("Drafts", "(\\Draft \\Seen)", imaplib.Time2Internaldate(1700000000),
                message(9)))
    assert re.fullmatch(rb"\d+ 1", c.response("APPENDUID")[1][0])
    assert c.append("Nope", None, None, message(9))[0] == "NO"
    ok(c.select("Drafts"))
    data = ok(c.fetch("1", "(FLAGS INTERNALDATE BODY.PEEK[])"))
    assert b"\\Draft" in data[0][0] and b"14-Nov-2023 22:13:20 +0000" in data[0][0]
    assert data[0][1] == message(9)
    ok(c.select("INBOX"))
    ok(c.uid("COPY", "1:2", "Sent"))
    assert re.fullmatch(rb"\d+ 1:2 1:2", c.response("COPYUID")[1][0])
    typ, data = c._simple_command("UID", "MOVE", "3", "Trash")
    assert typ == "OK"
    assert c.untagged_responses["EXPUNGE"] == [b"3"]
    assert re.fullmatch(rb"\d+ 3 1", c.response("COPYUID")[1][0])
    ok(c.status("Trash", "(MESSAGES)"))
    assert b"MESSAGES 1" in ok(c.status("Trash", "(MESSAGES)"))[0]
    # UID EXPUNGE removes only the named \Deleted messages.
    ok(c.store("1:2", "+FLAGS.SILENT", "(\\Deleted)"))
    typ, _ = c._simple_command("UID", "EXPUNGE", "2")
    assert typ == "OK"
    assert ok(c.uid("FETCH", "1:*", "(FLAGS)")) == [b"1 (UID 1 FLAGS (\\Deleted \\Recent))"]
    ok(c._simple_command("UNSELECT"))
    with pytest.raises(imaplib.IMAP4.error, match="No mailbox selected"):
        c.fetch("1", "(FLAGS)")


def test_search(imap, cert):
    seed(imap.mail, "alice", MULTIPART)
    c = client(imap, cert)
    ok(c.select("INBOX"))
    ok(c.store("2", "+FLAGS", "(\\Seen \\Flagged)"))
    s = lambda *q: ok(c.search(None, *q))[0].decode()
    assert s("ALL") == "1 2 3 4"
    assert s("SEEN") == "2" and s("UNSEEN") == "1 3 4" and s("FLAGGED") == "2"
    assert s("NOT", "SEEN") == "1 3 4"
    assert s("OR", "1", "3") == "1 3"
    assert s("SUBJECT", '"message 3"') == "3"
    assert s("FROM", "sender@example.org") == "1 2 3"
    assert s("HEADER", "Message-ID", "<1@example.org>") == "1"
    assert s("BODY", '"first part"') == "4"
    assert s("TEXT", "parts") == "4"
    assert s("LARGER", "300") == "4" and s("SMALLER", "300") == "1 2 3"
    assert s("SENTON", "2-Mar-2026") == "1 2 3"
    assert s("SENTBEFORE", "1-Jan-2000") == ""
    assert s("SINCE", "1-Jan-2000") == "1 2 3 4"
    assert s("2:*") == "2 3 4"
    assert s("1:4294967295") == "1 2 3 4"
    assert s("UID", "3:*") == "3 4"
    assert s("NEW") == "1 3 4" and s("RECENT") == "1 2 3 4" and s("OLD") == ""
    assert s("KEYWORD", "$Junk") == ""
    assert ok(c.uid("SEARCH", "CHARSET", "UTF-8", "UNSEEN"))[0] == b"1 3 4"
    assert c.search("KOI8-R", "ALL")[0] == "NO"


def test_large_and_lf_only_messages_stream_as_crlf(imap, cert):
    big_lf = b"Subject: big\n\n" + b"".join(b"line %07d of a large message, LF only\n" % i
                                            for i in range(80_000))
    seed(imap.mail, "alice", big_lf)
    seed(imap.mail, "alice", b"Subject: small\n\nbare LF\n")
    wire = big_lf.replace(b"\n", b"\r\n")
    c = client(imap, cert)
    ok(c.select("INBOX"))
    data = ok(c.fetch("4", "(RFC822.SIZE BODY.PEEK[])"))
    assert b"RFC822.SIZE %d " % len(wire) in data[0][0] and data[0][1] == wire
    data = ok(c.fetch("4", "(BODY.PEEK[]<1000000.5000>)"))
    assert data[0][1] == wire[1000000:1005000]
    data = ok(c.fetch("4", "(BODY.PEEK[]<3500000.100000>)"))
    assert data[0][1] == wire[3500000:3600000]
    data = ok(c.fetch("5", "(BODY.PEEK[] BODY.PEEK[TEXT] RFC822.SIZE)"))
    assert data[0][1] == b"Subject: small\r\n\r\nbare LF\r\n" and data[1][1] == b"bare LF\r\n"


def test_sizes_of_messages_another_program_delivered(imap, daemons, cert):
    """Folders filled by another program (names without sizes, bare LFs): numbered without
    reading a message; each place a size shows measures it first and gives the CRLF size (each
    checked on a folder of its own, nothing measured before), and the sizes are written down,
    so that a restarted daemon has them too."""
    # 20: measured at once, sizes are written into the uid list (from 16 on).
    bodies = [b"Subject: s%d\n\n" % n + b"x\n" * (n * 40) for n in range(1, 21)]
    wire = [len(b.replace(b"\n", b"\r\n")) for b in bodies]
    for folder in ("Fetch", "Search", "Sort", "Status"):
        cur = imap.mail / "alice" / f".{folder}" / "cur"
        for sub in ("cur", "new", "tmp"):
            (cur.parent / sub).mkdir(parents=True)
        for n, body in enumerate(bodies, 1):
            (cur / f"1700000{n:03d}.outside{n}.host:2,S").write_bytes(body)
    c = client(imap, cert)
    assert ok(c.status("Status", "(SIZE)"))[0] == b'"Status" (SIZE %d)' % sum(wire)
    ok(c.select("Search"))
    typ, data = c.uid("SEARCH", None, f"LARGER {wire[0]} SMALLER {wire[3]}")
    assert typ == "OK" and data[0].split() == [b"2", b"3"], data
    ok(c.select("Sort"))
    typ, data = c.uid("SORT", "(REVERSE SIZE)", "UTF-8", "ALL")
    assert typ == "OK" and data[0].split() == [b"%d" % n for n in range(20, 0, -1)], data
    ok(c.select("Fetch"))
    sizes = ok(c.fetch("1:*", "(RFC822.SIZE)"))
    assert [int(re.search(rb"RFC822.SIZE (\d+)", s).group(1)) for s in sizes] == wire, sizes
    c.logout()
    listed = (imap.mail / "alice" / ".Fetch" / "inetkit-uidlist").read_text()
    assert all(f"W={w} " in listed for w in wire), listed

    imap.stop()
    d = daemons.start("imapd", config(*imap.users_and_mail, cert))
    c = client(d, cert)
    ok(c.select("Fetch", readonly=True))
    sizes = ok(c.fetch("1:*", "(RFC822.SIZE)"))
    assert [int(re.search(rb"RFC822.SIZE (\d+)", s).group(1)) for s in sizes] == wire, sizes


def test_append_with_keywords_names_them_once(imap, cert):
    """A keyword given to APPEND is kept (the keyword file is read only when one is given),
    and a second APPEND with it and without any keyword adds no second name."""
    c = client(imap, cert)
    ok(c.append("Drafts", "(\\Seen $Label1 Project)", None, message(1)))
    ok(c.append("Drafts", "(project)", None, message(2)))
    ok(c.append("Drafts", None, None, message(3)))
    ok(c.select("Drafts"))
    flags = ok(c.fetch("1:3", "(FLAGS)"))
    assert b"$Label1" in flags[0] and b"Project" in flags[0] and b"\\Seen" in flags[0], flags
    assert b"Project" in flags[1] and b"$Label1" not in flags[1], flags
    assert b"Project" not in flags[2] and b"$Label1" not in flags[2], flags
    permanent = c.response("PERMANENTFLAGS")[1][0]
    assert permanent.count(b"Project") == 1 and b"project" not in permanent, permanent
