"""inetkit-imapd's folder and message extensions, spoken as clients send them: LIST-EXTENDED
(RFC 5258) with LIST-STATUS (RFC 5819) and SPECIAL-USE (RFC 6154), CREATE-SPECIAL-USE,
STATUS=SIZE (RFC 8438), QUOTA (RFC 9208), MULTIAPPEND (RFC 3502) and BINARY (RFC 3516)."""

import imaplib
import re
import socket
import zlib

import pytest

from support.homes import PASSWORD, daemon_config, message, seed, user_line, write_users


def config(users, mail, rest=""):
    return daemon_config(("imap",), users, auth="failure_delay = 0\n",
                         rest=f'[mail]\nroot = "{mail}"\n{rest}')


@pytest.fixture
def imap(daemons, mailhome):
    users, mail = mailhome
    seed(mail, "alice", message(1))
    return daemons.start("imapd", config(users, mail))


class Raw:
    """A raw session: commands as bytes (literals sent LITERAL+ style), every line back."""

    def __init__(self, d, user="alice"):
        host, port = d.addr("imap")
        self.s = socket.create_connection((host, port), timeout=30)
        self.f = self.s.makefile("rb")
        assert self.f.readline().startswith(b"* OK")
        self.n = 0
        self.ok(f'LOGIN {user} "{PASSWORD}"')

    def send(self, command: bytes) -> tuple[list[bytes], bytes]:
        """The untagged lines (literals inline) and the tagged line."""
        self.n += 1
        tag = f"m{self.n}".encode()
        self.s.sendall(tag + b" " + command + b"\r\n")
        out = []
        while True:
            line = self.f.readline()
            assert line, out
            m = re.search(rb"~?\{(\d+)\}\r\n$", line)
            if m:
                line += self.f.read(int(m.group(1)))
                line += self.f.readline()
            if line.startswith(tag + b" "):
                return out, line
            out.append(line)

    def ok(self, command) -> list[bytes]:
        command = command.encode() if isinstance(command, str) else command
        out, done = self.send(command)
        assert done.split()[1] == b"OK", (command, out, done)
        return out

    def status_of(self, command) -> bytes:
        command = command.encode() if isinstance(command, str) else command
        return self.send(command)[1].split(b" ", 1)[1]


def literal(data: bytes, binary=False) -> bytes:
    return (b"~" if binary else b"") + b"{%d+}\r\n" % len(data) + data


def names(lines):
    """LIST lines by mailbox name: their attributes (lower-cased) and what follows the name."""
    found = {}
    for line in lines:
        m = re.match(rb'\* LIST \(([^)]*)\) "/" ("[^"]*"|\S+)(.*)\r\n', line)
        if m:
            found[m.group(2).strip(b'"').decode()] = (
                set(m.group(1).decode().lower().split()), m.group(3).decode())
    return found


# -- LIST-EXTENDED, LIST-STATUS, SPECIAL-USE ----------------------------------------------------

def test_list_extended_selection_and_return_options(imap):
    r = Raw(imap)
    caps = b"".join(r.ok("CAPABILITY")).decode()
    for cap in ["LIST-EXTENDED", "LIST-STATUS", "CREATE-SPECIAL-USE", "SPECIAL-USE"]:
        assert f" {cap}" in caps, caps
    # K-9 and Thunderbird ask for the special-use folders like this: it was BAD.
    found = names(r.ok('LIST (SPECIAL-USE) "" "*"'))
    assert set(found) == {"Sent", "Drafts", "Trash", "Junk"}, found
    assert "\\sent" in found["Sent"][0] and "\\junk" in found["Junk"][0]
    for name in ["p", "p/a", "p/b/c", "q"]:
        r.ok(f"CREATE {name}")
    for name in ["p/a", "p/b/c", "q"]:
        r.ok(f"SUBSCRIBE {name}")
    r.ok("DELETE q")
    # Several patterns; nothing twice.
    found = names(r.ok('LIST "" (p/% q INBOX)'))
    assert set(found) == {"p/a", "p/b", "INBOX"}, found
    assert "\\noselect" in found["p/b"][0]
    # Subscribed names, also one whose folder is gone.
    found = names(r.ok('LIST (SUBSCRIBED) "" "*"'))
    assert found["q"][0] == {"\\subscribed", "\\nonexistent"}, found
    assert "\\subscribed" in found["p/a"][0] and "p" not in found
    # RECURSIVEMATCH: p is not subscribed, but p/b/c is, and the pattern misses it.
    found = names(r.ok('LIST (SUBSCRIBED RECURSIVEMATCH) "" "%" RETURN (CHILDREN)'))
    assert found["p"] == ({"\\haschildren"}, ' ("CHILDINFO" ("SUBSCRIBED"))'), found
    found = names(r.ok('LIST "" "p/%" RETURN (CHILDREN SUBSCRIBED)'))
    assert found["p/a"][0] == {"\\subscribed", "\\hasnochildren"}, found
    assert found["p/b"][0] == {"\\noselect", "\\haschildren"}, found
    for bad in ['LIST (RECURSIVEMATCH) "" "*"', 'LIST (BOGUS) "" "*"',
                'LIST "" "*" RETURN (BOGUS)', 'LIST "" () ']:
        assert r.status_of(bad).startswith(b"BAD"), bad


def test_list_status_follows_each_selectable_name(imap):
    r = Raw(imap)
    r.ok("EXAMINE INBOX")
    size = int(re.search(rb"RFC822\.SIZE (\d+)", b"".join(r.ok("FETCH 1 RFC822.SIZE"))).group(1))
    r.ok("CREATE a/b")
    out = r.ok('LIST "" "*" RETURN (STATUS (MESSAGES SIZE UIDNEXT))')
    text = [l.decode() for l in out]
    i = next(n for n, l in enumerate(text) if l.startswith('* LIST') and "INBOX" in l)
    assert text[i + 1] == f"* STATUS INBOX (MESSAGES 1 SIZE {size} UIDNEXT 2)\r\n", text
    assert any(l.startswith('* STATUS "a/b" (MESSAGES 0 SIZE 0 ') for l in text), text
    # The \Noselect parent has no STATUS.
    assert not any(l.startswith('* STATUS "a" ') for l in text), text


def test_create_special_use(imap):
    r = Raw(imap)
    r.ok("CREATE Outgoing (USE (\\Sent))")
    r.ok("CREATE Old (USE (\\Archive \\Junk))")
    refused = r.status_of("CREATE Everything (USE (\\All))")
    assert refused.startswith(b"NO [USEATTR]"), refused
    found = names(r.ok('LIST "" "*" RETURN (SPECIAL-USE)'))
    assert "Everything" not in found
    assert "\\sent" in found["Outgoing"][0]
    assert {"\\archive", "\\junk"} <= found["Old"][0]
    r.ok("RENAME Outgoing Outbox")
    found = names(r.ok('LIST (SPECIAL-USE) "" "*"'))
    assert "\\sent" in found["Outbox"][0] and "Outgoing" not in found, found
    r.ok("DELETE Outbox")
    r.ok("CREATE Outbox")
    assert not names(r.ok('LIST "" Outbox'))["Outbox"][0] & {"\\sent"}


def test_status_size_is_the_sum_of_rfc822_sizes(imap):
    r = Raw(imap)
    r.ok(b"APPEND INBOX " + literal(b"Subject: two\nbare LF lines\n"))
    r.ok("EXAMINE INBOX")
    sizes = [int(s) for s in re.findall(rb"RFC822\.SIZE (\d+)", b"".join(r.ok("FETCH 1:* RFC822.SIZE")))]
    assert len(sizes) == 2
    out = r.ok("STATUS INBOX (SIZE MESSAGES)")
    assert out == [f"* STATUS INBOX (SIZE {sum(sizes)} MESSAGES 2)\r\n".encode()], out
    assert b"STATUS=SIZE" in b"".join(r.ok("CAPABILITY"))


# -- QUOTA ---------------------------------------------------------------------------------------

@pytest.fixture
def quota_imap(daemons, tmp_path, mailhome):
    users = write_users(tmp_path / "users-quota", user_line("alice"),
                        user_line("bob", extra="quota=2k quota_messages=3"),
                        user_line("carol", extra="userdb_quota_rule=*:storage=1M"))
    return daemons.start("imapd", config(users, mailhome.mail, '[quota]\nmessages = 1000\n'))


def quota_lines(r, mailbox="INBOX"):
    return [l.decode().rstrip() for l in r.ok(f"GETQUOTAROOT {mailbox}")]


def test_quota_is_reported_and_enforced(quota_imap):
    bob = Raw(quota_imap, "bob")
    assert b" QUOTA" in b"".join(bob.ok("CAPABILITY"))
    assert quota_lines(bob) == ['* QUOTAROOT INBOX ""',
                                '* QUOTA "" (STORAGE 0 2 MESSAGE 0 3)']
    msg = b"Subject: q\r\n\r\n" + b"x" * 700 + b"\r\n"
    bob.ok(b"APPEND INBOX " + literal(msg))
    bob.ok(b"APPEND INBOX " + literal(msg))
    assert bob.ok('GETQUOTA ""') == [b'* QUOTA "" (STORAGE 2 2 MESSAGE 2 3)\r\n']
    # A third would pass 2 KiB.
    refused = bob.status_of(b"APPEND INBOX " + literal(msg))
    assert refused.startswith(b"NO [OVERQUOTA]"), refused
    bob.ok("CREATE Keep")
    bob.ok("SELECT INBOX")
    refused = bob.status_of("COPY 1 Keep")
    assert refused.startswith(b"NO [OVERQUOTA]"), refused
    # A MOVE stays within the quota root.
    bob.ok("MOVE 1 Keep")
    assert bob.ok("STATUS Keep (MESSAGES)") == [b'* STATUS "Keep" (MESSAGES 1)\r\n']
    assert bob.status_of('SETQUOTA "" (STORAGE 100000)').startswith(b"NO")
    # Messages are counted too: a small one passes, a fourth message does not.
    bob.ok(b"APPEND INBOX " + literal(b"Subject: s\r\n\r\n."))
    refused = bob.status_of(b"APPEND INBOX " + literal(b"Subject: t\r\n\r\n."))
    assert refused.startswith(b"NO [OVERQUOTA]"), refused
    # The users file's Dovecot rule, and the config's default for everyone else.
    assert quota_lines(Raw(quota_imap, "carol"))[1] == '* QUOTA "" (STORAGE 0 1024 MESSAGE 0 1000)'
    assert quota_lines(Raw(quota_imap, "alice"))[1] == '* QUOTA "" (MESSAGE 0 1000)'


def test_no_quota_means_no_root(imap):
    r = Raw(imap)
    assert quota_lines(r) == ["* QUOTAROOT INBOX"]
    assert r.status_of('GETQUOTA ""').startswith(b"NO")


# -- MULTIAPPEND ---------------------------------------------------------------------------------

def test_multiappend_adds_all_or_none(imap):
    r = Raw(imap)
    assert b" MULTIAPPEND" in b"".join(r.ok("CAPABILITY"))
    one, two = message(2), message(3)
    out, done = r.send(b"APPEND INBOX (\\Seen) " + literal(one) + b" (\\Flagged) "
                       b'"24-Mar-2007 23:00:00 +0200" ' + literal(two))
    assert re.match(rb"m\d+ OK \[APPENDUID \d+ 2:3\]", done), done
    r.ok("EXAMINE INBOX")
    out = b"".join(r.ok("FETCH 2:3 (FLAGS INTERNALDATE BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
    assert b"message 2" in out and b"message 3" in out
    assert re.search(rb"2 FETCH \(FLAGS \(\\Seen", out), out
    assert re.search(rb"3 FETCH \(FLAGS \(\\Flagged \\Recent\) INTERNALDATE \"24-Mar-2007 21:00:00", out)
    # A bad date in the second message: BAD, and the first is not added either.
    done = r.status_of(b"APPEND INBOX " + literal(one) + b' "31-Foo-2007 23:00:00 +0200" '
                       + literal(two))
    assert done.startswith(b"BAD"), done
    assert r.ok("STATUS INBOX (MESSAGES)") == [b"* STATUS INBOX (MESSAGES 3)\r\n"]


def test_multiappend_over_quota_adds_none(daemons, tmp_path, mailhome):
    users = write_users(tmp_path / "users-quota", user_line("bob", extra="quota_messages=2"))
    r = Raw(daemons.start("imapd", config(users, mailhome.mail)), "bob")
    msg = literal(b"Subject: x\r\n\r\nx\r\n")
    refused = r.status_of(b"APPEND INBOX " + msg + b" " + msg + b" " + msg)
    assert refused.startswith(b"NO [OVERQUOTA]"), refused
    assert r.ok("STATUS INBOX (MESSAGES)") == [b"* STATUS INBOX (MESSAGES 0)\r\n"]
    r.ok(b"APPEND INBOX " + msg + b" " + msg)


def test_imaplib_still_appends_and_lists(imap):
    """A client that knows none of the extensions sees RFC 3501 as before."""
    host, port = imap.addr("imap")
    c = imaplib.IMAP4(host, port, timeout=30)
    c.login("alice", PASSWORD)
    assert c.append("INBOX", None, None, message(9))[0] == "OK"
    typ, data = c.list('""', "*")
    assert typ == "OK" and b'(\\HasNoChildren) "/" INBOX' in data, data


# -- BINARY --------------------------------------------------------------------------------------

MIME = (b"From: a@example.org\r\nSubject: parts\r\nMIME-Version: 1.0\r\n"
        b"Content-Type: multipart/mixed; boundary=\"b\"\r\n\r\n"
        b"--b\r\nContent-Type: text/plain; charset=utf-8\r\n"
        b"Content-Transfer-Encoding: quoted-printable\r\n\r\ncaf=C3=A9 =\r\nau lait\r\n"
        b"--b\r\nContent-Type: application/octet-stream\r\n"
        b"Content-Transfer-Encoding: base64\r\n\r\nAAEC/w==\r\n"
        b"--b\r\nContent-Type: application/x-odd\r\n"
        b"Content-Transfer-Encoding: x-uuencode\r\n\r\nbegin 644 x\r\n"
        b"--b--\r\n")


def test_binary_fetch_decodes_parts(imap):
    r = Raw(imap)
    assert b" BINARY" in b"".join(r.ok("CAPABILITY"))
    r.ok(b"APPEND INBOX " + literal(MIME))
    r.ok("SELECT INBOX")
    out = b"".join(r.ok("FETCH 2 (BINARY.SIZE[1] BINARY.PEEK[1] BINARY.SIZE[2] BINARY.PEEK[2])"))
    assert b"BINARY.SIZE[1] 13 BINARY[1] {13}\r\ncaf\xc3\xa9 au lait " in out, out
    # Bytes with a NUL go as a literal8.
    assert b"BINARY.SIZE[2] 4 BINARY[2] ~{4}\r\n\x00\x01\x02\xff" in out, out
    out = b"".join(r.ok("FETCH 2 (BINARY.PEEK[1]<3.6>)"))
    assert b"BINARY[1]<3> {6}\r\n\xc3\xa9 au " in out, out
    # BINARY[] is the whole message as it is; BINARY (no PEEK) sets \Seen.
    out = b"".join(r.ok("FETCH 2 (BINARY.SIZE[] BINARY[])"))
    assert b"BINARY.SIZE[] %d" % len(MIME) in out and MIME in out, out
    assert b"\\Seen" in out, out
    # It was answered OK with the UID alone.
    refused = r.status_of("FETCH 2 (BINARY.PEEK[3])")
    assert refused.startswith(b"NO [UNKNOWN-CTE]"), refused


def test_binary_append_stores_binary_parts_as_base64(imap):
    r = Raw(imap)
    body = b"\x00-\xe4\r\n\r\n"
    msg = (b"From: a@example.org\r\nMIME-Version: 1.0\r\n"
           b"Content-Type: application/octet-stream\r\n"
           b"Content-Transfer-Encoding: binary\r\n\r\n" + body)
    r.ok(b"APPEND INBOX " + literal(msg, binary=True))
    r.ok("EXAMINE INBOX")
    out = b"".join(r.ok("FETCH 2 (BODY.PEEK[1] BINARY.SIZE[1] BINARY.PEEK[1])"))
    # A client without BINARY reads base64 text, never a NUL.
    assert b"BODY[1] {14}\r\nAC3kDQoNCg==\r\n" in out, out
    assert b"BINARY.SIZE[1] 7 BINARY[1] ~{7}\r\n" + body in out, out


# -- COMPRESS=DEFLATE ----------------------------------------------------------------------------

class Deflated:
    """The rest of a Raw session after COMPRESS DEFLATE: raw deflate both ways."""

    def __init__(self, r: Raw):
        self.s = r.s
        self.out = zlib.compressobj(wbits=-15)
        self.inflate = zlib.decompressobj(wbits=-15)
        self.buf = b""

    def send(self, data: bytes):
        self.s.sendall(self.out.compress(data) + self.out.flush(zlib.Z_SYNC_FLUSH))

    def until(self, tag: bytes) -> bytes:
        """Everything up to and including the line tagged `tag`."""
        while not re.search(rb"(^|\r\n)" + tag + rb" [^\r]*\r\n", self.buf):
            chunk = self.s.recv(65536)
            assert chunk, self.buf
            self.buf += self.inflate.decompress(chunk)
        m = re.search(rb"(^|\r\n)" + tag + rb" [^\r]*\r\n", self.buf)
        got, self.buf = self.buf[:m.end()], self.buf[m.end():]
        return got


def test_compress_deflate(imap):
    r = Raw(imap)
    assert b" COMPRESS=DEFLATE" in b"".join(r.ok("CAPABILITY"))
    r.s.sendall(b"z1 COMPRESS DEFLATE\r\n")
    assert r.f.readline() == b"z1 OK DEFLATE active.\r\n"
    d = Deflated(r)
    d.send(b"z2 SELECT INBOX\r\n")
    assert b"z2 OK [READ-WRITE]" in d.until(b"z2")
    d.send(b"z3 FETCH 1 (BODY.PEEK[])\r\n")
    assert b"This is message 1." in d.until(b"z3")
    d.send(b"z4 COMPRESS DEFLATE\r\n")
    assert b"z4 NO [COMPRESSIONACTIVE]" in d.until(b"z4")
    # 32 MiB of one byte, sent as about 32 KiB: the line limit holds, the session goes on.
    bomb = d.out.compress(b"a" * (32 << 20)) + d.out.compress(b"\r\nz5 NOOP\r\n")
    d.s.sendall(bomb + d.out.flush(zlib.Z_SYNC_FLUSH))
    got = d.until(b"z5")
    assert b"z5 OK" in got and len(got) < 4096, got[:200]
    d.send(b"z6 LOGOUT\r\n")
    assert b"z6 OK" in d.until(b"z6")
