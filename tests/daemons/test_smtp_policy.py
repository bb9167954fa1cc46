"""inetkit-smtp-submit's policy: no AUTH before STARTTLS when plaintext is never allowed, MAIL
only after AUTH and from the user's own address, wrong passwords and mechanisms, size and
recipient limits, a From: header that must belong to the user (and the switch that turns the
check off)."""

import base64
import email
import re
import smtplib
import subprocess

import pytest

from support.homes import PASSWORD, tls_context
from support.smtp import client, config, inbox, queued_id, raw, send, spool_files, wait_delivered
from support.smtp import home, smtpd  # noqa: F401 (fixtures)


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
