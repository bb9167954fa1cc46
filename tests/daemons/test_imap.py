"""inetkit-imapd with real clients: imaplib (STARTTLS and IMAP4_SSL), curl, a replayed
Thunderbird first session, several sessions and processes on one folder, and bad input."""

import imaplib
import re
import socket
import subprocess
import threading
import time

import pytest

from support.homes import PASSWORD, daemon_config, message, seed, tls_context

MULTIPART = (b"From: a@example.org\r\nTo: b@example.org\r\nSubject: parts\r\n"
             b"MIME-Version: 1.0\r\nContent-Type: multipart/mixed; boundary=XX\r\n\r\n"
             b"--XX\r\nContent-Type: text/plain; charset=utf-8\r\n\r\nfirst part\r\n"
             b"--XX\r\nContent-Type: application/octet-stream\r\nContent-Transfer-Encoding: base64\r\n"
             b"Content-Disposition: attachment; filename=a.bin\r\n\r\nAAEC\r\n--XX--\r\n")


def config(users, mail, cert, extra=""):
    """`extra`: lines for the [auth] section."""
    return daemon_config(("imap", "imaps"), users, cert, auth="failure_delay = 0\n" + extra,
                         rest=f'[mail]\nroot = "{mail}"\n[log]\nlevel = "debug"\n')


@pytest.fixture
def imap(daemons, mailhome, cert):
    users, mail = mailhome
    for n in range(1, 4):
        seed(mail, "alice", message(n))
    d = daemons.start("imapd", config(users, mail, cert))
    d.mail = mail
    d.users_and_mail = (users, mail)
    return d


def client(d, cert, starttls=True, login=True) -> imaplib.IMAP4:
    host, port = d.addr("imap")
    c = imaplib.IMAP4(host, port, timeout=30)
    if starttls:
        c.starttls(ssl_context=tls_context(cert))
    if login:
        c.login("alice", PASSWORD)
    return c


def ok(result):
    typ, data = result
    assert typ == "OK", (typ, data)
    return data


# -- imaplib ------------------------------------------------------------------------------------

def test_capabilities_starttls_and_login(imap, cert):
    host, port = imap.addr("imap")
    c = imaplib.IMAP4(host, port, timeout=30)
    caps = set(c.capabilities)
    for cap in ["IMAP4REV1", "STARTTLS", "LITERAL+", "SASL-IR", "IDLE", "UIDPLUS", "MOVE",
                "NAMESPACE", "ID", "ENABLE", "UNSELECT", "CHILDREN", "SPECIAL-USE", "AUTH=PLAIN"]:
        assert cap in caps, cap
    c.starttls(ssl_context=tls_context(cert))
    ok(c.login("alice", PASSWORD))
    caps = c.capability()[1][0].decode().split()
    # imap-codec spells it IMAP4REV1 (capability names are case-insensitive).
    assert "STARTTLS" not in caps and "IMAP4REV1" in caps
    assert c.logout()[0] == "BYE"


def test_implicit_tls_authenticate_plain(imap, cert):
    host, port = imap.addr("imaps")
    c = imaplib.IMAP4_SSL(host, port, ssl_context=tls_context(cert), timeout=30)
    ok(c.authenticate("PLAIN", lambda _: f"\0alice\0{PASSWORD}".encode()))
    data = ok(c.select("INBOX"))
    assert data == [b"3"]
    c.logout()


def test_authenticate_login_and_plain_with_and_without_sasl_ir(imap, cert):
    import base64
    b64 = lambda b: base64.b64encode(b).decode()
    host, port = imap.addr("imaps")
    # LOGIN, advertised beside PLAIN: imaplib answers the Username: and Password: challenges.
    c = imaplib.IMAP4_SSL(host, port, ssl_context=tls_context(cert), timeout=30)
    assert "AUTH=LOGIN" in c.capabilities and "AUTH=PLAIN" in c.capabilities
    asked = []
    def login(challenge):
        asked.append(challenge)
        return b"alice" if challenge == b"Username:" else PASSWORD.encode()
    ok(c.authenticate("LOGIN", login))
    assert asked == [b"Username:", b"Password:"]
    assert ok(c.select("INBOX")) == [b"3"]
    c.logout()
    # PLAIN without an initial response: an empty challenge first.
    c = imaplib.IMAP4_SSL(host, port, ssl_context=tls_context(cert), timeout=30)
    ok(c.authenticate("PLAIN", lambda ch: b"\0alice\0" + PASSWORD.encode() if ch == b"" else None))
    c.logout()
    # With SASL-IR (RFC 4959): PLAIN in one line; LOGIN's user name in the first line.
    r = raw(imap, cert)
    r.send(f"a1 AUTHENTICATE PLAIN {b64(bytes(1) + b'alice' + bytes(1) + b'wrong')}\r\n".encode())
    assert r.line().startswith(b"a1 NO [AUTHENTICATIONFAILED]")
    r.send(f"a2 AUTHENTICATE PLAIN {b64(bytes(1) + b'alice' + bytes(1) + PASSWORD.encode())}\r\n".encode())
    assert r.line().startswith(b"a2 OK [CAPABILITY IMAP4REV1")
    r = raw(imap, cert)
    r.send(f"b1 AUTHENTICATE LOGIN {b64(b'alice')}\r\n".encode())
    assert r.line() == b"+ UGFzc3dvcmQ6\r\n"
    r.send(f"{b64(PASSWORD.encode())}\r\n".encode())
    assert r.line().startswith(b"b1 OK [CAPABILITY IMAP4REV1")
    # Cancelled (RFC 3501: BAD), an empty initial response (which PLAIN cannot use), a
    # response that is not base64, and a mechanism we do not have.
    r = raw(imap, cert)
    r.send(b"c1 AUTHENTICATE LOGIN\r\n")
    assert r.line() == b"+ VXNlcm5hbWU6\r\n"
    r.send(b"*\r\n")
    assert r.line() == b"c1 BAD Authentication cancelled.\r\n"
    r.send(b"c2 AUTHENTICATE PLAIN =\r\n")
    assert r.line() == b"c2 BAD Malformed authentication response.\r\n"
    r.send(b"c3 AUTHENTICATE PLAIN\r\n")
    assert r.line() == b"+ \r\n"
    r.send(b"!!notbase64\r\n")
    assert r.line() == b"c3 BAD Malformed authentication response.\r\n"
    r.send(b"c4 AUTHENTICATE CRAM-MD5\r\n")
    assert r.line() == b"c4 NO [CANNOT] Unsupported authentication mechanism.\r\n"


def test_wrong_password_and_state(imap, cert):
    c = client(imap, cert, login=False)
    with pytest.raises(imaplib.IMAP4.error):
        c.login("alice", "wrong")
    ok(c.login("alice", PASSWORD))


def test_logindisabled_without_tls(daemons, mailhome, cert):
    users, mail = mailhome
    d = daemons.start("imapd", config(users, mail, cert, 'plaintext = "never"'))
    host, port = d.addr("imap")
    c = imaplib.IMAP4(host, port, timeout=30)
    assert "LOGINDISABLED" in c.capabilities
    assert "AUTH=PLAIN" not in c.capabilities and "AUTH=LOGIN" not in c.capabilities
    typ, data = c._simple_command("LOGIN", "alice", '"correct horse"')
    assert typ == "NO" and b"PRIVACYREQUIRED" in data[-1]
    c.starttls(ssl_context=tls_context(cert))
    assert "LOGINDISABLED" not in c.capabilities
    ok(c.login("alice", PASSWORD))


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


def test_idle_sees_delivery_and_other_session(imap, cert):
    a = client(imap, cert)
    b = client(imap, cert)
    ok(a.select("INBOX"))
    ok(b.select("INBOX"))
    tag = a._new_tag().decode()
    a.send(f"{tag} IDLE\r\n".encode())
    assert a.readline().startswith(b"+ ")
    seed(imap.mail, "alice", message(4))
    assert a.readline() == b"* 4 EXISTS\r\n"
    assert a.readline() == b"* 4 RECENT\r\n"  # a took the first three as \\Recent too
    ok(b.store("2", "+FLAGS", "(\\Answered)"))
    assert a.readline() == b"* 2 FETCH (UID 2 FLAGS (\\Answered \\Recent))\r\n"
    ok(b.store("1", "+FLAGS.SILENT", "(\\Deleted)"))
    a.readline()  # the flag change
    ok(b.expunge())
    assert a.readline() == b"* 1 EXPUNGE\r\n"
    # DONE split over two packets with a poll of the folder between them.
    a.send(b"DO")
    time.sleep(1.5)
    a.send(b"NE\r\n")
    assert a.readline() == f"{tag} OK IDLE terminated.\r\n".encode()
    # b learned of the new message at its next command (after SELECT's 3).
    ok(b.noop())
    assert b.untagged_responses.get("EXISTS") == [b"3", b"4"], b.untagged_responses
    # The same view in both, but for \\Recent, which only one session gets.
    strip = lambda lines: [l.replace(b" \\Recent", b"").replace(b"\\Recent", b"") for l in lines]
    view = strip(ok(a.uid("FETCH", "1:*", "(FLAGS)")))
    assert view == strip(ok(b.uid("FETCH", "1:*", "(FLAGS)")))
    assert view == [b"1 (UID 2 FLAGS (\\Answered))", b"2 (UID 3 FLAGS ())", b"3 (UID 4 FLAGS ())"]


def test_folder_deleted_and_made_again_is_watched_afresh(imap, cert):
    """A folder's watch outlives its last session for a while; a folder deleted and made
    again under the same name must still be followed (new mail seen in IDLE)."""
    a = client(imap, cert)
    ok(a.create("Foo"))
    ok(a.select("Foo"))
    a.logout()
    a = client(imap, cert)
    ok(a.delete("Foo"))
    ok(a.create("Foo"))
    ok(a.select("Foo"))
    tag = a._new_tag().decode()
    a.send(f"{tag} IDLE\r\n".encode())
    assert a.readline().startswith(b"+ ")
    b = client(imap, cert)
    ok(b.append("Foo", None, None, message(7)))
    assert a.readline() == b"* 1 EXISTS\r\n"
    a.send(b"DONE\r\n")
    assert a.readline() == b"* 1 RECENT\r\n"
    assert a.readline() == f"{tag} OK IDLE terminated.\r\n".encode()


def test_folder_made_again_while_another_session_holds_the_old_one(imap, cert):
    """A session still has Foo selected when Foo is deleted and made again: a new session on
    the new Foo must not join the old directories' watch (found by review)."""
    d = client(imap, cert)
    ok(d.create("Foo"))
    ok(d.append("Foo", None, None, message(1)))
    ok(d.select("Foo"))
    b = client(imap, cert)
    ok(b.delete("Foo"))
    ok(b.create("Foo"))
    ok(b.select("Foo"))
    ok(b.select("INBOX"))
    ok(b.append("Foo", None, None, message(2)))
    c = client(imap, cert)
    ok(c.select("Foo"))
    ok(c.noop())
    assert len(ok(c.uid("SEARCH", "ALL"))[0].split()) == 1


def test_a_renamed_folder_keeps_its_watch_when_old_ones_are_let_go(imap, cert):
    """RENAME a -> c: c's watch is the same inotify watch as the idle one of a, which the
    sweep of idle watches must not remove (found by review)."""
    a = client(imap, cert)
    ok(a.create("a"))
    ok(a.append("a", None, None, message(1)))
    ok(a.select("a"))
    ok(a.close())
    ok(a.rename("a", "c"))
    s = client(imap, cert)
    ok(s.select("c"))
    for i in range(18):  # more idle folders than are kept: the oldest idle watch, a's, goes
        ok(a.create(f"f{i}"))
        ok(a.select(f"f{i}"))
    ok(a.select("INBOX"))
    ok(a.append("c", None, None, message(2)))
    t = client(imap, cert)
    ok(t.select("c"))
    ok(t.noop())
    assert len(ok(t.uid("SEARCH", "ALL"))[0].split()) == 2


def test_store_over_a_message_another_session_expunged(imap, cert):
    """The view still holds a message another session expunged (EXPUNGE may not be told
    during STORE by sequence number): the others change, and the reply is OK [EXPUNGEISSUED]
    as Dovecot's (RFC 2180 section 4.2); a FETCH of it gets what the view still knows."""
    a = client(imap, cert)
    ok(a.select("INBOX"))
    b = client(imap, cert)
    ok(b.select("INBOX"))
    ok(b.store("1", "+FLAGS.SILENT", "(\\Deleted)"))
    ok(b.expunge())
    typ, data = a.store("1:3", "+FLAGS", "(\\Flagged)")
    assert typ == "OK", (typ, data)
    assert a.response("EXPUNGEISSUED")[1] == [b""], "the tagged OK carries [EXPUNGEISSUED]"
    fetched = [r for r in data if b"Flagged" in r]
    assert [r.split()[0] for r in fetched] == [b"2", b"3"], fetched
    typ, data = a.fetch("1:2", "(UID BODY.PEEK[])")
    assert typ == "OK", (typ, data)
    assert a.response("EXPUNGEISSUED")[1] == [b""], "the tagged OK carries [EXPUNGEISSUED]"
    assert data[0] == b"1 (UID 1)", "the expunged one: what the view knows, no body"
    assert data[1][0].startswith(b"2 (UID 2 BODY[]"), data
    ok(a.noop())
    assert ok(a.uid("SEARCH", "FLAGGED"))[0] == b"2 3"


def test_pop3d_and_delivery_at_once(imap, daemons, mailhome, cert):
    users, mail = mailhome
    pop = daemons.start("pop3d", daemon_config(("pop3",), users, rest=f'[mail]\nroot = "{mail}"\n'))
    import poplib
    c = client(imap, cert)
    ok(c.select("INBOX"))
    uids_before = ok(c.uid("SEARCH", "ALL"))[0].split()
    def deliver():
        for n in range(10, 20):
            seed(mail, "alice", message(n))
    t = threading.Thread(target=deliver)
    t.start()
    p = poplib.POP3(*pop.addr("pop3"), timeout=30)
    p.user("alice")
    p.pass_(PASSWORD)
    p.dele(1)
    p.quit()
    t.join()
    ok(c.noop())
    uids = ok(c.uid("SEARCH", "ALL"))[0].split()
    assert b"1" not in uids and uids[:2] == uids_before[1:]
    assert len(uids) == 12 and uids == sorted(uids, key=int)
    # The deletion by pop3d was told as EXPUNGE of sequence number 1.
    assert c.untagged_responses.get("EXPUNGE") == [b"1"], c.untagged_responses
    # Sequence numbers agree with what the client was told.
    assert len(ok(c.fetch("1:*", "(UID)"))) == 12


# -- curl ---------------------------------------------------------------------------------------

def test_curl_ssl_reqd(imap, cert):
    host, port = imap.addr("imap")
    out = subprocess.run(["curl", "-s", "--ssl-reqd", "--cacert", str(cert[0]),
                          "-u", f"alice:{PASSWORD}", f"imap://localhost:{port}/INBOX;UID=2"],
                         capture_output=True, check=True, timeout=60).stdout
    assert out == message(2)
    out = subprocess.run(["curl", "-s", "--ssl-reqd", "--cacert", str(cert[0]),
                          "-u", f"alice:{PASSWORD}", f"imap://localhost:{port}/"],
                         capture_output=True, check=True, timeout=60).stdout.decode()
    assert '"Sent"' in out or "Sent" in out


# -- a Thunderbird session, replayed ------------------------------------------------------------

class Raw:
    def __init__(self, sock):
        self.s = sock
        self.f = sock.makefile("rb")

    def send(self, data: bytes):
        self.s.sendall(data)

    def line(self) -> bytes:
        return self.f.readline()

    def until(self, tag: bytes) -> list[bytes]:
        out = []
        while True:
            l = self.f.readline()
            assert l, out
            out.append(l)
            m = re.search(rb"\{(\d+)\}\r\n$", l)
            if m:
                out.append(self.f.read(int(m.group(1))))
            if l.startswith(tag + b" "):
                return out


def raw(d, cert) -> Raw:
    host, port = d.addr("imaps")
    ctx = tls_context(cert)
    s = ctx.wrap_socket(socket.create_connection((host, port), timeout=30), server_hostname="localhost")
    r = Raw(s)
    assert r.line().startswith(b"* OK [CAPABILITY IMAP4REV1 ")
    return r


def test_thunderbird_first_session(imap, cert):
    r = raw(imap, cert)
    r.send(b"1 capability\r\n")
    out = r.until(b"1")
    assert out[0].startswith(b"* CAPABILITY IMAP4REV1") and b"IDLE" in out[0] and out[-1].startswith(b"1 OK")
    r.send(b'2 ID ("name" "Thunderbird" "version" "128.0")\r\n')
    out = r.until(b"2")
    assert out == [b'* ID ("name" "inetkit")\r\n', b"2 OK ID completed.\r\n"]
    r.send(b'3 login "alice" "correct horse"\r\n')
    out = r.until(b"3")
    assert out[-1].startswith(b"3 OK [CAPABILITY IMAP4REV1")
    r.send(b"4 namespace\r\n")
    assert r.until(b"4") == [b'* NAMESPACE (("" "/")) NIL NIL\r\n', b"4 OK NAMESPACE completed.\r\n"]
    r.send(b'5 list "" "*"\r\n')
    out = r.until(b"5")
    assert b'* LIST (\\HasNoChildren \\Trash) "/" "Trash"\r\n' in out and out[-1] == b"5 OK LIST completed.\r\n"
    r.send(b'6 lsub "" "*"\r\n')
    out = r.until(b"6")
    assert len(out) == 6 and out[-1] == b"6 OK LSUB completed.\r\n"
    r.send(b'7 select "INBOX"\r\n')
    out = r.until(b"7")
    assert b"* 3 EXISTS\r\n" in out and b"* 3 RECENT\r\n" in out
    assert any(l.startswith(b"* OK [UIDVALIDITY ") for l in out)
    assert b"* OK [UIDNEXT 4] Predicted next UID.\r\n" in out
    assert any(l.startswith(b"* OK [PERMANENTFLAGS (") and b"\\*" in l for l in out)
    assert out[-1] == b"7 OK [READ-WRITE] SELECT completed.\r\n"
    r.send(b"8 UID fetch 1:* (FLAGS)\r\n")
    out = r.until(b"8")
    assert out == [b"* 1 FETCH (UID 1 FLAGS (\\Recent))\r\n", b"* 2 FETCH (UID 2 FLAGS (\\Recent))\r\n",
                   b"* 3 FETCH (UID 3 FLAGS (\\Recent))\r\n", b"8 OK FETCH completed.\r\n"]
    r.send(b"9 UID fetch 3 (UID RFC822.SIZE BODY.PEEK[]<0.65536>)\r\n")
    out = r.until(b"9")
    size = len(message(3))
    assert out[0] == f"* 3 FETCH (UID 3 RFC822.SIZE {size} BODY[]<0> {{{size}}}\r\n".encode()
    assert out[1] == message(3) and out[2] == b")\r\n" and out[3] == b"9 OK FETCH completed.\r\n"
    r.send(b"10 UID fetch 1:3 (UID RFC822.SIZE FLAGS BODY.PEEK[HEADER.FIELDS (From To Cc Bcc Subject Date Message-ID Priority X-Priority References Newsgroups In-Reply-To Content-Type Reply-To)])\r\n")
    out = r.until(b"10")
    assert out[-1] == b"10 OK FETCH completed.\r\n" and len(out) == 10
    assert out[0].startswith(b"* 1 FETCH (UID 1 FLAGS (\\Recent) RFC822.SIZE ") and b"BODY[HEADER.FIELDS (FROM TO CC BCC SUBJECT DATE MESSAGE-ID PRIORITY X-PRIORITY REFERENCES NEWSGROUPS IN-REPLY-TO CONTENT-TYPE REPLY-TO)]" in out[0]
    assert out[1].startswith(b"From: Sender <sender@example.org>\r\nTo: alice@localhost\r\nSubject: message 1\r\n")
    r.send(b"11 IDLE\r\n")
    assert r.line() == b"+ idling\r\n"
    r.send(b"DONE\r\n")
    assert r.line() == b"11 OK IDLE terminated.\r\n"
    r.send(b'12 UID move 3 "Trash"\r\n')
    out = r.until(b"12")
    assert out[0].startswith(b"* OK [COPYUID ") and out[1] == b"* 3 EXPUNGE\r\n" and out[2] == b"12 OK MOVE completed.\r\n"
    r.send(b"13 logout\r\n")
    assert r.until(b"13") == [b"* BYE Logging out.\r\n", b"13 OK LOGOUT completed.\r\n"]


# -- bad input ----------------------------------------------------------------------------------

def test_bad_input(imap, cert):
    r = raw(imap, cert)
    # Commands in the wrong state.
    r.send(b"a1 SELECT INBOX\r\n")
    assert r.line() == b"a1 BAD Not logged in.\r\n"
    r.send(b"a2 FETCH 1 FLAGS\r\n")
    assert r.line() == b"a2 BAD Not logged in.\r\n"
    # Garbage and an unknown command.
    r.send(b"\x00\xff\xfe garbage\r\n")
    assert r.line().endswith(b"BAD Syntax error.\r\n")
    r.send(b"a3 FROBNICATE\r\n")
    assert r.line() == b"a3 BAD Syntax error.\r\n"
    # A 2 GiB literal is refused before the client sends it.
    r.send(b"a4 LOGIN {2147483648}\r\n")
    assert r.line() == b"a4 NO [TOOBIG] Literal too large.\r\n"
    # Before login no literal of 16 KiB or more is taken.
    r.send(b"a4b LOGIN {20000}\r\n")
    assert r.line() == b"a4b NO [TOOBIG] Literal too large.\r\n"
    # An overlong line.
    r.send(b"a5 NOOP " + b"x" * 70000 + b"\r\n")
    # Its tag was discarded with it: an untagged BAD, and the session goes on.
    assert r.line() == b"* BAD Command line too long.\r\n"
    r.send(b"a6 LOGIN {5}\r\n")
    assert r.line() == b"+ Ready for literal data\r\n"
    r.send(b"alice {13+}\r\ncorrect horse\r\n")
    assert r.line().startswith(b"a6 OK [CAPABILITY")
    r.send(b"a7 SELECT INBOX\r\n")
    r.until(b"a7")
    r.send(b"a8 FETCH 1:4294967295 (FLAGS)\r\n")
    assert r.line() == b"a8 BAD Invalid message sequence number.\r\n"
    r.send(b"a9 UID FETCH 1:4294967295 (UID)\r\n")
    assert len(r.until(b"a9")) == 4
    r.send(b"a10 FETCH 0 (FLAGS)\r\n")
    assert r.line().startswith(b"a10 BAD")
    r.send(b"a11 NOOP\r\n")
    assert r.until(b"a11")[-1] == b"a11 OK NOOP completed.\r\n"
    # An unterminated literal: the server waits for the data, then the client gives up.
    r.send(b"a12 APPEND INBOX {100}\r\n")
    assert r.line() == b"+ Ready for literal data\r\n"
    r.send(b"short")
    r.s.shutdown(socket.SHUT_WR)
    assert r.line() == b""


def test_list_pattern_with_a_character_across_byte_five(imap, cert):
    """`abcd&AOk-` is `abcdé`, whose é spans bytes 4 and 5: the INBOX check sliced the
    pattern at byte 5 and the session panicked (the connection just closed)."""
    c = client(imap, cert)
    assert ok(c.list('""', '"abcd&AOk-"')) == [None]
    ok(c.create("abcd&AOk-"))
    assert ok(c.list('""', '"abcd&AOk-"')) == [b'(\\HasNoChildren) "/" "abcd&AOk-"']
    ok(c.noop())


def test_malformed_mime_and_8bit_headers(imap, cert):
    seed(imap.mail, "alice", b"Subject: \xe4\xf6\xfc caf\xc3\xa9\r\nFrom: <broken\r\nContent-Type: multipart/mixed; boundary=\"q\r\n\r\n--q\r\nno end\r\n")
    nested = b""
    for i in range(100):
        nested += f"Content-Type: multipart/mixed; boundary=b{i}\r\n\r\n--b{i}\r\n".encode()
    seed(imap.mail, "alice", b"Subject: deep\r\n" + nested + b"Content-Type: text/plain\r\n\r\nx\r\n")
    c = client(imap, cert)
    ok(c.select("INBOX"))
    data = ok(c.fetch("4:5", "(ENVELOPE BODYSTRUCTURE BODY[1] BODY.PEEK[HEADER])"))
    assert len([d for d in data if d != b")"]) >= 2
    ok(c.noop())


# -- mbsync -------------------------------------------------------------------------------------

def test_mbsync_both_ways(imap, cert, tmp_path):
    host, port = imap.addr("imap")
    local = tmp_path / "local"
    local.mkdir()
    rc = tmp_path / "mbsyncrc"
    rc.write_text(f"""
IMAPAccount test
Host localhost
Port {port}
User alice
Pass "{PASSWORD}"
SSLType STARTTLS
CertificateFile {cert[0]}
AuthMechs LOGIN

IMAPStore remote
Account test

MaildirStore local
Path {local}/
Inbox {local}/INBOX
SubFolders Verbatim

Channel test
Far :remote:
Near :local:
Patterns *
Create Both
Expunge Both
SyncState *
""")
    def sync():
        r = subprocess.run(["mbsync", "-c", str(rc), "-a"], capture_output=True, text=True,
                           timeout=120)
        assert r.returncode == 0, r.stdout + r.stderr
    sync()
    inbox = local / "INBOX"
    files = sorted((inbox / "cur").iterdir()) + sorted((inbox / "new").iterdir())
    assert len(files) == 3
    # mbsync keeps LF line ends locally and adds an X-TUID header.
    subjects = sorted(re.search(rb"Subject: (.*)", f.read_bytes())[1] for f in files)
    assert subjects == [b"message 1", b"message 2", b"message 3"]
    assert (local / "Sent" / "cur").is_dir() and (local / "Trash" / "cur").is_dir()
    # Local changes go up: a new message in Drafts, a message marked seen, one deleted.
    drafts = local / "Drafts" / "new"
    (drafts / "1700000000.local.test").write_bytes(b"Subject: from mbsync\r\n\r\ndraft\r\n")
    first = files[0]
    seen = first.with_name(first.name.split(":2,")[0] + ":2,S")
    first.rename(seen.parent.parent / "cur" / seen.name)
    files[1].rename(files[1].parent.parent / "cur" / (files[1].name.split(":2,")[0] + ":2,T"))
    sync()
    c = client(imap, cert)
    ok(c.select("Drafts"))
    draft = ok(c.fetch("1", "(BODY.PEEK[])"))[0][1]
    assert draft.startswith(b"Subject: from mbsync\r\n") and draft.endswith(b"\r\n\r\ndraft\r\n")
    ok(c.select("INBOX"))
    flags = ok(c.fetch("1:*", "(FLAGS)"))
    assert len(flags) == 2 and b"\\Seen" in flags[0], flags
    # And server changes come down: a new delivery.
    c.logout()
    seed(imap.mail, "alice", message(7))
    sync()
    bodies = [f.read_bytes() for d in ("cur", "new") for f in (inbox / d).iterdir()]
    assert len(bodies) == 3 and any(b"Subject: message 7" in b for b in bodies)


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
