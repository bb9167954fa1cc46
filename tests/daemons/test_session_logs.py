"""The line every session logs at its end (`session ended peer=… socket=… user=… reason=…
duration=… in=… out=… tls=… cipher=…`), read from each daemon's log after sessions of the
clients people use, in the clear and under TLS; and smtp-submit's `queued` line."""

import ftplib
import imaplib
import poplib
import re
import signal
import smtplib
import socket
import ssl
import subprocess
import time

import support.imap
import support.rpcd
import support.smtp
from support.homes import PASSWORD, message, seed, tls_context
from support.logs import assert_plain, assert_tls, fields, negotiated, session_end

import test_ftp
import test_pop3
from test_ftp import home  # noqa: F401 (the ftp tests' users and roots, a fixture)

QUICK_LIMITS = "\n[limits]\nidle_timeout = 1\nlogin_timeout = 1\n"


def port_of(sock) -> int:
    return sock.getsockname()[1]


def assert_counted(end):
    """Bytes in and out were counted (every client here sends and receives something)."""
    assert int(end["in"]) > 0 and int(end["out"]) > 0, end
    assert re.fullmatch(r"\d+\.\d\ds", end["duration"]), end


# -- POP3 -----------------------------------------------------------------------------------------

def pop3d(daemons, mailhome, cert, limits=""):
    users, mail = mailhome
    seed(mail, "alice", message(1))
    return daemons.start("pop3d", test_pop3.config(users, mail, cert) + limits)


def test_pop3_plaintext_and_stls_sessions_log_user_reason_and_tls(daemons, mailhome, cert):
    d = pop3d(daemons, mailhome, cert)
    host, port = d.addr("pop3")
    p = poplib.POP3(host, port, timeout=30)
    p.user("alice")
    p.pass_(PASSWORD)
    plain_port = port_of(p.sock)
    p.quit()
    end = session_end(d, port=plain_port)
    assert end["socket"] == "pop3" and end["user"] == "alice" and end["reason"] == "quit", end
    assert_plain(end)
    assert_counted(end)

    p = poplib.POP3(host, port, timeout=30)
    p.stls(context=tls_context(cert))
    p.user("bob")
    p.pass_(PASSWORD)
    tls_port, tls = port_of(p.sock), negotiated(p.sock)
    p.quit()
    end = session_end(d, port=tls_port)
    assert end["user"] == "bob" and end["reason"] == "quit", end
    assert_tls(end, tls)
    assert_counted(end)


def test_pop3s_tls12_session_logs_its_version_and_suite(daemons, mailhome, cert):
    d = pop3d(daemons, mailhome, cert)
    ctx = tls_context(cert)
    ctx.maximum_version = ssl.TLSVersion.TLSv1_2
    host, port = d.addr("pop3s")
    p = poplib.POP3_SSL(host, port, context=ctx, timeout=30)
    p.user("alice")
    p.pass_(PASSWORD)
    client_port = port_of(p.sock)
    p.quit()
    end = session_end(d, port=client_port)
    assert end["tls"] == "TLSv1.2", end
    # rustls logs the IANA name: TLS_ECDHE_ECDSA_WITH_AES_256_GCM_SHA384 for OpenSSL's
    # ECDHE-ECDSA-AES256-GCM-SHA384 (the test certificate is an EC one).
    assert re.fullmatch(r"TLS_ECDHE_ECDSA_WITH_\w+", end["cipher"]), end
    assert end["socket"] == "pop3s" and end["reason"] == "quit", end


def test_pop3_idle_and_login_timeouts_and_a_vanished_client_are_told_apart(
        daemons, mailhome, cert):
    d = pop3d(daemons, mailhome, cert, QUICK_LIMITS.replace("login_timeout = 1", "login_timeout = 60"))
    host, port = d.addr("pop3")
    p = poplib.POP3(host, port, timeout=30)
    p.user("alice")
    p.pass_(PASSWORD)
    idle_port = port_of(p.sock)
    end = session_end(d, port=idle_port)
    assert end["reason"] == "idle-timeout" and end["user"] == "alice", end

    with socket.create_connection((host, port)) as s:
        gone_port = port_of(s)
        s.recv(100)
    end = session_end(d, port=gone_port)
    assert end["reason"] == "disconnected" and "user" not in end, end


def test_pop3_login_timeout_is_its_own_reason(daemons, mailhome, cert):
    d = pop3d(daemons, mailhome, cert, QUICK_LIMITS.replace("idle_timeout = 1", "idle_timeout = 60"))
    host, port = d.addr("pop3")
    p = poplib.POP3(host, port, timeout=30)
    end = session_end(d, port=port_of(p.sock))
    assert end["reason"] == "login-timeout" and "user" not in end, end


# -- IMAP -----------------------------------------------------------------------------------------

def imapd(daemons, mailhome, cert, limits=""):
    users, mail = mailhome
    seed(mail, "alice", message(1))
    return daemons.start("imapd", support.imap.config(users, mail, cert) + limits)


def test_imap_logout_and_disconnect_are_logged_in_the_clear_and_under_starttls(
        daemons, mailhome, cert):
    d = imapd(daemons, mailhome, cert)
    host, port = d.addr("imap")
    m = imaplib.IMAP4(host, port, timeout=30)
    m.login("alice", PASSWORD)
    m.select("INBOX")
    plain_port = port_of(m.sock)
    m.logout()
    end = session_end(d, port=plain_port)
    assert end["socket"] == "imap" and end["user"] == "alice" and end["reason"] == "quit", end
    assert_plain(end)
    assert_counted(end)

    m = imaplib.IMAP4(host, port, timeout=30)
    m.starttls(ssl_context=tls_context(cert))
    m.login("bob", PASSWORD)
    tls_port, tls = port_of(m.sock), negotiated(m.sock)
    # Gone without LOGOUT: what imapd never logged before.
    m.shutdown()
    end = session_end(d, port=tls_port)
    assert end["user"] == "bob" and end["reason"] == "disconnected", end
    assert_tls(end, tls)


def test_imaps_session_and_shutdown(daemons, mailhome, cert):
    d = imapd(daemons, mailhome, cert)
    host, port = d.addr("imaps")
    m = imaplib.IMAP4_SSL(host, port, ssl_context=tls_context(cert), timeout=30)
    m.login("alice", PASSWORD)
    tls_port, tls = port_of(m.sock), negotiated(m.sock)
    d.signal(signal.SIGTERM)
    end = session_end(d, port=tls_port)
    assert end["socket"] == "imaps" and end["reason"] == "shutdown", end
    assert_tls(end, tls)
    d.wait()


def test_imap_idle_timeout_during_idle(daemons, mailhome, cert):
    d = imapd(daemons, mailhome, cert, QUICK_LIMITS.replace("login_timeout = 1", "login_timeout = 60"))
    host, port = d.addr("imap")
    m = imaplib.IMAP4(host, port, timeout=30)
    m.login("alice", PASSWORD)
    m.select("INBOX")
    client_port = port_of(m.sock)
    m.send(b"i1 IDLE\r\n")
    end = session_end(d, port=client_port)
    assert end["reason"] == "idle-timeout" and end["user"] == "alice", end


# -- SMTP submission ------------------------------------------------------------------------------

def test_smtp_queued_line_and_session_ends(daemons, mailhome, cert):
    home = mailhome.users.parent
    d = daemons.start("smtp-submit", support.smtp.config(home, cert))
    s = support.smtp.client(d, cert)
    tls_port, tls = port_of(s.sock), negotiated(s.sock)
    s.sendmail("alice@localhost", ["bob@localhost", "alice@example.org"],
               b"Subject: hi\r\n\r\nhello\r\n")
    s.quit()
    queued = fields(d.wait_log(r"\squeued id="), "queued")
    assert queued["from"] == "<alice@localhost>", queued
    assert queued["to"] == "<bob@localhost>,<alice@example.org>", queued
    assert queued["nrcpt"] == "2", queued
    assert queued["user"] == "alice" and int(queued["size"]) > len("hello"), queued
    assert re.fullmatch(r"\S+", queued["id"]), queued
    end = session_end(d, port=tls_port)
    assert end["socket"] == "submission" and end["user"] == "alice" and end["reason"] == "quit"
    assert_tls(end, tls)
    assert_counted(end)

    s = support.smtp.client(d, cert, tls=False, login=None)
    plain_port = port_of(s.sock)
    s.quit()
    end = session_end(d, port=plain_port)
    assert end["reason"] == "quit" and "user" not in end, end
    assert_plain(end)


def test_smtp_queued_line_bounds_its_recipients(daemons, mailhome, cert):
    home = mailhome.users.parent
    d = daemons.start("smtp-submit", support.smtp.config(home, cert))
    s = support.smtp.client(d, cert)
    rcpts = [f"bob+{n}@localhost" for n in range(14)]
    s.sendmail("alice@localhost", rcpts, b"Subject: many\r\n\r\nhello\r\n")
    s.quit()
    line = d.wait_log(r"\squeued id=")
    to = re.search(r" to=(.*?) nrcpt=(\d+) ", line)
    assert to and to.group(2) == "14", line
    assert to.group(1) == ",".join(f"<{r}>" for r in rcpts[:10]) + ",+4 more", line


def test_smtps_session_logs_tls(daemons, mailhome, cert):
    home = mailhome.users.parent
    d = daemons.start("smtp-submit", support.smtp.config(home, cert))
    host, port = d.addr("submissions")
    s = smtplib.SMTP_SSL(host, port, context=tls_context(cert), timeout=30)
    s.ehlo("client.test")
    tls_port, tls = port_of(s.sock), negotiated(s.sock)
    s.quit()
    end = session_end(d, port=tls_port)
    assert end["socket"] == "submissions" and end["reason"] == "quit", end
    assert_tls(end, tls)


# -- FTP ------------------------------------------------------------------------------------------

def test_ftp_plain_and_auth_tls_sessions(daemons, home, cert):
    d = daemons.start("ftpd", test_ftp.config(home, cert))
    f = test_ftp.plain(d)
    plain_port = port_of(f.sock)
    f.quit()
    end = session_end(d, port=plain_port)
    assert end["socket"] == "ftp" and end["user"] == "alice" and end["reason"] == "quit", end
    assert_plain(end)
    assert_counted(end)

    f = test_ftp.secure(d, cert)
    f.nlst()
    tls_port, tls = port_of(f.sock), negotiated(f.sock)
    f.quit()
    end = session_end(d, port=tls_port)
    assert end["user"] == "alice" and end["reason"] == "quit", end
    assert_tls(end, tls)


def test_ftp_anonymous_session_names_the_user_anonymous(daemons, home, cert):
    d = daemons.start("ftpd", test_ftp.config(home, cert, ftp_extra="anonymous = true"))
    host, port = d.addr("ftp")
    f = ftplib.FTP()
    f.connect(host, port, timeout=30)
    f.login()
    client_port = port_of(f.sock)
    f.close()
    end = session_end(d, port=client_port)
    assert end["user"] == "anonymous" and end["reason"] == "disconnected", end


# -- rpcd -----------------------------------------------------------------------------------------

def curl_rpc(d, cert, scheme):
    host, port = d.addr("rpcs" if scheme == "https" else "rpc")
    return subprocess.run(
        ["curl", "-sS", "--max-time", "30", "--cacert", str(cert[0]), "-u", f"alice:{PASSWORD}",
         "-H", "Content-Type: application/json", "--data",
         '{"jsonrpc":"2.0","id":1,"method":"host.uptime"}', f"{scheme}://{host}:{port}/jsonrpc"],
        capture_output=True, text=True, timeout=60)


def test_rpcd_http_and_https_sessions(daemons, tmp_path, cert):
    d = daemons.start("rpcd", support.rpcd.config(tmp_path, cert))
    out = curl_rpc(d, cert, "http")
    assert out.returncode == 0 and '"result"' in out.stdout, out
    end = session_end(d, socket="rpc")
    assert end["user"] == "alice" and end["reason"] == "disconnected", end
    assert_plain(end)
    assert_counted(end)

    out = curl_rpc(d, cert, "https")
    assert out.returncode == 0 and '"result"' in out.stdout, out
    end = session_end(d, socket="rpcs")
    assert end["user"] == "alice" and end["reason"] == "disconnected", end
    # curl's TLS library picks the suite; the version is what curl and rustls both prefer.
    assert end["tls"] == "TLSv1.3" and end["cipher"].startswith("TLS13_"), end


# -- echo and dns-forwarder -----------------------------------------------------------------------

def test_echo_plain_and_tls_sessions(daemons, cert):
    d = daemons.start("echo", f"""
[listen]
echo = ["127.0.0.1:0"]
echo-tls = ["127.0.0.1:0"]
[tls]
cert = "{cert[0]}"
key = "{cert[1]}"
""")
    with socket.create_connection(d.addr("echo")) as s:
        s.sendall(b"hello\n")
        assert s.recv(100) == b"hello\n"
        plain_port = port_of(s)
    end = session_end(d, port=plain_port)
    assert end["reason"] == "disconnected" and "user" not in end, end
    assert_plain(end)

    raw = socket.create_connection(d.addr("echo-tls"))
    with tls_context(cert).wrap_socket(raw, server_hostname="localhost") as s:
        s.sendall(b"hello\n")
        assert s.recv(100) == b"hello\n"
        tls_port, tls = port_of(s), negotiated(s)
    end = session_end(d, port=tls_port)
    assert end["socket"] == "echo-tls", end
    assert_tls(end, tls)


def test_dns_tcp_session_is_logged(daemons, tmp_path):
    hosts = tmp_path / "hosts"
    hosts.write_text("192.0.2.10 printer.lan\n")
    d = daemons.start("dns-forwarder", f"""
[listen]
dns = ["tcp://127.0.0.1:0"]
[local]
hosts_file = "{hosts}"
[forward]
timeout = 0.5
[[upstream]]
address = "127.0.0.1:9"
""")
    host, port = d.addr("dns")
    out = subprocess.run(["dig", "+tcp", "+short", "-p", str(port), f"@{host}", "printer.lan"],
                         capture_output=True, text=True, timeout=30)
    assert "192.0.2.10" in out.stdout, out
    end = session_end(d, socket="dns")
    assert end["reason"] == "disconnected" and end["tls"] == "no", end


# -- ends the daemon chose, and errors ------------------------------------------------------------

def test_too_many_failed_logins_is_closed_with_why(daemons, tmp_path, home, cert):
    d = daemons.start("ftpd", test_ftp.config(home, cert))
    host, port = d.addr("ftp")
    f = ftplib.FTP()
    f.connect(host, port, timeout=30)
    client_port = port_of(f.sock)
    for _ in range(3):
        try:
            f.login("alice", "wrong")
        except ftplib.error_perm:
            pass
    end = session_end(d, port=client_port)
    assert end["reason"] == "closed" and end["why"] == "too many failed logins", end
    assert "user" not in end and "error" not in end, end


def test_a_failed_tls_handshake_is_an_error_with_its_cause_once(daemons, mailhome, cert):
    d = pop3d(daemons, mailhome, cert)
    with socket.create_connection(d.addr("pop3s")) as s:
        client_port = port_of(s)
        # Not a ClientHello: a client speaking POP3 to the implicit-TLS port.
        s.sendall(b"USER alice\r\n" * 4)
        s.settimeout(10)
        try:
            while s.recv(1024):
                pass
        except OSError:
            pass
    end = session_end(d, port=client_port)
    assert end["reason"] == "error" and end["tls"] == "no", end
    assert end["error"].startswith("TLS handshake: "), end
    assert end["error"].count("TLS handshake") == 1, end
