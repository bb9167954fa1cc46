"""inetkit-smtp-submit against bad input: bare LF in commands and 8-bit data, SMTP smuggling,
lone CR, NUL bytes, a megabyte command line, commands out of order, a disconnect in the middle
of DATA."""

import email

import pytest

from support.smtp import Raw, client, inbox, queued_id, raw, send, spool_files, wait_delivered
from support.smtp import home, smtpd  # noqa: F401 (fixtures)


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
