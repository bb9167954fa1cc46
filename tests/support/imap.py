"""What the imapd tests share: the daemon with alice's three messages on `imap` (STARTTLS) and
`imaps` (the `imap` fixture), an imaplib client logged in over STARTTLS, a raw session over
implicit TLS (`raw`), and a raw session over a plain socket (`RawImap`), for tests that check
exact untagged responses."""

import imaplib
import re
import socket

import pytest

from support.homes import PASSWORD, daemon_config, message, seed, tls_context


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


class Raw:
    """A session over implicit TLS (see `raw`): lines as they come, or every line up to a tag's
    reply with literals read whole."""

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


class RawImap:
    """Logged in as alice on the daemon's plaintext `imap` listener. Every wait is bounded by
    the socket's timeout: a missing response fails the test, never hangs it."""

    def __init__(self, d):
        host, port = d.addr("imap")
        self.s = socket.create_connection((host, port), timeout=30)
        self.f = self.s.makefile("rb")
        self.greeting = self.f.readline()
        self.n = 0
        self.command(f'LOGIN alice "{PASSWORD}"')

    def command(self, text: str, expect: bytes = b"OK") -> list[bytes]:
        """Sends `text` and returns every line up to its tagged reply, which must be `expect`."""
        self.n += 1
        tag = f"r{self.n}".encode()
        self.s.sendall(tag + b" " + text.encode() + b"\r\n")
        out = []
        while True:
            line = self.f.readline()
            assert line, out
            out.append(line)
            if line.startswith(tag + b" "):
                assert line.startswith(tag + b" " + expect), out
                return out

    def until(self, pattern: bytes) -> list[bytes]:
        """Lines read until one matches `pattern`."""
        out = []
        while True:
            line = self.f.readline()
            assert line, out
            out.append(line)
            if re.search(pattern, line):
                return out

    def close(self):
        self.s.close()
