"""inetkit-imapd's login: capabilities before and after STARTTLS, implicit TLS, AUTHENTICATE
PLAIN and LOGIN with and without SASL-IR (imaplib and raw), wrong passwords, LOGINDISABLED
without TLS."""

import imaplib

import pytest

from support.homes import PASSWORD, tls_context
from support.imap import client, config, imap, ok, raw  # noqa: F401 (imap is a fixture)


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
