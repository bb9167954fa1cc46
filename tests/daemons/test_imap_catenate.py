"""inetkit-imapd's CATENATE (RFC 4469): APPEND of messages made of TEXT literals and IMAP URLs
(RFC 5092) of messages and parts in the user's own folders, alone and with MULTIAPPEND;
BADURL for a URL it cannot use, TOOBIG past the command limit, TRYCREATE for a missing
target. imaplib sets up and checks; the CATENATE commands go raw (imaplib sends one literal,
at the end of a command)."""

import imaplib
import re
import socket

import pytest

from support.homes import PASSWORD, daemon_config, message, seed

ORIGINAL = (b"From: a@example.org\r\nSubject: one\r\n\r\nHello body\r\n")


def config(users, mail):
    return daemon_config(("imap",), users, auth="failure_delay = 0\n",
                         rest=f'[mail]\nroot = "{mail}"\n')


@pytest.fixture
def imap(daemons, mailhome):
    users, mail = mailhome
    seed(mail, "alice", message(1))
    return daemons.start("imapd", config(users, mail))


def login(d) -> imaplib.IMAP4:
    host, port = d.addr("imap")
    c = imaplib.IMAP4(host, port)
    c.login("alice", PASSWORD)
    return c


class Raw:
    """A raw session for CATENATE: literals LITERAL+ style unless told to wait for `+`."""

    def __init__(self, d):
        host, port = d.addr("imap")
        self.s = socket.create_connection((host, port), timeout=60)
        self.f = self.s.makefile("rb")
        assert self.f.readline().startswith(b"* OK")
        self.n = 0
        self.command(f'LOGIN alice "{PASSWORD}"'.encode())

    def command(self, *pieces: bytes) -> tuple[list[bytes], bytes]:
        """Sends the pieces (a piece ending in `{n}` waits for the continuation before the
        next); the untagged lines and the tagged line back."""
        self.n += 1
        tag = f"c{self.n}".encode()
        data = tag + b" " + b"".join(pieces[:1])
        rest = list(pieces[1:])
        while True:
            if re.search(rb"\{\d+\}\r\n$", data):
                self.s.sendall(data)
                line = self.f.readline()
                if not line.startswith(b"+"):
                    return [], line
                data = b""
            if not rest:
                break
            data += rest.pop(0)
        self.s.sendall(data + b"\r\n")
        out = []
        while True:
            line = self.f.readline()
            assert line, out
            if line.startswith(tag + b" "):
                return out, line
            out.append(line)

    def status(self, *pieces: bytes) -> bytes:
        return self.command(*pieces)[1].split(b" ", 1)[1]


def text(data: bytes) -> bytes:
    return b"TEXT {%d+}\r\n" % len(data) + data


def fetch_all(c: imaplib.IMAP4, box: str) -> list[bytes]:
    typ, count = c.select(box)
    assert typ == "OK"
    if count[0] == b"0":
        return []
    typ, data = c.fetch("1:*", "(BODY.PEEK[])")
    assert typ == "OK", data
    return [item[1] for item in data if isinstance(item, tuple)]


def source(d) -> tuple[imaplib.IMAP4, int, int]:
    """alice with a folder Src holding ORIGINAL: the client, UIDVALIDITY and UID."""
    c = login(d)
    c.create("Src")
    typ, data = c.append("Src", "", None, ORIGINAL)
    assert typ == "OK", data
    m = re.search(rb"APPENDUID (\d+) (\d+)", data[0])
    c.create("Out")
    return c, int(m.group(1)), int(m.group(2))


def test_catenate_is_advertised(imap):
    c = login(imap)
    assert "CATENATE" in c.capabilities


def test_text_and_url_parts_make_the_message(imap):
    c, uidv, uid = source(imap)
    r = Raw(imap)
    cases = [
        (b'(URL "/Src/;UID=%d/;SECTION=HEADER" ' % uid + text(b"new body\r\n") + b")",
         b"From: a@example.org\r\nSubject: one\r\n\r\nnew body\r\n"),
        (b"(" + text(b"X: 1\r\n\r\n") + b' URL "/Src;UIDVALIDITY=%d/;UID=%d/;SECTION=TEXT")'
         % (uidv, uid), b"X: 1\r\n\r\nHello body\r\n"),
        (b'(URL "imap://alice@localhost/Src/;UID=%d")' % uid, ORIGINAL),
        (b'(URL "/Src/;UID=%d/;SECTION=1/;PARTIAL=6.4" ' % uid + text(b"!") + b")",
         b"body!"),
        (b'(URL "/Src/;UID=%d/;PARTIAL=100000.1" ' % uid + text(b"Hdr: x\r\n\r\nb\r\n") + b")",
         b"Hdr: x\r\n\r\nb\r\n"),
    ]
    for parts, _ in cases:
        out, done = r.command(b"APPEND Out (\\Seen) CATENATE " + parts)
        assert re.match(rb"OK \[APPENDUID \d+ \d+\]", done.split(b" ", 1)[1]), (parts, done)
    assert fetch_all(c, "Out") == [want for _, want in cases]
    typ, data = c.fetch("1", "(FLAGS)")
    assert b"\\Seen" in data[0]


def test_relative_url_names_the_selected_folder(imap):
    c, _, uid = source(imap)
    r = Raw(imap)
    # Without a selected folder a relative URL names nothing.
    out, done = r.command(b'APPEND Out CATENATE (URL ";UID=%d")' % uid)
    assert b"NO [BADURL ;UID=" in done, done
    r.command(b"SELECT Src")
    out, done = r.command(b'APPEND Out CATENATE (URL ";UID=%d/;SECTION=HEADER" ' % uid
                          + text(b"rel\r\n") + b")")
    assert b" OK " in done, done
    assert fetch_all(c, "Out") == [b"From: a@example.org\r\nSubject: one\r\n\r\nrel\r\n"]


@pytest.mark.parametrize("url", [
    b"/Src;UIDVALIDITY=12345/;UID={uid}/;SECTION=HEADER",
    b"/Src/;UID=999",
    b"/Nowhere/;UID={uid}",
    b"/Src/;UID={uid}/;SECTION=7",
    b"/Src/;UID={uid}/;URLAUTH=anonymous:internal:0123456789abcdef",
    b"imap://bob@localhost/Src/;UID={uid}",
    b"imap://localhost/Src/;UID={uid}",
    b"imap://alice@mail.example.invalid/Src/;UID={uid}",
    b"http://localhost/Src/;UID={uid}",
])
def test_a_bad_url_is_badurl_and_adds_nothing(imap, url):
    c, _, uid = source(imap)
    url = url.replace(b"{uid}", str(uid).encode())
    r = Raw(imap)
    out, done = r.command(b"APPEND Out CATENATE (" + text(b"hdr: 1\r\n\r\n") + b' URL "'
                          + url + b'" ' + text(b"tail") + b")")
    assert done.split(b" ", 1)[1].startswith(b"NO [BADURL " + url + b"]"), done
    assert fetch_all(c, "Out") == []


def test_a_missing_target_is_trycreate_before_the_urls(imap):
    _, _, uid = source(imap)
    r = Raw(imap)
    assert r.status(b'APPEND Nowhere CATENATE (URL "/Src;UIDVALIDITY=1/;UID=%d")'
                    % uid).startswith(b"NO [TRYCREATE]")


def test_multiappend_with_catenate_adds_all_or_none(imap):
    c, _, uid = source(imap)
    r = Raw(imap)
    out, done = r.command(b'APPEND Out CATENATE (URL "/Src/;UID=%d/;SECTION=HEADER" ' % uid
                          + text(b"one\r\n") + b") (\\Flagged) {5+}\r\nplain CATENATE ("
                          + text(b"two") + b")")
    m = re.search(rb"OK \[APPENDUID \d+ (\d+):(\d+)\]", done)
    assert m and int(m.group(2)) - int(m.group(1)) == 2, done
    assert fetch_all(c, "Out") == [
        b"From: a@example.org\r\nSubject: one\r\n\r\none\r\n", b"plain", b"two"]
    # A bad URL in the last message: none of the three is added.
    out, done = r.command(b"APPEND Out CATENATE (" + text(b"a") + b") {1+}\r\nb CATENATE "
                          b'(URL "/Src/;UID=999")')
    assert b"NO [BADURL /Src/;UID=999]" in done, done
    assert len(fetch_all(c, "Out")) == 3


def test_synchronising_literals_inside_catenate(imap):
    c, _, uid = source(imap)
    r = Raw(imap)
    out, done = r.command(b"APPEND Out CATENATE (TEXT {8}\r\n", b"Subj: s\n",
                          b' URL "/Src/;UID=%d/;SECTION=TEXT" TEXT {2}\r\n' % uid, b"ok)")
    assert b" OK " in done, done
    assert fetch_all(c, "Out") == [b"Subj: s\r\nHello body\r\nok"]
    # A literal past the command limit is refused before it is sent.
    out, done = r.command(b"APPEND Out CATENATE (TEXT {999999999}\r\n")
    assert done.split(b" ", 1)[1].startswith(b"NO [TOOBIG]"), done


def test_the_built_message_is_bounded_by_the_command_limit(imap):
    c, _, _ = source(imap)
    big = b"Subject: big\r\n\r\n" + b"x" * (1 << 20)
    typ, data = c.append("Src", "", None, big)
    uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
    r = Raw(imap)
    urls = b" ".join([b'URL "/Src/;UID=%d"' % uid] * 65)
    out, done = r.command(b"APPEND Out CATENATE (" + urls + b")")
    assert done.split(b" ", 1)[1].startswith(b"NO [TOOBIG]"), done
    assert fetch_all(c, "Out") == []
    # Under the limit the same URLs are fine.
    urls = b" ".join([b'URL "/Src/;UID=%d"' % uid] * 3)
    assert b" OK " in r.command(b"APPEND Out CATENATE (" + urls + b")")[1]
    assert fetch_all(c, "Out") == [big * 3]


def test_what_the_urls_read_is_bounded(imap):
    """Each URL reads its whole message: 4 x 64 MiB of reading per command at most, however
    little each URL takes (here 1 byte of a 1 MiB message, 258 times)."""
    c, _, _ = source(imap)
    typ, data = c.append("Src", "", None, b"Subject: big\r\n\r\n" + b"x" * (1 << 20))
    uid = int(re.search(rb"APPENDUID \d+ (\d+)", data[0]).group(1))
    r = Raw(imap)
    url = b'URL "/Src/;UID=%d/;PARTIAL=0.1"' % uid
    half = b"CATENATE (" + b" ".join([url] * 129) + b")"
    out, done = r.command(b"APPEND Out " + half + b" " + half)
    assert done.split(b" ", 1)[1].startswith(b"NO [LIMIT]"), done
    assert fetch_all(c, "Out") == []
    half = b"CATENATE (" + b" ".join([url] * 100) + b")"
    assert b" OK " in r.command(b"APPEND Out " + half + b" " + half)[1]
    assert fetch_all(c, "Out") == [b"S" * 100, b"S" * 100]


def test_a_syntax_error_is_bad(imap):
    source(imap)
    r = Raw(imap)
    for bad in [b"APPEND Out CATENATE ()", b'APPEND Out CATENATE (TEXT "quoted")',
                b"APPEND Out CATENATE (URL)", b'APPEND Out CATENATE (FOO "x")']:
        assert r.status(bad).startswith(b"BAD"), bad


def outside_source(daemons, mailhome, name: str, content: bytes):
    """alice with an empty Out and a folder Src holding one message another program wrote,
    as file `name`: the client and a raw session."""
    users, mail = mailhome
    seed(mail, "alice", message(1))
    imap = daemons.start("imapd", config(users, mail))
    c = login(imap)
    assert c.create("Src")[0] == "OK"
    assert c.create("Out")[0] == "OK"
    (mail / "alice" / ".Src" / "cur" / name).write_bytes(content)
    return c, Raw(imap)


def test_an_unmeasured_source_counts_at_its_size_with_crlf(daemons, mailhome):
    """A message another program wrote with bare LFs, its name without a size: each URL to it
    reads its CRLF form, twice its file size here, and that is what the read budget counts
    (65 + 65 URLs of a 1 MiB file are 260 MiB read, past the 256 MiB a command may read)."""
    lines = b"Subject: lf\n\n" + b"\n" * ((1 << 20) - 13)
    c, r = outside_source(daemons, mailhome, "1700000000.M1P1.elsewhere:2,", lines)
    url = b'URL "/Src/;UID=1/;PARTIAL=0.1"'
    half = b"CATENATE (" + b" ".join([url] * 65) + b")"
    out, done = r.command(b"APPEND Out " + half + b" " + half)
    assert done.split(b" ", 1)[1].startswith(b"NO [LIMIT]"), done
    half = b"CATENATE (" + b" ".join([url] * 60) + b")"
    out, done = r.command(b"APPEND Out " + half + b" " + half)
    assert b" OK " in done, done
    assert fetch_all(c, "Out") == [b"S" * 60, b"S" * 60]


def test_a_source_whose_name_understates_its_size_counts_what_is_read(daemons, mailhome):
    """Another program named a 1 MiB message `,S=10,W=10`: what URLs read of it is counted
    as read, not as named (129 + 129 URLs to it are 258 MiB, past the 256 MiB a command may
    read)."""
    text = b"Subject: big\r\n\r\n" + b"x" * ((1 << 20) - 16)
    c, r = outside_source(daemons, mailhome, "1700000000.M2P1.elsewhere,S=10,W=10:2,", text)
    url = b'URL "/Src/;UID=1/;PARTIAL=0.1"'
    half = b"CATENATE (" + b" ".join([url] * 129) + b")"
    out, done = r.command(b"APPEND Out " + half + b" " + half)
    assert done.split(b" ", 1)[1].startswith(b"NO [LIMIT]"), done
    assert fetch_all(c, "Out") == []
