"""The login guard and the password checks every daemon shares (inetkit_auth), through the real
daemons: parallel guessing from one address, one lockout across daemons through the shared
state file, and empty passwords refused everywhere."""

import base64
import ftplib
import imaplib
import poplib
import re
import socket
import threading
import xmlrpc.client

import pytest

from support.homes import PASSWORD, daemon_config, user_line, write_users

# tests/support gives every daemon it starts a state file of its own in the test's directory
# (never the host's /run/inetkit): tests stay apart. These set `guard_state` themselves.
ALONE = 'guard_state = ""\n'


@pytest.fixture
def users(tmp_path):
    """alice (SHA512-CRYPT), bob (PLAIN) and, on line 3, dave with an empty {PLAIN} value."""
    (tmp_path / "mail").mkdir()
    return write_users(tmp_path / "users", user_line("alice", "SHA512-CRYPT"), user_line("bob"),
                       "dave:{PLAIN}::::::\n")


def config(socket, users, extra="", rest=""):
    """`socket` on 127.0.0.1:0, no failure delay, `extra` in [auth]."""
    return daemon_config((socket,), users, auth="failure_delay = 0\n" + extra, rest=rest)


def pop3_config(users, extra=""):
    return config("pop3", users, extra, rest=f'[mail]\nroot = "{users.parent / "mail"}"\n')


def imap_config(users, extra=""):
    return config("imap", users, extra, rest=f'[mail]\nroot = "{users.parent / "mail"}"\n')


def ftp_config(users):
    return config("ftp", users, rest=f'[ftp]\nroot = "{users.parent / "ftproot"}"\n')


def rpc_config(users):
    return config("rpc", users, rest="""[[method]]
name = "echo"
help = "Runs /bin/echo with the text."
params = [{ name = "text", type = "string" }]
argv = ["/bin/echo"]
""")


def pop3_pass(d, user, password):
    """USER/PASS on a fresh connection; the reply to PASS."""
    s = socket.create_connection(d.addr("pop3"), timeout=60)
    f = s.makefile("rwb", buffering=0)
    try:
        assert f.readline().startswith(b"+OK")
        f.write(b"USER %s\r\n" % user.encode())
        assert f.readline().startswith(b"+OK")
        f.write(b"PASS %s\r\n" % password.encode())
        return f.readline()
    finally:
        s.close()


def imap_login(d, user, password):
    """LOGIN on a fresh connection: ("OK", ...) or the NO reply's text."""
    c = imaplib.IMAP4(*d.addr("imap"), timeout=60)
    try:
        return c.login(user, password)[0]
    except imaplib.IMAP4.error as e:
        return str(e)
    finally:
        c.shutdown()


def failures_logged(d):
    return sum("login failed" in line for line in d.log().splitlines())


def test_parallel_wrong_logins_check_at_most_max_failures(daemons, users):
    # 40 connections from one fresh address send PASS at the same moment, one of them with
    # the right password: at most max_failures (10) wrong passwords are checked, the rest are
    # refused without a check, and once the address is locked out the right one is refused.
    # All 40 wait to log in at once: above the default cap of sessions not logged in.
    limits = "[limits]\nmax_unauthenticated_per_ip = 40\n"
    pop3 = daemons.start("pop3d", pop3_config(users) + limits)
    barrier = threading.Barrier(40)
    replies = [None] * 40

    def guess(i):
        s = socket.create_connection(pop3.addr("pop3"), timeout=60)
        f = s.makefile("rwb", buffering=0)
        try:
            f.readline()
            f.write(b"USER alice\r\n")
            f.readline()
            barrier.wait(timeout=60)
            password = PASSWORD if i == 20 else f"guess{i}"
            f.write(b"PASS %s\r\n" % password.encode())
            replies[i] = f.readline()
        finally:
            s.close()

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(40)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    checked = [r for r in replies if r.startswith(b"-ERR [AUTH]")]
    refused = [r for r in replies if r.startswith(b"-ERR [SYS/TEMP]")]
    accepted = [r for r in replies if r.startswith(b"+OK")]
    assert len(checked) == 10, replies
    assert len(checked) + len(refused) + len(accepted) == 40, replies
    assert len(accepted) <= 1
    pop3.wait_log("too many failed logins: address locked out")
    assert failures_logged(pop3) == 10
    assert pop3_pass(pop3, "alice", PASSWORD).startswith(b"-ERR [SYS/TEMP]")
    # Counted in the file tests/support set for this daemon.
    own = users.parent / "login-guard-pop3d"
    assert own.stat().st_size > 0
    pop3.wait_log("login guard shared through its state file path=" + re.escape(str(own)))


def test_pop3d_and_imapd_share_one_lockout(daemons, users, tmp_path):
    # Two daemons on one state file, as on a host with /run/inetkit: failures in either count
    # for both, and the lockout holds in both.
    shared = f'max_failures = 3\nguard_state = "{tmp_path / "login-guard"}"\n'
    pop3 = daemons.start("pop3d", pop3_config(users, shared))
    imap = daemons.start("imapd", imap_config(users, shared))
    assert pop3_pass(pop3, "alice", "guess1").startswith(b"-ERR [AUTH]")
    assert "AUTHENTICATIONFAILED" in imap_login(imap, "alice", "guess2")
    assert pop3_pass(pop3, "alice", "guess3").startswith(b"-ERR [AUTH]")
    # The third failure (in pop3d) locked the address out of imapd too.
    assert "UNAVAILABLE" in imap_login(imap, "bob", PASSWORD)
    assert pop3_pass(pop3, "bob", PASSWORD).startswith(b"-ERR [SYS/TEMP]")
    assert (tmp_path / "login-guard").stat().st_mode & 0o777 == 0o660
    pop3.wait_log("login guard shared through its state file")
    imap.wait_log("login guard shared through its state file")


def test_each_daemon_alone_without_the_shared_file(daemons, users):
    # The same pair with a guard each (the state file disabled): each counts its own.
    pop3 = daemons.start("pop3d", pop3_config(users, "max_failures = 2\n" + ALONE))
    imap = daemons.start("imapd", imap_config(users, "max_failures = 2\n" + ALONE))
    for attempt in range(2):
        assert pop3_pass(pop3, "alice", f"guess{attempt}").startswith(b"-ERR [AUTH]")
    assert pop3_pass(pop3, "bob", PASSWORD).startswith(b"-ERR [SYS/TEMP]")
    assert imap_login(imap, "bob", PASSWORD) == "OK"
    assert not list(users.parent.glob("login-guard*"))


def test_empty_plain_password_is_refused_and_reported(daemons, users):
    """dave's line is `dave:{PLAIN}::::::`: no password, empty or not, logs him in, in any
    daemon; and each daemon says which line is wrong when it reads the file."""
    warning = "users:3: user dave: empty {PLAIN} password; this user cannot log in"

    pop3 = daemons.start("pop3d", pop3_config(users))
    p = poplib.POP3(*pop3.addr("pop3"), timeout=60)
    # AUTH LOGIN, the password an empty response ("=").
    assert p._shortcmd("AUTH LOGIN").startswith(b"+ ")
    assert p._shortcmd(base64.b64encode(b"dave").decode()).startswith(b"+ ")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p._shortcmd("=")
    p.quit()
    assert pop3_pass(pop3, "dave", "anything").startswith(b"-ERR [AUTH]")
    pop3.wait_log(warning)

    imap = daemons.start("imapd", imap_config(users))
    assert "AUTHENTICATIONFAILED" in imap_login(imap, "dave", "")
    # bob's password is not empty, but an empty one is refused for him as well.
    assert "AUTHENTICATIONFAILED" in imap_login(imap, "bob", "")
    imap.wait_log(warning)

    ftpd = daemons.start("ftpd", ftp_config(users))
    f = ftplib.FTP()
    f.connect(*ftpd.addr("ftp"), timeout=60)
    with pytest.raises(ftplib.error_perm, match="530"):
        f.login("dave", "")
    f.close()
    ftpd.wait_log(warning)

    rpcd = daemons.start("rpcd", rpc_config(users))
    host, port = rpcd.addr("rpc")
    proxy = xmlrpc.client.ServerProxy(f"http://dave:@{host}:{port}/RPC2")
    with pytest.raises(xmlrpc.client.ProtocolError) as e:
        proxy.echo("x")
    assert e.value.errcode == 401
    rpcd.wait_log(warning)
    # The file is read again when it changes: a real password for dave works at once.
    users.write_text(users.read_text().replace("dave:{PLAIN}:", "dave:{PLAIN}davepw:"))
    ok = xmlrpc.client.ServerProxy(f"http://dave:davepw@{host}:{port}/RPC2")
    assert ok.echo("x") == "x\n"
