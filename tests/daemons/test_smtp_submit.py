"""inetkit-smtp-submit with the clients people use: smtplib, swaks, curl, openssl s_client, and
systemd's named sockets. Policy is in test_smtp_policy.py, bad input in
test_smtp_bad_input.py, crash recovery and the spool in test_smtp_spool.py, the relay path
against Postfix's smtp-sink and `inetkit queue` in test_smtp_relay.py."""

import base64
import email
import imaplib
import poplib
import smtplib
import subprocess
import time

from support.homes import PASSWORD, daemon_config, tls_context
from support.smtp import MESSAGE, Raw, client, config, inbox, raw, send, spool_files, wait_delivered
from support.smtp import home, smtpd  # noqa: F401 (fixtures)


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
