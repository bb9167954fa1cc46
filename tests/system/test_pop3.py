"""System test of inetkit-pop3d: the sysadmin's path from README.md. Install, enable the
sockets, add a user with `inetkit user add`, seed a message with `inetkit deliver`, and read it
from the host with poplib over STLS and over port 995, as the inetkit user with the snakeoil
certificate."""

from __future__ import annotations

import poplib
import re
import ssl

import pytest

from .container import busy_ports, unverified_tls

SERVICE = "inetkit-pop3d.service"
PASSWORD = "pop3 system test"
MESSAGE = (b"From: root@localhost\r\nTo: carol@localhost\r\nSubject: system test\r\n"
           b"\r\nDelivered by inetkit deliver.\r\n.dot-stuffed line\r\n")



@pytest.fixture(scope="module")
def pop3(inetkit):
    busy = busy_ports([110, 995])
    assert not busy, f"something on the host holds {busy} (dovecot?); stop it"
    c = inetkit
    c.run("inetkit", "user", "add", "carol", input=PASSWORD + "\n")
    c.run("inetkit", "deliver", "carol", input=MESSAGE.decode())
    c.systemctl("enable", "--now", "inetkit-pop3d.socket", "inetkit-pop3s.socket")
    yield c
    c.systemctl("disable", "--now", "inetkit-pop3d.socket", "inetkit-pop3s.socket", SERVICE)


def test_retrieve_a_delivered_message_over_stls(pop3):
    p = poplib.POP3("127.0.0.1", 110, timeout=30)
    assert "STLS" in p.capa()
    p.stls(context=unverified_tls())
    snakeoil = pop3.run("cat", "/etc/ssl/certs/ssl-cert-snakeoil.pem").stdout
    assert p.sock.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(snakeoil)
    p.user("carol")
    p.pass_(PASSWORD)
    assert p.stat()[0] == 1
    lines = p.retr(1)[1]
    assert b"\r\n".join(lines) + b"\r\n" == MESSAGE
    p.quit()
    assert pop3.systemctl("is-active", SERVICE) == "active"


def test_pop3s_and_delete(pop3):
    p = poplib.POP3_SSL("127.0.0.1", 995, context=unverified_tls(), timeout=30)
    p.user("carol")
    p.pass_(PASSWORD)
    p.dele(1)
    p.quit()
    p = poplib.POP3_SSL("127.0.0.1", 995, context=unverified_tls(), timeout=30)
    p.user("carol")
    p.pass_(PASSWORD)
    assert p.stat() == (0, 0)
    p.quit()


def test_runs_as_inetkit_and_mail_belongs_to_it(pop3):
    pid = pop3.show(SERVICE, "MainPID")["MainPID"]
    status = pop3.run("cat", f"/proc/{pid}/status").stdout
    uid_line = next(line for line in status.splitlines() if line.startswith("Uid:"))
    inetkit_uid = pop3.run("id", "-u", "inetkit").stdout.strip()
    assert uid_line.split()[1:] == [inetkit_uid] * 4
    owners = pop3.sh("find /var/lib/inetkit/mail/carol -printf '%u\\n' | sort -u").stdout.split()
    assert owners == ["inetkit"]


def test_wrong_password_is_refused(pop3):
    p = poplib.POP3_SSL("127.0.0.1", 995, context=unverified_tls(), timeout=60)
    p.user("carol")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.pass_("not the password")
    p.quit()


def test_hardening_exposure(pop3):
    out = pop3.run("systemd-analyze", "security", "--no-pager", SERVICE).stdout
    exposure = float(re.search(rf"Overall exposure level for {SERVICE}: ([0-9.]+)", out)[1])
    print(f"{SERVICE} exposure {exposure}")
    assert exposure <= 1.5, out
