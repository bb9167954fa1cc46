"""System test of inetkit-imapd: install, enable both sockets, add a user with `inetkit user
add`, seed a message with `inetkit deliver`, then read, flag, move and append from the host
with imaplib over STARTTLS (143) and implicit TLS (993), against the socket-activated unit."""

from __future__ import annotations

import imaplib
import re
import ssl

import pytest

from .container import busy_ports, unverified_tls

SERVICE = "inetkit-imapd.service"
PASSWORD = "imap system test"
MESSAGE = (b"From: root@localhost\r\nTo: dave@localhost\r\nSubject: imap system test\r\n"
           b"\r\nDelivered by inetkit deliver.\r\n")



@pytest.fixture(scope="module")
def imap(inetkit):
    busy = busy_ports([143, 993])
    assert not busy, f"something on the host holds {busy} (dovecot?); stop it"
    c = inetkit
    c.run("inetkit", "user", "add", "dave", input=PASSWORD + "\n")
    c.run("inetkit", "deliver", "dave", input=MESSAGE.decode())
    c.systemctl("enable", "--now", "inetkit-imapd.socket", "inetkit-imaps.socket")
    yield c
    c.systemctl("disable", "--now", "inetkit-imapd.socket", "inetkit-imaps.socket", SERVICE)
    # Leave the installed system as the other system tests expect it: no users.
    c.run("inetkit", "user", "del", "dave")


def test_starttls_read_and_flag(imap):
    c = imaplib.IMAP4("127.0.0.1", 143, timeout=30)
    assert "STARTTLS" in c.capabilities
    c.starttls(ssl_context=unverified_tls())
    snakeoil = imap.run("cat", "/etc/ssl/certs/ssl-cert-snakeoil.pem").stdout
    assert c.sock.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(snakeoil)
    c.login("dave", PASSWORD)
    typ, data = c.select("INBOX")
    assert (typ, data) == ("OK", [b"1"])
    typ, data = c.fetch("1", "(BODY[])")
    assert typ == "OK" and data[0][1] == MESSAGE
    typ, data = c.fetch("1", "(FLAGS)")
    assert b"\\Seen" in data[0]
    c.logout()
    assert imap.systemctl("is-active", SERVICE) == "active"


def test_imaps_append_move_and_special_use(imap):
    c = imaplib.IMAP4_SSL("127.0.0.1", 993, ssl_context=unverified_tls(), timeout=30)
    c.login("dave", PASSWORD)
    typ, lines = c.list('""', "*")
    assert typ == "OK" and b'(\\HasNoChildren \\Trash) "/" "Trash"' in lines
    typ, _ = c.append("Drafts", "(\\Draft)", None, b"Subject: draft\r\n\r\nunsent\r\n")
    assert typ == "OK" and re.fullmatch(rb"\d+ 1", c.response("APPENDUID")[1][0])
    c.select("INBOX")
    typ, _ = c._simple_command("MOVE", "1", "Trash")
    assert typ == "OK"
    assert c.status("Trash", "(MESSAGES)")[1][0] == b'"Trash" (MESSAGES 1)'
    assert c.status("INBOX", "(MESSAGES)")[1][0] == b'INBOX (MESSAGES 0)'  # bare, as Dovecot sends it
    c.logout()


def test_runs_as_inetkit_and_mail_belongs_to_it(imap):
    pid = imap.show(SERVICE, "MainPID")["MainPID"]
    status = imap.run("cat", f"/proc/{pid}/status").stdout
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    inetkit_uid = imap.run("id", "-u", "inetkit").stdout.strip()
    assert uid_line.split()[1:] == [inetkit_uid] * 4
    owners = imap.sh("find /var/lib/inetkit/mail/dave -printf '%u\\n' | sort -u").stdout.split()
    assert owners == ["inetkit"]


def test_wrong_password_is_refused(imap):
    c = imaplib.IMAP4_SSL("127.0.0.1", 993, ssl_context=unverified_tls(), timeout=60)
    with pytest.raises(imaplib.IMAP4.error, match=r"AUTHENTICATIONFAILED"):
        c.login("dave", "not the password")


def test_hardening_exposure(imap):
    out = imap.run("systemd-analyze", "security", "--no-pager", SERVICE).stdout
    exposure = float(re.search(rf"Overall exposure level for {SERVICE}: ([0-9.]+)", out)[1])
    print(f"{SERVICE} exposure {exposure}")
    assert exposure <= 1.5, out
