"""System test of inetkit-smtp-submit: the sysadmin's path. Install, enable the sockets, add a
user with `inetkit user add`, submit mail from the host with smtplib over STARTTLS (587) and
implicit TLS (465), and read it back with poplib through inetkit-pop3d, all as the inetkit user
with the snakeoil certificate and the default config."""

from __future__ import annotations

import email
import poplib
import re
import smtplib
import ssl

import pytest

from .container import busy_ports, unverified_tls

SERVICE = "inetkit-smtp-submit.service"
SOCKETS = ["inetkit-smtp-submit.socket", "inetkit-smtps-submit.socket"]
POP3 = ["inetkit-pop3d.socket", "inetkit-pop3s.socket"]
PASSWORD = "smtp system test"



@pytest.fixture(scope="module")
def smtp(inetkit):
    busy = busy_ports([587, 465, 995])
    assert not busy, f"something on the host holds {busy} (postfix?); stop it"
    c = inetkit
    for user in ("dora", "emil"):
        c.run("inetkit", "user", "add", user, input=PASSWORD + "\n")
    c.systemctl("enable", "--now", *SOCKETS, *POP3)
    yield c
    c.systemctl("disable", "--now", *SOCKETS, *POP3, SERVICE, "inetkit-pop3d.service")


def pop3_messages(user: str) -> list[bytes]:
    p = poplib.POP3_SSL("127.0.0.1", 995, context=unverified_tls(), timeout=30)
    p.user(user)
    p.pass_(PASSWORD)
    out = [b"\r\n".join(p.retr(n)[1]) + b"\r\n" for n in range(1, p.stat()[0] + 1)]
    p.quit()
    return out


def wait_for_messages(c, user: str, count: int) -> list[bytes]:
    # Delivery follows the 250 within the daemon; the journal says when it is done.
    c.sh(f"for i in $(seq 300); do [ $(ls /var/lib/inetkit/mail/{user}/new "
         f"/var/lib/inetkit/mail/{user}/cur 2>/dev/null | grep -c .) -ge {count} ] && exit 0; "
         "sleep 0.1; done; exit 1")
    return pop3_messages(user)


def test_submit_over_starttls_and_read_with_pop3(smtp):
    s = smtplib.SMTP("127.0.0.1", 587, timeout=30)
    s.ehlo("host.test")
    assert s.has_extn("starttls") and s.has_extn("pipelining") and s.has_extn("size")
    s.starttls(context=unverified_tls())
    snakeoil = smtp.run("cat", "/etc/ssl/certs/ssl-cert-snakeoil.pem").stdout
    assert s.sock.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(snakeoil)
    s.ehlo("host.test")
    s.login("dora", PASSWORD)
    refused = s.sendmail("dora@localhost", ["emil@localhost"],
                         b"From: dora@localhost\r\nTo: emil@localhost\r\nBcc: x@localhost\r\n"
                         b"Subject: system test\r\n\r\nSubmitted through the installed unit.\r\n")
    assert refused == {}
    s.quit()
    [text] = wait_for_messages(smtp, "emil", 1)
    msg = email.message_from_bytes(text)
    assert msg["Subject"] == "system test" and msg["Bcc"] is None
    assert text.startswith(b"Received: from host.test ")
    assert smtp.systemctl("is-active", SERVICE) == "active"
    assert smtp.sh("ls -A /var/lib/inetkit/spool | grep -v '^tmp$' | wc -l").stdout.strip() == "0"


def test_submit_over_implicit_tls_and_refusals(smtp):
    s = smtplib.SMTP_SSL("127.0.0.1", 465, context=unverified_tls(), timeout=30)
    s.ehlo("host.test")
    s.login("emil", PASSWORD)
    code, _ = s.mail("dora@localhost")
    assert code == 553, "a user cannot send as another"
    s.rset()
    s.mail("emil@localhost")
    code, reply = s.rcpt("someone@far.example")
    assert (code, reply[:5]) == (550, b"5.7.1"), "no smarthost by default"
    code, _ = s.rcpt("dora@localhost")
    assert code == 250
    code, _ = s.data(b"Subject: over 465\r\n\r\nhello\r\n")
    assert code == 250
    s.quit()
    [text] = wait_for_messages(smtp, "dora", 1)
    assert b"Subject: over 465" in text


def test_runs_as_inetkit_and_spool_belongs_to_it(smtp):
    pid = smtp.show(SERVICE, "MainPID")["MainPID"]
    status = smtp.run("cat", f"/proc/{pid}/status").stdout
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    inetkit_uid = smtp.run("id", "-u", "inetkit").stdout.strip()
    assert uid_line.split()[1:] == [inetkit_uid] * 4
    owners = smtp.sh("find /var/lib/inetkit/spool /var/lib/inetkit/mail/emil "
                     "-printf '%u\\n' | sort -u").stdout.split()
    assert owners == ["inetkit"]
    assert smtp.run("inetkit", "queue", "list").stdout.strip() == "The queue is empty."


def test_hardening_exposure(smtp):
    out = smtp.run("systemd-analyze", "security", "--no-pager", SERVICE).stdout
    exposure = float(re.search(rf"Overall exposure level for {SERVICE}: ([0-9.]+)", out)[1])
    print(f"{SERVICE} exposure {exposure}")
    assert exposure <= 1.5, out
