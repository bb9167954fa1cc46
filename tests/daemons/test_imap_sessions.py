"""inetkit-imapd with several sessions and processes on one folder: IDLE seeing a delivery and
another session's changes, folders deleted, made again and renamed while watched, STORE over a
message another session expunged, pop3d and a delivery at once."""

import threading
import time

from support.homes import PASSWORD, daemon_config, message, seed
from support.imap import client, imap, ok  # noqa: F401 (imap is a fixture)


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
