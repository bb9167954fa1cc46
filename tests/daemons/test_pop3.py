"""inetkit-pop3d with the clients people use: poplib, curl, fetchmail, openssl s_client."""

import os
import poplib
import shutil
import socket
import subprocess
import sys
import threading
import time

import pytest

from support.homes import PASSWORD, daemon_config, message, seed, tls_context
from support.inetkit import binary


def config(users, mail, cert, extra=""):
    """`extra`: lines for the [auth] section."""
    return daemon_config(("pop3", "pop3s"), users, cert, auth=extra,
                         rest=f'[mail]\nroot = "{mail}"\n')


@pytest.fixture
def pop3(daemons, mailhome, cert):
    users, mail = mailhome
    for n in range(1, 4):
        seed(mail, "alice", message(n))
    return daemons.start("pop3d", config(users, mail, cert))


def client(d, cert, stls=True):
    host, port = d.addr("pop3")
    p = poplib.POP3(host, port, timeout=30)
    if stls:
        p.stls(context=tls_context(cert))
    return p


# -- the protocol with poplib -------------------------------------------------------------------

def test_stls_login_stat_list_retr_top_uidl(pop3, cert):
    p = client(pop3, cert)
    assert p.getwelcome().startswith(b"+OK")
    p.user("alice")
    p.pass_(PASSWORD)
    count, size = p.stat()
    assert count == 3
    listing = p.list()[1]
    sizes = [int(line.split()[1]) for line in listing]
    assert sum(sizes) == size
    for n in (1, 2, 3):
        resp, lines, octets = p.retr(n)
        text = b"\r\n".join(lines) + b"\r\n"
        assert text == message(n)
        assert octets - 2 * 0 >= len(text) - 2
        assert resp.startswith(b"+OK %d octets" % sizes[n - 1])
    resp, lines, _ = p.top(2, 0)
    assert lines[-1] == b"" and b"Subject: message 2" in lines
    assert b"This is message 2." not in lines
    uidls = [line.split()[1] for line in p.uidl()[1]]
    assert len(set(uidls)) == 3
    assert p.uidl(2).split()[2] == uidls[1]
    p.quit()


def test_pop3s_implicit_tls(pop3, cert):
    host, port = pop3.addr("pop3s")
    p = poplib.POP3_SSL(host, port, context=tls_context(cert), timeout=30)
    p.user("bob")
    p.pass_(PASSWORD)
    assert p.stat() == (0, 0)
    p.quit()


def test_capa_before_and_after_stls(pop3, cert):
    p = client(pop3, cert, stls=False)
    before = p.capa()
    assert "STLS" in before and "TOP" in before and "UIDL" in before
    assert "RESP-CODES" in before and "PIPELINING" in before
    assert before["SASL"] == ["PLAIN", "LOGIN"]
    p.stls(context=tls_context(cert))
    after = p.capa()
    assert "STLS" not in after, "CAPA after STLS no longer offers STLS"
    assert "USER" in after
    p.quit()


def test_dele_applies_at_quit_and_uidl_is_stable(pop3, cert):
    p = client(pop3, cert)
    p.user("alice"); p.pass_(PASSWORD)
    uidls = {int(l.split()[0]): l.split()[1] for l in p.uidl()[1]}
    p.dele(2)
    assert p.stat()[0] == 2
    with pytest.raises(poplib.error_proto):
        p.retr(2)
    with pytest.raises(poplib.error_proto):
        p.dele(2)
    p.quit()
    p = client(pop3, cert)
    p.user("alice"); p.pass_(PASSWORD)
    assert p.stat()[0] == 2
    after = [l.split()[1] for l in p.uidl()[1]]
    assert after == [uidls[1], uidls[3]], "unique ids survive sessions and deletions"
    p.quit()


def test_rset_undoes_deletions(pop3, cert):
    p = client(pop3, cert)
    p.user("alice"); p.pass_(PASSWORD)
    p.dele(1); p.dele(3)
    assert p.stat()[0] == 1
    p.rset()
    assert p.stat()[0] == 3
    p.quit()
    p = client(pop3, cert)
    p.user("alice"); p.pass_(PASSWORD)
    assert p.stat()[0] == 3
    p.quit()


def test_auth_plain_and_login(pop3, cert):
    import base64
    p = client(pop3, cert)
    resp = p._shortcmd("AUTH PLAIN " + base64.b64encode(f"\0bob\0{PASSWORD}".encode()).decode())
    assert resp.startswith(b"+OK")
    p.quit()
    p = client(pop3, cert)
    p._putcmd("AUTH LOGIN")
    assert p._getline()[0] == b"+ VXNlcm5hbWU6"
    p._putcmd(base64.b64encode(b"alice").decode())
    assert p._getline()[0] == b"+ UGFzc3dvcmQ6"
    p._putcmd(base64.b64encode(PASSWORD.encode()).decode())
    assert p._getline()[0].startswith(b"+OK")
    assert p.stat()[0] == 3
    p.quit()


def test_in_use_when_another_pop3_session_holds_the_maildrop(pop3, cert):
    first = client(pop3, cert)
    first.user("alice"); first.pass_(PASSWORD)
    second = client(pop3, cert)
    second.user("alice")
    with pytest.raises(poplib.error_proto, match=r"\[IN-USE\]"):
        second.pass_(PASSWORD)
    first.quit()
    second.user("alice")
    assert second.pass_(PASSWORD).startswith(b"+OK")
    second.quit()


def test_dots_and_bare_lf_are_sent_stuffed_with_crlf(daemons, mailhome, cert):
    users, mail = mailhome
    body = b"Subject: dots\n\n.leading dot\n..two dots\nplain\n.\nend"
    seed(mail, "alice", body)
    d = daemons.start("pop3d", config(users, mail, cert))
    p = client(d, cert)
    p.user("alice"); p.pass_(PASSWORD)
    expected_size = len(body.replace(b"\n", b"\r\n")) + 2 - 2  # no final newline in the file
    size = int(p.list(1).split()[2])
    assert size == len(body.replace(b"\n", b"\r\n"))
    resp, lines, _ = p.retr(1)
    # poplib undoes the stuffing; the lines must be exactly the message's.
    assert lines == body.split(b"\n")
    p.quit()
    del expected_size


def test_large_message_streams(daemons, mailhome, cert):
    users, mail = mailhome
    big = b"Subject: big\r\n\r\n" + (b"x" * 998 + b"\r\n") * 20_000  # ~20 MB
    seed(mail, "alice", big)
    d = daemons.start("pop3d", config(users, mail, cert))
    p = client(d, cert)
    p.user("alice"); p.pass_(PASSWORD)
    rss_before = d.rss_kib()
    resp, lines, _ = p.retr(1)
    assert b"\r\n".join(lines) + b"\r\n" == big
    assert d.rss_kib() - rss_before < 8 * 1024, "RETR does not hold the message in memory"
    p.quit()


def test_retr_marks_seen_for_imap(pop3, mailhome, cert):
    p = client(pop3, cert)
    p.user("alice"); p.pass_(PASSWORD)
    p.retr(1)
    p.quit()
    inbox = mailhome[1] / "alice"
    names = os.listdir(inbox / "cur") + os.listdir(inbox / "new")
    assert len(names) == 3
    seen = [n for n in names if "S" in n.partition(":2,")[2]]
    assert len(seen) == 1, names


# -- other clients ------------------------------------------------------------------------------

def test_curl_pop3_with_ssl_reqd(pop3, cert):
    host, port = pop3.addr("pop3")
    out = subprocess.run(["curl", "-sS", "--ssl-reqd", "--cacert", str(cert[0]),
                          "-u", f"alice:{PASSWORD}", f"pop3://localhost:{port}/2",
                          "--resolve", f"localhost:{port}:{host}"],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.replace(b"\r\n", b"\n") == message(2).replace(b"\r\n", b"\n")
    host, port = pop3.addr("pop3s")
    out = subprocess.run(["curl", "-sS", "--cacert", str(cert[0]), "-u", f"alice:{PASSWORD}",
                          f"pop3s://localhost:{port}/", "--resolve", f"localhost:{port}:{host}"],
                         capture_output=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split(b"\r\n")[:3] == [b"1 %d" % len(message(1)), b"2 %d" % len(message(2)),
                                             b"3 %d" % len(message(3))]


def test_openssl_s_client_starttls_pop3(pop3, cert):
    host, port = pop3.addr("pop3")
    proc = subprocess.Popen(["openssl", "s_client", "-quiet", "-starttls", "pop3", "-connect",
                             f"{host}:{port}", "-CAfile", str(cert[0]), "-verify_return_error"],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        proc.stdin.write(f"USER alice\r\nPASS {PASSWORD}\r\nSTAT\r\n".encode())
        proc.stdin.flush()
        got = [proc.stdout.readline() for _ in range(3)]
        assert got[0].startswith(b"+OK") and got[1].startswith(b"+OK")
        assert got[2].startswith(b"+OK 3 ")
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.parametrize("keep", [True, False])
def test_fetchmail(pop3, cert, tmp_path, keep):
    host, port = pop3.addr("pop3")
    out = tmp_path / "fetched.mbox"
    rc = tmp_path / "fetchmailrc"
    rc.write_text(
        f'poll localhost via {host} service {port} protocol pop3 uidl\n'
        f'  user "alice" password "{PASSWORD}" is "alice" here\n'
        f'  sslproto "TLS1.2+" sslcertck sslcertfile "{cert[0]}" sslcommonname "localhost"\n'
        f'  {"keep" if keep else "nokeep"} fetchall\n'
        f'  mda "cat >> {out}"\n')
    rc.chmod(0o600)
    env = dict(os.environ, HOME=str(tmp_path), FETCHMAILHOME=str(tmp_path))
    run = subprocess.run(["fetchmail", "-f", str(rc), "--nodetach", "-v"], env=env,
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0, run.stdout + run.stderr
    fetched = out.read_bytes()
    for n in (1, 2, 3):
        assert f"Subject: message {n}".encode() in fetched
    p = client(pop3, cert)
    p.user("alice"); p.pass_(PASSWORD)
    assert p.stat()[0] == (3 if keep else 0)
    p.quit()


# -- bad input ----------------------------------------------------------------------------------

def raw(d, name="pop3"):
    s = socket.create_connection(d.addr(name), timeout=30)
    f = s.makefile("rwb", buffering=0)
    assert f.readline().startswith(b"+OK")
    return s, f


def test_wrong_passwords_are_delayed_then_throttled(daemons, mailhome, cert):
    users, mail = mailhome
    pop3 = daemons.start("pop3d", config(users, mail, cert, extra="max_failures = 3"))
    times = []
    for attempt in range(6):
        s, f = raw(pop3)
        f.write(b"USER alice\r\n")
        f.readline()
        start = time.monotonic()
        f.write(b"PASS wrong%d\r\n" % attempt)
        reply = f.readline()
        times.append(time.monotonic() - start)
        s.close()
        if b"SYS/TEMP" in reply:
            break
        assert reply.startswith(b"-ERR [AUTH]")
    assert times[1] > 0.5, f"failures cost time: {times}"
    assert b"SYS/TEMP" in reply, "repeated failures from one address are throttled"
    assert "alice" in pop3.log() and "127.0.0.1" in pop3.log()


def test_overlong_command_line_gets_an_error_and_the_session_goes_on(pop3):
    s, f = raw(pop3)
    s.sendall(b"USER " + b"a" * (1 << 20) + b"\r\nCAPA\r\n")
    assert f.readline().startswith(b"-ERR")
    assert f.readline().startswith(b"+OK")
    s.close()


def test_binary_garbage_and_unknown_commands(pop3):
    s, f = raw(pop3)
    s.sendall(b"\x00\xff\xfe\x01garbage\r\nAPOP alice 0123\r\n\r\n")
    for _ in range(3):
        assert f.readline().startswith(b"-ERR")
    f.write(b"QUIT\r\n")
    assert f.readline().startswith(b"+OK")
    s.close()


def test_commands_in_the_wrong_state(pop3, cert):
    s, f = raw(pop3)
    for cmd in (b"STAT", b"RETR 1", b"DELE 1", b"LIST", b"PASS x"):
        f.write(cmd + b"\r\n")
        assert f.readline().startswith(b"-ERR"), cmd
    s.close()
    p = client(pop3, cert)
    p.user("alice"); p.pass_(PASSWORD)
    for cmd in ("USER alice", "STLS", "AUTH PLAIN"):
        with pytest.raises(poplib.error_proto):
            p._shortcmd(cmd)
    with pytest.raises(poplib.error_proto):
        p.retr(99)
    with pytest.raises(poplib.error_proto):
        p._shortcmd("TOP 1")
    p.quit()


def test_plaintext_refused_before_tls_when_configured(daemons, mailhome, cert):
    users, mail = mailhome
    d = daemons.start("pop3d", config(users, mail, cert, extra='plaintext = "never"'))
    p = client(d, cert, stls=False)
    assert "USER" not in p.capa() and "SASL" not in p.capa()
    with pytest.raises(poplib.error_proto, match="AUTH"):
        p.user("alice")
    p.stls(context=tls_context(cert))
    p.user("alice")
    assert p.pass_(PASSWORD).startswith(b"+OK")
    p.quit()


def test_pipelined_commands_are_answered_in_order(pop3, cert):
    p = client(pop3, cert)
    p.user("alice"); p.pass_(PASSWORD)
    p.sock.sendall(b"STAT\r\nLIST 1\r\nUIDL 1\r\nNOOP\r\nRETR 99\r\n")
    got = [p._getline()[0] for _ in range(5)]
    assert got[0].startswith(b"+OK 3 ")
    assert got[1].startswith(b"+OK 1 ")
    assert got[2].startswith(b"+OK 1 ")
    assert got[3] == b"+OK"
    assert got[4].startswith(b"-ERR")
    p.quit()


def vanish(p):
    """Drops the connection at once (RST), as a client that crashed would."""
    p.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
    p.file.close()  # the socket's makefile holds it open otherwise
    p.sock.close()


def login_when_free(d, cert, user="alice", timeout=10):
    """Logs in once the server has noticed the previous session is gone ([IN-USE] until then)."""
    deadline = time.monotonic() + timeout
    while True:
        q = client(d, cert)
        q.user(user)
        try:
            q.pass_(PASSWORD)
            return q
        except poplib.error_proto as err:
            q.close()
            if b"IN-USE" not in err.args[0] or time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def test_client_vanishing_mid_retr_deletes_nothing(daemons, mailhome, cert):
    users, mail = mailhome
    seed(mail, "alice", b"Subject: big\r\n\r\n" + b"y" * (8 << 20) + b"\r\n")
    seed(mail, "alice", message(2))
    d = daemons.start("pop3d", config(users, mail, cert))
    p = client(d, cert)
    p.user("alice"); p.pass_(PASSWORD)
    p.dele(2)
    p.sock.sendall(b"RETR 1\r\n")
    p.sock.recv(1000)
    vanish(p)
    q = login_when_free(d, cert)
    assert q.stat()[0] == 2, "no QUIT, no UPDATE: both messages remain"
    q.quit()


def test_client_vanishing_right_after_quit_completes_the_update(daemons, mailhome, cert):
    users, mail = mailhome
    for n in range(1, 21):
        seed(mail, "alice", message(n))
    d = daemons.start("pop3d", config(users, mail, cert))
    p = client(d, cert)
    p.user("alice"); p.pass_(PASSWORD)
    for n in range(1, 11):
        p.dele(n)
    p.sock.sendall(b"QUIT\r\n")
    vanish(p)
    q = login_when_free(d, cert)
    count = q.stat()[0]
    subjects = {q.top(i, 0)[1][2] for i in range(1, count + 1)}
    q.quit()
    assert count == 10
    assert subjects == {f"Subject: message {n}".encode() for n in range(11, 21)}


def test_idle_session_is_disconnected(daemons, mailhome, cert):
    users, mail = mailhome
    d = daemons.start("pop3d", config(users, mail, cert) + "\n[limits]\nidle_timeout = 1\n")
    s, f = raw(d)
    assert f.readline().startswith(b"-ERR Disconnected for inactivity")
    assert f.readline() == b""
    s.close()


def test_missing_user_and_bad_mail_root_fail_cleanly(daemons, mailhome, cert, tmp_path):
    users, mail = mailhome
    blocked = tmp_path / "not-a-dir"
    blocked.write_text("")
    d = daemons.start("pop3d", config(users, blocked, cert))
    p = client(d, cert)
    p.user("nobody")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.pass_(PASSWORD)
    p.user("bob")
    with pytest.raises(poplib.error_proto, match=r"SYS/TEMP"):
        p.pass_(PASSWORD)
    p.quit()


REMOTE_CLIENT = r"""
import poplib, ssl, sys
host, port, cafile, password = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
p = poplib.POP3(host, port, timeout=30)
caps = p.capa()
print("capa", "USER" in caps, "SASL" in caps, "STLS" in caps)
try:
    p.user("alice")
    print("user accepted")
except poplib.error_proto as err:
    print("user refused", err.args[0].decode())
ctx = ssl.create_default_context(cafile=cafile)
ctx.check_hostname = False
p.stls(context=ctx)
p.user("alice")
print("after stls", p.pass_(password).decode())
p.quit()
"""


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("ip"), reason="needs root and iproute2")
def test_plaintext_is_refused_from_a_non_loopback_client_by_default(daemons, mailhome, cert):
    """The default policy: passwords in the clear only from loopback. A client on another
    host (a network namespace) must use STLS first."""
    from support.inetkit import RemoteHost
    users, mail = mailhome
    with RemoteHost() as remote:
        d = daemons.start("pop3d", config(users, mail, cert).replace(
            'pop3 = ["127.0.0.1:0"]', f'pop3 = ["{remote.local}:0"]'))
        host, port = d.addr("pop3")
        out = remote.run([sys.executable, "-c", REMOTE_CLIENT, host, str(port), str(cert[0]),
                          PASSWORD], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        lines = out.stdout.splitlines()
        assert lines[0] == "capa False False True", lines
        assert lines[1].startswith("user refused -ERR [AUTH]"), lines
        assert lines[2].startswith("after stls +OK"), lines


def test_unknown_socket_name_and_tls_without_certificate_are_refused_at_start(tmp_path, mailhome):
    users, mail = mailhome
    for listen, expected in [('bogus = ["127.0.0.1:0"]', "pop3 and pop3s"),
                             ('pop3s = ["127.0.0.1:0"]', "needs TLS")]:
        conf = tmp_path / "pop3d.toml"
        conf.write_text(f'[listen]\n{listen}\n[auth]\nusers_file = "{users}"\n'
                        f'[mail]\nroot = "{mail}"\n')
        out = subprocess.run([str(binary("inetkit-pop3d")), "-c", str(conf)],
                             capture_output=True, text=True, timeout=20,
                             env={"PATH": os.environ["PATH"]})
        assert out.returncode != 0
        assert expected in out.stderr, out.stderr
