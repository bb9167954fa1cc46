"""inetkit-smtp-submit with the clients people use: smtplib, swaks, curl, openssl s_client;
the relay path against Postfix's smtp-sink; bad input; crash recovery."""

import base64
import email
import imaplib
import os
import poplib
import re
import shutil
import signal
import smtplib
import socket
import tempfile
import subprocess
import time
from pathlib import Path

import pytest

from support.homes import PASSWORD, daemon_config, tls_context
from support.inetkit import free_port

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


# -- the protocol ------------------------------------------------------------------------------

def test_ehlo_advertises_exactly_what_is_allowed(smtpd, cert):
    s = smtplib.SMTP(*smtpd.addr("submission"), timeout=30)
    code, _ = s.ehlo("client.test")
    assert code == 250
    for ext in ("pipelining", "size", "8bitmime", "enhancedstatuscodes", "smtputf8", "starttls",
                "auth"):
        assert s.has_extn(ext), ext
    assert s.esmtp_features["size"] == str(25 * 1024 * 1024)
    assert s.esmtp_features["auth"].split() == ["PLAIN", "LOGIN"]
    s.starttls(context=tls_context(cert))
    s.ehlo("client.test")
    assert not s.has_extn("starttls"), "no STARTTLS once under TLS"
    s.login("alice", PASSWORD)
    s.ehlo("client.test")
    assert not s.has_extn("auth"), "no AUTH once authenticated"
    s.quit()


def test_thunderbird_probe(smtpd):
    r = Raw(smtpd.addr("submission"))
    assert r.reply().startswith(b"220 ")
    reply = r.cmd(b"EHLO we-guess.mozilla.org")
    assert reply.startswith(b"250-mx.test") and reply.split(b"\n")[-1].startswith(b"250 ")
    assert r.cmd(b"QUIT") == b"221 2.0.0 Bye."
    assert r.sock.recv(10) == b""


def test_starttls_submit_local_then_read_with_pop3_and_imap(daemons, smtpd, home, cert):
    s = client(smtpd, cert)
    queue_id = send(s, rcpts=["bob@example.org", "bob+lists@localhost"])
    s.quit()
    wait_delivered(smtpd, queue_id)
    assert spool_files(home) == [], "the spool entry is removed once delivered"
    mail_root = f"[mail]\nroot = \"{home / 'mail'}\"\n"
    pop3 = daemons.start("pop3d", daemon_config(("pop3",), home / "users", rest=mail_root))
    p = poplib.POP3(*pop3.addr("pop3"), timeout=30)
    p.user("bob")
    p.pass_(PASSWORD)
    assert p.stat()[0] == 1, "two addresses of one user: one copy"
    text = b"\r\n".join(p.retr(1)[1]) + b"\r\n"
    p.quit()
    msg = email.message_from_bytes(text)
    assert text.startswith(b"Received: from client.test ([127.0.0.1]) by mx.test "
                           b"(inetkit-smtp-submit) with ESMTPSA id " + queue_id.encode() + b";")
    assert msg["Subject"] == "hello"
    assert msg["Bcc"] is None, "Bcc is stripped"
    assert msg["Message-ID"].endswith("@mx.test>"), "Message-ID added"
    assert msg["Date"], "Date added"
    assert b"\r\n.leading dot\r\n" in text, "dot-unstuffed"
    # The same message through IMAP.
    imap = daemons.start("imapd", daemon_config(("imap",), home / "users", rest=mail_root))
    i = imaplib.IMAP4(*imap.addr("imap"), timeout=30)
    i.login("bob", PASSWORD)
    assert i.select("INBOX")[1] == [b"1"]
    typ, data = i.fetch("1", "(BODY.PEEK[])")
    assert typ == "OK" and data[0][1] == text
    i.logout()


def test_smtp_ssl_implicit_tls(smtpd, home, cert):
    s = smtplib.SMTP_SSL(*smtpd.addr("submissions"), context=tls_context(cert), timeout=30)
    s.ehlo("client.test")
    assert not s.has_extn("starttls")
    s.login("bob", PASSWORD)
    queue_id = send(s, rcpts=["alice@example.org"], sender="bob@example.org",
                    message=MESSAGE.replace(b"From: Alice <alice@", b"From: Bob <bob@"))
    s.quit()
    wait_delivered(smtpd, queue_id)
    [msg] = inbox(home, "alice")
    assert b"Subject: hello" in msg


def test_pipelined_sends_get_replies_in_order(smtpd, home, cert):
    r = raw(smtpd)
    batch = b""
    for n in range(3):
        batch += (b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\n"
                  b"RCPT TO:<nobody@example.org>\r\nDATA\r\n")
        # RFC 2920: the client waits for DATA's 354 before the message.
        r.send(batch)
        batch = b""
        assert r.reply() == b"250 2.1.0 Sender OK."
        assert r.reply() == b"250 2.1.5 Recipient OK."
        assert r.reply().startswith(b"550 5.1.1")
        assert r.reply().startswith(b"354 ")
        r.send(b"Subject: pipelined %d\r\n\r\nbody\r\n.\r\nNOOP\r\n" % n)
        assert r.reply().startswith(b"250 2.0.0 Ok: queued as ")
        assert r.reply() == b"250 2.0.0 OK."
    r.send(b"RSET\r\nNOOP\r\nVRFY bob\r\nQUIT\r\n")
    assert [r.reply()[:9] for _ in range(4)] == [b"250 2.0.0", b"250 2.0.0", b"252 2.5.0",
                                                   b"221 2.0.0"]
    deadline = time.monotonic() + 30
    while len(inbox(home, "bob")) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    subjects = sorted(email.message_from_bytes(m)["Subject"] for m in inbox(home, "bob"))
    assert subjects == ["pipelined 0", "pipelined 1", "pipelined 2"]


def test_auth_plain_and_login_with_swaks(smtpd, home, cert):
    host, port = smtpd.addr("submission")
    for mech, user in (("PLAIN", "alice"), ("LOGIN", "bob")):
        out = subprocess.run(
            ["swaks", "--server", f"{host}:{port}", "--tls", "--tls-ca-path", str(cert[0]),
             "--tls-verify", "--auth", mech, "--auth-user", user, "--auth-password", PASSWORD,
             "--from", f"{user}@example.org", "--to", "alice@example.org",
             "--header", f"Subject: swaks {mech}", "--helo", "swaks.test"],
            capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "235 2.7.0 Authentication successful." in out.stdout
        assert "250 2.0.0 Ok: queued as" in out.stdout
    host, port = smtpd.addr("submissions")
    out = subprocess.run(
        ["swaks", "--server", f"{host}:{port}", "--tls-on-connect", "--tls-ca-path", str(cert[0]),
         "--auth", "PLAIN", "--auth-user", "bob", "--auth-password", PASSWORD,
         "--from", "bob@example.org", "--to", "alice@example.org", "--header", "Subject: swaks 465"],
        capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    deadline = time.monotonic() + 30
    while len(inbox(home, "alice")) < 3 and time.monotonic() < deadline:
        time.sleep(0.1)
    subjects = sorted(email.message_from_bytes(m)["Subject"] for m in inbox(home, "alice"))
    assert subjects == ["swaks 465", "swaks LOGIN", "swaks PLAIN"]


def test_curl_ssl_reqd(smtpd, home, cert, tmp_path):
    host, port = smtpd.addr("submission")
    body = tmp_path / "mail.txt"
    body.write_bytes(b"From: alice@example.org\r\nSubject: via curl\r\n\r\nhello\r\n")
    out = subprocess.run(
        ["curl", "-sS", "--ssl-reqd", "--cacert", str(cert[0]), f"smtp://localhost:{port}",
         "--connect-to", f"localhost:{port}:{host}:{port}", "--user", f"alice:{PASSWORD}",
         "--mail-from", "alice@example.org", "--mail-rcpt", "bob@example.org",
         "-T", str(body)], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    smtpd.wait_log("done", timeout=30)
    deadline = time.monotonic() + 30
    while not inbox(home, "bob") and time.monotonic() < deadline:
        time.sleep(0.1)
    [msg] = inbox(home, "bob")
    assert b"Subject: via curl" in msg


def test_openssl_s_client_starttls(smtpd, cert):
    host, port = smtpd.addr("submission")
    cred = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    # -crlf turns each LF into CRLF.
    script = (f"EHLO openssl.test\nAUTH PLAIN {cred}\nMAIL FROM:<alice@example.org>\n"
              "RCPT TO:<bob@example.org>\nDATA\n")
    proc = subprocess.Popen(
        ["openssl", "s_client", "-quiet", "-starttls", "smtp", "-crlf", "-CAfile", str(cert[0]),
         "-verify_return_error", "-connect", f"{host}:{port}", "-servername", "localhost"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    out, err = proc.communicate(
        (script + "Subject: s_client\n\nhi\n.\nQUIT\n").encode(), timeout=60)
    text = out.decode()
    assert "235 2.7.0" in text, text + err.decode()
    assert "354 " in text and "250 2.0.0 Ok: queued as" in text and "221 2.0.0" in text


# -- policy and bad input ----------------------------------------------------------------------

def test_auth_before_starttls_is_refused_when_plaintext_is_never(daemons, home, cert):
    d = daemons.start("smtp-submit", config(home, cert, auth='plaintext = "never"'))
    s = smtplib.SMTP(*d.addr("submission"), timeout=30)
    s.ehlo("client.test")
    assert not s.has_extn("auth"), "AUTH is not offered before TLS"
    cred = base64.b64encode(f"\0alice\0{PASSWORD}".encode()).decode()
    code, reply = s.docmd("AUTH", "PLAIN " + cred)
    assert (code, reply[:6]) == (538, b"5.7.11")
    s.starttls(context=tls_context(cert))
    s.ehlo("client.test")
    assert s.has_extn("auth")
    s.login("alice", PASSWORD)
    s.quit()


def test_mail_needs_auth_and_sender_must_be_own(smtpd, cert):
    s = client(smtpd, cert, login=None)
    code, reply = s.mail("alice@example.org")
    assert (code, reply[:5]) == (530, b"5.7.0")
    s.login("alice", PASSWORD)
    code, reply = s.mail("bob@example.org")
    assert (code, reply[:5]) == (553, b"5.7.1"), "forged MAIL FROM"
    code, reply = s.mail("alice@elsewhere.test")
    assert code == 553
    code, reply = s.mail("<>")
    assert code == 553
    code, _ = s.mail("alice+tag@EXAMPLE.org")
    assert code == 250
    s.rset()
    code, _ = s.docmd("AUTH", "PLAIN AAAA")
    assert code == 503, "already authenticated"
    s.quit()


def test_wrong_password_and_mechanism(smtpd, cert):
    s = client(smtpd, cert, login=None)
    with pytest.raises(smtplib.SMTPAuthenticationError) as e:
        s.login("alice", "wrong")
    assert e.value.smtp_code == 535
    code, reply = s.docmd("AUTH", "CRAM-MD5")
    assert (code, reply[:5]) == (504, b"5.5.4")
    s.quit()


def test_size_limits(daemons, home, cert):
    d = daemons.start("smtp-submit", config(home, cert, smtp="max_message_size = 10000"))
    r = raw(d)
    reply = r.cmd(b"MAIL FROM:<alice@example.org> SIZE=2147483648")
    assert reply.startswith(b"552 5.3.4")
    assert r.cmd(b"MAIL FROM:<alice@example.org> SIZE=5000 BODY=8BITMIME").startswith(b"250 2.1.0")
    assert r.cmd(b"RCPT TO:<bob@example.org>").startswith(b"250")
    assert r.cmd(b"DATA").startswith(b"354")
    # Far past the limit: refused after the dot, the session goes on, nothing is kept.
    line = b"x" * 998 + b"\r\n"
    r.send(b"Subject: big\r\n\r\n" + line * 2000 + b".\r\n")
    assert r.reply().startswith(b"552 5.3.4")
    assert r.cmd(b"NOOP") == b"250 2.0.0 OK."
    assert spool_files(home) == []
    assert inbox(home, "bob") == []


def test_bare_lf_commands_and_8bit_data(smtpd, home, cert):
    r = raw(smtpd)
    r.send(b"MAIL FROM:<alice@example.org> BODY=8BITMIME SMTPUTF8\n")
    assert r.reply().startswith(b"250")
    r.send(b"RCPT TO:<bob@example.org>\nDATA\n")
    assert r.reply().startswith(b"250")
    assert r.reply().startswith(b"354")
    r.send("Subject: 8 bit\r\n\r\nüñï\r\n..dots\r\n.\r\n".encode())
    queue_id = queued_id(r.reply())
    wait_delivered(smtpd, queue_id)
    [msg] = inbox(home, "bob")
    assert msg.endswith("\r\n\r\nüñï\r\n.dots\r\n".encode())


def assert_closed(r):
    """The server ended the session: end of stream (or a reset) after its last reply."""
    try:
        assert r.sock.recv(65536) == b""
    except ConnectionResetError:
        pass


# One DATA that a server ending lines at a lone LF or CR would read as two messages (the
# 2023 SMTP smuggling attacks), and the same bytes relayed on would do it at the smarthost.
SMUGGLED = b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n" \
           b"Subject: smuggled\r\n\r\nsecond\r\n.\r\n"


@pytest.mark.parametrize("end, what", [
    (b"\n.\n", b"LF"), (b"\r\n.\n", b"LF"), (b"\n.\r\n", b"LF"),
    (b"\r.\r", b"CR"), (b"\r.\r\n", b"CR"), (b"\r\n.\r", b"CR")])
def test_smtp_smuggling_is_refused(smtpd, home, end, what):
    r = raw(smtpd)
    r.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
    assert [r.reply()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
    r.send(b"Subject: first\r\n\r\nhello" + end + SMUGGLED)
    reply = r.reply()
    assert reply.startswith(b"550 5.5.2 Bare <" + what + b"> received"), reply
    assert_closed(r)
    assert spool_files(home) == []
    # A message sent afterwards is the only one bob ever gets.
    s = client(smtpd, None, tls=False)
    queue_id = send(s, message=b"From: alice@example.org\r\nSubject: after\r\n\r\nok\r\n")
    s.quit()
    wait_delivered(smtpd, queue_id)
    assert [email.message_from_bytes(m)["Subject"] for m in inbox(home, "bob")] == ["after"]


def test_lone_cr_anywhere_is_refused(smtpd, home):
    """smtplib turns every lone CR or LF into CRLF, so the bytes go over a raw socket."""
    for body in (b"Subject: cr\r\n\r\nhalf\rline\r\n.\r\n",
                 b"Subject: cr\rBcc: x@example.org\r\n\r\nbody\r\n.\r\n",
                 b"Subject: lf\r\n\r\nhalf\nline\r\n.\r\n"):
        r = raw(smtpd)
        r.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
        assert [r.reply()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
        r.send(body)
        assert r.reply().startswith(b"550 5.5.2 Bare <"), body
        assert_closed(r)
    smtpd.wait_log("bare CR in DATA; message refused, connection closed")
    assert spool_files(home) == []
    assert inbox(home, "bob") == []


def swaks_from(d, cert, header_from, user="alice"):
    host, port = d.addr("submission")
    return subprocess.run(
        ["swaks", "--server", f"{host}:{port}", "--tls", "--tls-ca-path", str(cert[0]),
         "--auth", "PLAIN", "--auth-user", user, "--auth-password", PASSWORD,
         "--from", f"{user}@example.org", "--to", "bob@example.org",
         "--header", f"From: {header_from}", "--header", "Subject: from check"],
        capture_output=True, text=True, timeout=60)


def test_from_header_must_belong_to_the_user(daemons, home, cert):
    d = daemons.start("smtp-submit", config(home, cert, smtp='[smtp.senders]\n'
                                                              'alice = ["boss@example.org"]'))
    out = swaks_from(d, cert, "Bob <bob@example.org>")
    assert out.returncode != 0
    assert "550 5.7.1 From: address <bob@example.org> does not belong to user alice." \
        in out.stdout, out.stdout
    s = client(d, cert)
    for forged in (b"From: alice@example.org, bob@example.org",
                   b"From: \"alice@example.org\" <bob@example.org>",
                   b"From: Alice <alice@example.org>\r\nFrom: bob@example.org",
                   b"From: team: bob@example.org;",
                   b"From: Alice <alice@example.org",
                   b"From: undisclosed:;"):
        s.mail("alice@example.org")
        s.rcpt("bob@example.org")
        code, reply = s.data(forged + b"\r\nSubject: forged\r\n\r\nx\r\n")
        assert (code, reply[:5]) == (550, b"5.7.1"), forged
    # The addresses of the envelope rule pass: own, +detail, any local domain, listed ones;
    # and a message without From: is not the check's business.
    for own in (b"From: Alice <alice@example.org>", b"From: alice+news@LOCALHOST (me)",
                b"From: =?utf-8?q?Bo=C3=9F?= <boss@example.org>",
                b"From:\r\n\t\"Alice, A.\"\r\n <alice@example.org>",
                b"X-No-From: 1"):
        queue_id = send(s, message=own + b"\r\nSubject: fine\r\n\r\nx\r\n")
        wait_delivered(d, queue_id)
    s.quit()
    assert len(inbox(home, "bob")) == 5
    assert not any(b"Subject: forged" in m for m in inbox(home, "bob"))
    d.wait_log("message refused: 550 5.7.1 From: address <bob@example.org>")


def test_source_route_without_mailbox_and_empty_from_are_refused(daemons, home, cert):
    # alice may use the null sender: neither a bare route nor From: <> may pass as it.
    d = daemons.start("smtp-submit", config(home, cert, smtp='[smtp.senders]\nalice = [""]'))
    s = client(d, cert)
    code, reply = s.docmd("MAIL", "FROM:<@relay.example>")
    assert (code, reply[:5]) == (501, b"5.5.4"), reply
    code, reply = s.docmd("MAIL", "FROM:<>")
    assert code == 250, reply
    code, reply = s.docmd("RCPT", "TO:<@a:@b>")
    assert (code, reply[:5]) == (501, b"5.5.4"), reply
    assert b"source route" in reply
    code, reply = s.docmd("RCPT", "TO:<@relay.example:bob@example.org>")
    assert code == 250, reply
    code, reply = s.data(b"From: Nobody <>\r\nSubject: nobody\r\n\r\nx\r\n")
    assert (code, reply) == (550, b"5.7.1 The From: header cannot be checked: an address is "
                                  b"empty."), reply
    s.quit()
    assert inbox(home, "bob") == []


def test_from_header_check_can_be_turned_off(daemons, home, cert):
    d = daemons.start("smtp-submit", config(home, cert, smtp="check_from_header = false"))
    out = swaks_from(d, cert, "Bob <bob@example.org>")
    assert out.returncode == 0, out.stdout + out.stderr
    queue_id = re.search(r"250 2\.0\.0 Ok: queued as (\S+)", out.stdout).group(1)
    wait_delivered(d, queue_id)
    [msg] = inbox(home, "bob")
    assert email.message_from_bytes(msg)["From"] == "Bob <bob@example.org>"


def test_nul_bytes(smtpd, home, cert):
    r = raw(smtpd)
    assert r.cmd(b"NOOP \0").startswith(b"501 5.5.4")
    assert r.cmd(b"MAIL FROM:<alice@example.org>").startswith(b"250")
    assert r.cmd(b"RCPT TO:<bob@example.org>").startswith(b"250")
    assert r.cmd(b"DATA").startswith(b"354")
    assert r.cmd(b"Subject: nul\r\n\r\na\0b\r\n.").startswith(b"554 5.6.0")
    assert r.cmd(b"NOOP") == b"250 2.0.0 OK."
    assert spool_files(home) == []


def test_megabyte_command_line_is_refused_and_session_kept(smtpd):
    r = raw(smtpd, login=False)
    r.send(b"NOOP " + b"a" * (1024 * 1024) + b"\r\n")
    assert r.reply() == b"500 5.5.6 Line too long."
    assert r.cmd(b"NOOP") == b"250 2.0.0 OK."


def test_commands_out_of_order(smtpd, cert):
    r = Raw(smtpd.addr("submission"))
    r.reply()
    assert r.cmd(b"MAIL FROM:<alice@example.org>").startswith(b"503 5.5.1"), "before EHLO"
    assert r.cmd(b"AUTH PLAIN").startswith(b"503 5.5.1"), "AUTH before EHLO"
    r.cmd(b"EHLO client.test")
    assert r.cmd(b"RCPT TO:<bob@example.org>").startswith(b"503 5.5.1")
    assert r.cmd(b"DATA").startswith(b"503 5.5.1")
    r.login()
    assert r.cmd(b"MAIL FROM:<alice@example.org>").startswith(b"250")
    assert r.cmd(b"MAIL FROM:<alice@example.org>").startswith(b"503 5.5.1"), "nested MAIL"
    assert r.cmd(b"DATA").startswith(b"554 5.5.1"), "no recipients"
    assert r.cmd(b"RCPT TO:<bob@far.example>").startswith(b"550 5.7.1"), "no smarthost"
    assert r.cmd(b"RCPT TO:bob").startswith(b"501 5.5.4")
    assert r.cmd(b"BDAT 10 LAST").startswith(b"500 5.5.2")
    assert r.cmd(b"MAIL FROM:<alice@example.org> RET=HDRS").startswith(b"555 5.5.4")
    assert r.cmd(b"QUIT").startswith(b"221")


def test_disconnect_mid_data_spools_nothing(smtpd, home):
    r = raw(smtpd)
    r.send(b"MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@example.org>\r\nDATA\r\n")
    assert [r.reply()[:3] for _ in range(3)] == [b"250", b"250", b"354"]
    r.send(b"Subject: cut\r\n\r\n" + b"half a message\r\n" * 1000)
    r.sock.close()
    smtpd.wait_log("client gone during DATA; message discarded", timeout=30)
    # A new session still works, and nothing of the cut message exists.
    r2 = raw(smtpd)
    assert r2.cmd(b"NOOP") == b"250 2.0.0 OK."
    assert spool_files(home) == []
    assert inbox(home, "bob") == []


@pytest.mark.parametrize("point", ["before-delivery", "after-delivery"])
def test_crash_after_250_delivers_exactly_once(daemons, home, cert, point):
    d = daemons.start("smtp-submit", config(home, cert), env={"INETKIT_TEST_CRASH": point})
    s = client(d, cert)
    queue_id = send(s, rcpts=["bob@example.org", "alice@example.org"])
    assert d.wait(timeout=30) != 0, "the daemon died at the crash point"
    assert f"{queue_id}.env" in spool_files(home), "the accepted message survived"
    d2 = daemons.start("smtp-submit", config(home, cert))
    wait_delivered(d2, queue_id)
    assert len(inbox(home, "bob")) == 1, "delivered exactly once"
    assert len(inbox(home, "alice")) == 1
    assert spool_files(home) == []


def test_kill_9_after_250(daemons, home, cert):
    d = daemons.start("smtp-submit", config(home, cert))
    s = client(d, cert)
    send(s)
    os.kill(d.pid, signal.SIGKILL)
    d.wait()
    # Whether or not delivery began before the kill, the restart finishes it, once.
    daemons.start("smtp-submit", config(home, cert))
    deadline = time.monotonic() + 30
    while spool_files(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert spool_files(home) == []
    assert len(inbox(home, "bob")) == 1


# -- relay through a smarthost -----------------------------------------------------------------

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
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError("smtp-sink did not start")

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


@needs_sink
def test_relay_to_smarthost_that_is_down_then_back(daemons, home, cert, tmp_path):
    port = free_port()
    d = daemons.start("smtp-submit", config(home, cert, relay=relay_config(port)))
    s = client(d, cert)
    queue_id = send(s, rcpts=["carol@far.example", "bob@example.org"])
    s.quit()
    d.wait_log("relay deferred", timeout=30)
    assert f"{queue_id}.env" in spool_files(home), "kept for a retry"
    assert len(inbox(home, "bob")) == 1, "the local copy does not wait for the relay"
    sink = Sink(tmp_path, port)
    try:
        wait_delivered(d, queue_id, timeout=60)
        [msg] = sink.messages()
        assert b"MAIL FROM:<alice@example.org>" in msg or b"alice@example.org" in msg
        assert b"carol@far.example" in msg
        assert b"Subject: hello" in msg
        assert b"Bcc:" not in msg
    finally:
        sink.stop()
    assert len(inbox(home, "bob")) == 1
    assert spool_files(home) == []


@needs_sink
def test_relay_refused_550_bounces_to_sender(daemons, home, cert, tmp_path):
    port = free_port()
    sink = Sink(tmp_path, port, reject="RCPT")
    try:
        d = daemons.start("smtp-submit", config(home, cert, relay=relay_config(port)))
        s = client(d, cert)
        queue_id = send(s, rcpts=["carol@far.example"])
        s.quit()
        wait_delivered(d, queue_id, timeout=60)
    finally:
        sink.stop()
    [bounce] = inbox(home, "alice")
    msg = email.message_from_bytes(bounce)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = [p.get_content_type() for p in msg.walk()]
    assert "message/delivery-status" in parts and "text/rfc822-headers" in parts
    assert b"Final-Recipient: rfc822; carol@far.example" in bounce
    assert b"Action: failed" in bounce and b"Status: 5." in bounce
    assert b"Subject: hello" in bounce
    assert spool_files(home) == []


# -- inetkit queue -----------------------------------------------------------------------------

def queue_cmd(home, *args):
    from support.inetkit import binary
    return subprocess.run([str(binary("inetkit")), "queue", "--spool", str(home / "spool"), *args],
                          capture_output=True, text=True, timeout=30)


@needs_sink
def test_queue_list_flush_delete(daemons, home, cert, tmp_path):
    port = free_port()
    relay = relay_config(port).replace("retry_initial = 1\nretry_max = 1",
                                       "retry_initial = 3600\nretry_max = 3600")
    d = daemons.start("smtp-submit", config(home, cert, relay=relay))
    s = client(d, cert)
    first = send(s, rcpts=["carol@far.example", "bob@example.org"])
    second = send(s, rcpts=["dave@far.example"])
    s.quit()
    d.wait_log(f'relay deferred id="{re.escape(second)}"', timeout=30)
    d.wait_log(f'relay deferred id="{re.escape(first)}"', timeout=30)
    out = queue_cmd(home, "list")
    assert out.returncode == 0, out.stderr
    assert first in out.stdout and second in out.stdout
    assert "<carol@far.example>  pending (smarthost)" in out.stdout
    assert "<bob@example.org>  delivered" in out.stdout
    assert "1 attempts deferred" in out.stdout and re.search(r"next in (59|60)m", out.stdout)
    out = queue_cmd(home, "delete", second)
    assert out.returncode == 0 and f"{second}: deleted" in out.stdout
    assert queue_cmd(home, "delete", "../etc").returncode != 0
    # The smarthost is back; a flush retries now rather than in an hour.
    sink = Sink(tmp_path, port)
    try:
        out = queue_cmd(home, "flush")
        assert out.returncode == 0 and f"{first}: will be retried now" in out.stdout
        wait_delivered(d, first, timeout=60)
        [msg] = sink.messages()
        assert b"carol@far.example" in msg
    finally:
        sink.stop()
    assert queue_cmd(home, "list").stdout.strip() == "The queue is empty."
    assert len(inbox(home, "bob")) == 1


def ca_and_leaf(directory):
    """A CA and a server certificate for localhost it signed (webpki refuses a self-signed CA
    certificate as a server's)."""
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    key, csr, leaf = directory / "leaf.key", directory / "leaf.csr", directory / "leaf.pem"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", "30", "-subj", "/CN=inetkit test CA", "-keyout", str(ca_key), "-out", str(ca))
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(csr))
    ext = directory / "leaf.ext"
    ext.write_text("basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost\n"
                   "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "30", "-extfile", str(ext), "-out", str(leaf))
    return ca, (leaf, key)


def test_relay_over_starttls_with_auth_to_another_inetkit(daemons, home, cert, tmp_path):
    """The smarthost is a second inetkit-smtp-submit that owns far.example: lettre must do
    STARTTLS (verifying the certificate against ca_file) and AUTH before it may send."""
    far = tmp_path / "far"
    far.mkdir()
    ca, leaf = ca_and_leaf(tmp_path)
    (far / "mail").mkdir()
    (far / "users").write_text(f"relay:{{PLAIN}}{PASSWORD}::::::\ncarol:{{PLAIN}}x::::::\n")
    smarthost = daemons.start("smtp-submit", config(far, leaf, auth='plaintext = "never"')
                              .replace('local_domains = ["localhost", "example.org"]',
                                       'local_domains = ["far.example"]')
                              + '[smtp.senders]\nrelay = ["alice@example.org"]\n')
    host, port = smarthost.addr("submission")
    relay = f"""host = "localhost"
port = {port}
tls = "starttls"
ca_file = "{ca}"
username = "relay"
password = "{PASSWORD}"
retry_initial = 1
retry_max = 1
"""
    d = daemons.start("smtp-submit", config(home, cert, relay=relay))
    s = client(d, cert)
    queue_id = send(s, rcpts=["carol@far.example"])
    s.quit()
    wait_delivered(d, queue_id, timeout=60)
    smarthost.wait_log('user="relay".*queued id=', timeout=30)
    deadline = time.monotonic() + 30
    while not inbox(far, "carol") and time.monotonic() < deadline:
        time.sleep(0.1)
    [msg] = inbox(far, "carol")
    # Our Received line, then the smarthost's on top of it.
    assert msg.startswith(b"Received: from mx.test ([127.0.0.1]) by mx.test")
    assert b"with ESMTPSA id " + queue_id.encode() in msg
    assert b"Subject: hello" in msg and b"Bcc:" not in msg


def test_recipient_limit(daemons, home, cert):
    d = daemons.start("smtp-submit", config(home, cert, smtp="max_recipients = 2"))
    r = raw(d)
    assert r.cmd(b"MAIL FROM:<alice@example.org>").startswith(b"250")
    assert r.cmd(b"RCPT TO:<bob@example.org>").startswith(b"250")
    assert r.cmd(b"RCPT TO:<alice@example.org>").startswith(b"250")
    assert r.cmd(b"RCPT TO:<bob+x@example.org>").startswith(b"452 4.5.3")
    assert r.cmd(b"DATA").startswith(b"354")
    queue_id = queued_id(r.cmd(b"Subject: two\r\n\r\nx\r\n."))
    wait_delivered(d, queue_id)
    assert len(inbox(home, "bob")) == 1 and len(inbox(home, "alice")) == 1


def test_expired_message_bounces(daemons, home, cert):
    """A smarthost that stays down past max_lifetime: the sender gets a DSN saying so."""
    relay = relay_config(free_port()) + "max_lifetime = 0\n"
    d = daemons.start("smtp-submit", config(home, cert, relay=relay))
    s = client(d, cert)
    queue_id = send(s, rcpts=["carol@far.example"])
    s.quit()
    wait_delivered(d, queue_id)
    [bounce] = inbox(home, "alice")
    assert b"Final-Recipient: rfc822; carol@far.example" in bounce
    assert b"Status: 5.4.7" in bounce and b"delivery time expired" in bounce
    assert spool_files(home) == []


@pytest.fixture
def small_spool(home):
    """The spool on a 256 KiB tmpfs, so that it fills up."""
    spool = home / "spool"
    spool.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(spool)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield spool
    subprocess.run(["umount", "-l", str(spool)], check=True)


def test_full_spool_gives_452_never_250(daemons, home, cert, small_spool):
    d = daemons.start("smtp-submit", config(home, cert))
    r = raw(d)
    assert r.cmd(b"MAIL FROM:<alice@example.org>").startswith(b"250")
    assert r.cmd(b"RCPT TO:<bob@example.org>").startswith(b"250")
    assert r.cmd(b"DATA").startswith(b"354")
    line = b"y" * 998 + b"\r\n"
    r.send(b"Subject: too big for the disk\r\n\r\n" + line * 600 + b".\r\n")
    assert r.reply().startswith(b"452 4.3.1")
    assert spool_files(home) == [], "nothing of it is left"
    # With the space back, the next message is accepted and delivered.
    assert r.cmd(b"MAIL FROM:<alice@example.org>").startswith(b"250")
    assert r.cmd(b"RCPT TO:<bob@example.org>").startswith(b"250")
    assert r.cmd(b"DATA").startswith(b"354")
    queue_id = queued_id(r.cmd(b"Subject: small\r\n\r\nfits\r\n."))
    wait_delivered(d, queue_id)
    [msg] = inbox(home, "bob")
    assert b"Subject: small" in msg


def test_socket_activation_with_named_sockets(daemons, home, cert):
    """The sockets come from "systemd" (LISTEN_FDS, LISTEN_FDNAMES), as the units pass them."""
    from support.inetkit import listening_socket
    plain, tls = listening_socket(), listening_socket()
    cfg = config(home, cert).replace('submission = ["127.0.0.1:0"]\nsubmissions = ["127.0.0.1:0"]\n', "")
    daemons.activate("smtp-submit", [("submission", plain), ("submissions", tls)], config=cfg)
    s = smtplib.SMTP(*plain.getsockname(), timeout=30)
    s.starttls(context=tls_context(cert))
    s.login("alice", PASSWORD)
    s.quit()
    s = smtplib.SMTP_SSL(*tls.getsockname(), context=tls_context(cert), timeout=30)
    s.login("bob", PASSWORD)
    s.quit()
