"""inetkit-imapd against bad input: commands in the wrong state, garbage, literals too large or
never finished, an overlong line, a LIST pattern with a character across byte five, malformed
MIME and 8-bit headers."""

import socket

from support.homes import seed
from support.imap import client, imap, ok, raw  # noqa: F401 (imap is a fixture)


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
