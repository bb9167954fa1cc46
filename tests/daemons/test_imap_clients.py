"""inetkit-imapd with other real clients: curl, a replayed Thunderbird first session, and mbsync
syncing both ways."""

import re
import subprocess

from support.homes import PASSWORD, message, seed
from support.imap import client, imap, ok, raw  # noqa: F401 (imap is a fixture)


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
