"""What the smtp-submit tests share: the daemon on `submission` and `submissions` with its
spool beside the users file (the `home` and `smtpd` fixtures), an smtplib client, a raw session,
the test message sent and its delivery waited for, the INBOX and spool read back, and Postfix's
smtp-sink as a smarthost."""

import base64
import os
import re
import shutil
import smtplib
import socket
import tempfile
import subprocess
from pathlib import Path

import pytest

from support.homes import PASSWORD, daemon_config, tls_context
from support.inetkit import connect_when_listening


SMTP_SINK = shutil.which("smtp-sink") or "/usr/sbin/smtp-sink"


@pytest.fixture
def home(mailhome):
    """The folder of the users file and the mail root; the config puts the spool there too."""
    return mailhome.users.parent


def config(home, cert, smtp="", relay="", auth=""):
    return daemon_config(("submission", "submissions"), home / "users", cert,
                         auth="failure_delay = 0\n" + auth, rest=f"""[mail]
root = "{home / 'mail'}"
[smtp]
hostname = "mx.test"
local_domains = ["localhost", "example.org"]
spool = "{home / 'spool'}"
{smtp}
[relay]
{relay}
""")


@pytest.fixture
def smtpd(daemons, home, cert):
    return daemons.start("smtp-submit", config(home, cert))


def client(d, cert, tls=True, login="alice"):
    host, port = d.addr("submission")
    s = smtplib.SMTP(host, port, timeout=30)
    s.ehlo("client.test")
    if tls:
        s.starttls(context=tls_context(cert))
        s.ehlo("client.test")
    if login:
        s.login(login, PASSWORD)
    return s


def inbox(home, user):
    """Every message in the user's INBOX, as bytes."""
    out = []
    for sub in ("new", "cur"):
        d = home / "mail" / user / sub
        if d.is_dir():
            out += [p.read_bytes() for p in sorted(d.iterdir())]
    return out


def wait_delivered(d, queue_id, timeout=30):
    d.wait_log(rf'done id="{re.escape(queue_id)}"', timeout=timeout)


def queued_id(reply: bytes) -> str:
    return reply.decode().rsplit(" ", 1)[1]


def spool_files(home):
    spool = home / "spool"
    return sorted(p.name for p in spool.rglob("*") if p.is_file())


MESSAGE = (b"From: Alice <alice@example.org>\r\nTo: Bob <bob@example.org>\r\n"
           b"Bcc: secret@example.org\r\nSubject: hello\r\n\r\nHi Bob.\r\n.leading dot\r\n")


def send(s, rcpts=("bob@example.org",), sender="alice@example.org", message=MESSAGE):
    """Sends and returns the queue id from the 250 reply."""
    s.mail(sender)
    for r in rcpts:
        code, _ = s.rcpt(r)
        assert code == 250
    code, reply = s.data(message)
    assert code == 250, reply
    assert reply.startswith(b"2.0.0 Ok: queued as ")
    return queued_id(reply)


class Raw:
    """A bare SMTP conversation, for what smtplib will not send."""

    def __init__(self, addr, tls_cert=None):
        self.sock = socket.create_connection(addr, timeout=30)
        if tls_cert:
            self.sock = tls_context(tls_cert).wrap_socket(self.sock, server_hostname="localhost")
        self.buf = b""

    def send(self, data: bytes):
        self.sock.sendall(data)

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            chunk = self.sock.recv(65536)
            if not chunk:
                raise EOFError(self.buf)
            self.buf += chunk
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def reply(self) -> bytes:
        """One (possibly multi-line) reply, lines joined by newlines."""
        lines = [self.line()]
        while lines[-1][3:4] == b"-":
            lines.append(self.line())
        return b"\n".join(lines)

    def cmd(self, data: bytes) -> bytes:
        self.send(data + b"\r\n")
        return self.reply()

    def starttls(self, cert):
        assert self.cmd(b"STARTTLS").startswith(b"220 2.0.0")
        self.sock = tls_context(cert).wrap_socket(self.sock, server_hostname="localhost")

    def login(self, user="alice"):
        cred = base64.b64encode(f"\0{user}\0{PASSWORD}".encode())
        assert self.cmd(b"AUTH PLAIN " + cred).startswith(b"235 2.7.0")


def raw(d, cert=None, login=True):
    r = Raw(d.addr("submission"))
    assert r.reply().startswith(b"220 mx.test ESMTP")
    assert r.cmd(b"EHLO client.test").startswith(b"250-mx.test")
    if login:
        r.login()
    return r


needs_sink = pytest.mark.skipif(not Path(SMTP_SINK).exists(), reason="needs postfix's smtp-sink")


class Sink:
    def __init__(self, tmp_path, port, reject=None):
        # smtp-sink writes as "nobody", who cannot enter pytest's private tmp_path.
        self.dir = Path(tempfile.mkdtemp(prefix=f"inetkit-sink-{port}-"))
        os.chmod(self.dir, 0o777)
        argv = [SMTP_SINK, "-u", "nobody", "-d", str(self.dir) + "/%H%M%S."]
        if reject:
            argv += ["-f", reject]
        argv += [f"127.0.0.1:{port}", "10"]
        self.proc = subprocess.Popen(argv, stderr=subprocess.PIPE)
        connect_when_listening(port).close()

    def messages(self):
        return [p.read_bytes() for p in sorted(self.dir.iterdir())]

    def stop(self):
        self.proc.terminate()
        self.proc.wait()
        shutil.rmtree(self.dir, ignore_errors=True)


def relay_config(port):
    return f"""host = "127.0.0.1"
port = {port}
tls = "none"
retry_initial = 1
retry_max = 1
"""
