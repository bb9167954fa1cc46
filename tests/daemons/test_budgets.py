"""The memory side of admission: above `[limits] memory_soft_limit`, new connections get the
protocol's "try later" reply and count as refused; without a limit they are served."""

import ftplib
import imaplib
import poplib
import smtplib
import socket
import subprocess

import pytest

PASSWORD = "correct horse"


@pytest.fixture
def mailhome(tmp_path):
    users = tmp_path / "users"
    users.write_text(f"bob:{{PLAIN}}{PASSWORD}::::::\n")
    mail = tmp_path / "mail"
    mail.mkdir()
    return users, mail


def config(name, users, mail, limits=""):
    socket_name = {"pop3d": "pop3", "imapd": "imap", "smtp-submit": "submission",
                   "ftpd": "ftp"}[name]
    own = {
        "smtp-submit": f'[mail]\nroot = "{mail}"\n[smtp]\nspool = "{mail.parent / "spool"}"\n',
        "ftpd": f'[ftp]\nroot = "{mail.parent / "ftp"}"\n',
    }.get(name, f'[mail]\nroot = "{mail}"\n')
    return f"""
[listen]
{socket_name} = ["127.0.0.1:0"]
[auth]
users_file = "{users}"
{own}
[limits]
{limits}
"""


def test_pop3_over_the_soft_limit_says_try_later(daemons, mailhome):
    users, mail = mailhome
    # 1 MiB: any running daemon is above it.
    d = daemons.start("pop3d", config("pop3d", users, mail, "memory_soft_limit = 1"))
    d.wait_log("memory soft limit from \\[limits\\] memory_soft_limit mib=1")
    with pytest.raises(poplib.error_proto, match=r"^b'-ERR \[SYS/TEMP\]"):
        poplib.POP3(*d.addr("pop3"), timeout=30)
    d.wait_log("memory soft limit reached, refusing")
    d.notify.wait_for("STATUS=0 active sessions, 0 served, 1 refused")


def test_pop3_without_a_limit_is_served(daemons, mailhome):
    users, mail = mailhome
    d = daemons.start("pop3d", config("pop3d", users, mail))
    p = poplib.POP3(*d.addr("pop3"), timeout=30)
    assert p.getwelcome().startswith(b"+OK")
    p.user("bob")
    p.pass_(PASSWORD)
    assert p.stat() == (0, 0)
    p.quit()
    assert "memory soft limit" not in d.log()


def test_pop3_a_limit_of_zero_is_off(daemons, mailhome):
    users, mail = mailhome
    d = daemons.start("pop3d", config("pop3d", users, mail, "memory_soft_limit = 0"))
    p = poplib.POP3(*d.addr("pop3"), timeout=30)
    assert p.getwelcome().startswith(b"+OK")
    p.quit()


def test_imap_over_the_soft_limit_says_try_later(daemons, mailhome):
    users, mail = mailhome
    d = daemons.start("imapd", config("imapd", users, mail, "memory_soft_limit = 1"))
    # The greeting is the BYE of RFC 3501 7.1.5 (imaplib raises on a greeting that is not OK).
    # RFC 5530: UNAVAILABLE, "try again later".
    with pytest.raises(imaplib.IMAP4.error, match=r"^b'\* BYE \[UNAVAILABLE\] .*try again later"):
        imaplib.IMAP4(*d.addr("imap"), timeout=30)
    d.notify.wait_for("STATUS=0 active sessions, 0 served, 1 refused")


def test_imap_with_a_generous_limit_is_served(daemons, mailhome):
    users, mail = mailhome
    d = daemons.start("imapd", config("imapd", users, mail, "memory_soft_limit = 4096"))
    c = imaplib.IMAP4(*d.addr("imap"), timeout=30)
    c.login("bob", PASSWORD)
    assert c.select("INBOX")[0] == "OK"
    c.logout()


def test_smtp_over_the_soft_limit_says_try_later(daemons, mailhome):
    users, mail = mailhome
    d = daemons.start("smtp-submit", config("smtp-submit", users, mail, "memory_soft_limit = 1"))
    # RFC 3463 X.3.2: system not accepting network messages.
    with pytest.raises(smtplib.SMTPConnectError) as refused:
        smtplib.SMTP(*d.addr("submission"), timeout=30)
    code, text = refused.value.args
    assert (code, text.split()[0]) == (421, b"4.3.2"), text
    assert b"try again later" in text
    d.notify.wait_for("STATUS=0 active sessions, 0 served, 1 refused")


def test_ftp_over_the_soft_limit_says_try_later(daemons, mailhome):
    users, mail = mailhome
    d = daemons.start("ftpd", config("ftpd", users, mail, "memory_soft_limit = 1"))
    f = ftplib.FTP()
    with pytest.raises(ftplib.error_temp, match=r"^421 .*try again later"):
        f.connect(*d.addr("ftp"), timeout=30)
    d.notify.wait_for("STATUS=0 active sessions, 0 served, 1 refused")


# --- UDP over the soft limit ---------------------------------------------------------------

def udp_ask(addr, payload, timeout=2.0):
    """The reply to one datagram, or None when none came within `timeout` (an absence check,
    not a speed limit)."""
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(payload, addr)
        try:
            return s.recv(65536)
        except socket.timeout:
            return None


def test_udp_echo_over_the_soft_limit_drops(daemons):
    config = '[listen]\necho = ["udp://127.0.0.1:0"]\n[limits]\n'
    d = daemons.start("echo", config + "memory_soft_limit = 1\n")
    assert udp_ask(d.addr("echo", "udp"), b"ping") is None
    d.wait_log("memory soft limit reached, refusing datagrams")
    d.notify.wait_for("STATUS=")

    served = daemons.start("echo", config + "memory_soft_limit = 0\n")
    assert udp_ask(served.addr("echo", "udp"), b"ping") == b"ping"


def dig(port, name):
    argv = ["dig", "-p", str(port), "@127.0.0.1", "+time=5", "+tries=1", name, "A"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout


def test_dns_over_the_soft_limit_refuses_what_needs_an_upstream(daemons):
    # The upstream is never asked: nothing listens there.
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as unused:
        unused.bind(("127.0.0.1", 0))
        upstream = unused.getsockname()[1]
    d = daemons.start("dns-forwarder", f"""
[listen]
dns = ["udp://127.0.0.1:0"]
[[upstream]]
address = "127.0.0.1:{upstream}"
[[record]]
name = "printer.lan"
type = "A"
value = "192.0.2.30"
[limits]
memory_soft_limit = 1
""")
    port = d.addr("dns", "udp")[1]
    # Refused at once (dnsmasq's answer when it cannot take a query): not cached downstream,
    # and a stub resolver moves on to its next server.
    assert "status: REFUSED" in dig(port, "www.example.test")
    d.wait_log("memory soft limit reached, refusing datagrams")
    # What costs nothing new is still answered.
    out = dig(port, "printer.lan")
    assert "status: NOERROR" in out and "192.0.2.30" in out
