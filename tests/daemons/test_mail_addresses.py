"""Users named by address (Dovecot's `user@example.org`), local parts in any case, the aliases
file and EXPN, with the real clients: poplib, imaplib, smtplib, ftplib, curl, swaks.

The users: demo and alice (plain names), user@example.org and alice@example.org (addresses);
local domains localhost and example.org. alice@example.org is its own user, so it is found
before alice (the exact address first, then the local part).
"""

import base64
import ftplib
import imaplib
import poplib
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from support.homes import PASSWORD, daemon_config, seed, tls_context, user_line, write_users
from support.inetkit import binary

from support.inetkit import free_port
from support.smtp import Sink, inbox, needs_sink, raw, relay_config

USERS = ("demo", "alice", "user@example.org", "alice@example.org")
LOCAL = 'local_domains = ["localhost", "example.org"]\n'

ALIASES = """# test aliases
postmaster: root
root: demo
team: alice, user@example.org,
  demo+lists@localhost
loop1: loop2
loop2: loop1@localhost
broken: nosuchuser
far: carol@far.example
sales@example.org: alice
"""


@pytest.fixture
def home(tmp_path):
    write_users(tmp_path / "users", *(user_line(u) for u in USERS))
    (tmp_path / "aliases").write_text(ALIASES)
    return tmp_path


def mail_config(home, sockets, cert, rest=""):
    return daemon_config(sockets, home / "users", cert, auth="failure_delay = 0\n" + LOCAL,
                         rest=f'[mail]\nroot = "{home / "mail"}"\n{rest}')


def smtp_config(home, cert, aliases=None, relay=""):
    aliases = home / "aliases" if aliases is None else aliases
    return daemon_config(("submission", "submissions"), home / "users", cert,
                         auth="failure_delay = 0\n", rest=f"""[mail]
root = "{home / 'mail'}"
[smtp]
hostname = "mx.test"
local_domains = ["localhost", "example.org"]
spool = "{home / 'spool'}"
aliases = "{aliases}"
[relay]
{relay}
""")


@pytest.fixture
def smtpd(daemons, home, cert):
    return daemons.start("smtp-submit", smtp_config(home, cert))


def smtp_login(d, cert, login):
    host, port = d.addr("submission")
    s = smtplib.SMTP(host, port, timeout=30)
    s.starttls(context=tls_context(cert))
    s.login(login, PASSWORD)
    return s


def subjects(home, user):
    return [m.split(b"Subject: ", 1)[1].split(b"\r\n", 1)[0].decode()
            for m in inbox(home, user) if b"Subject: " in m]


def wait_for_subject(home, user, subject, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if subject in subjects(home, user):
            return
        time.sleep(0.05)
    raise AssertionError(f"{subject!r} not in {user}'s INBOX: {subjects(home, user)}")


def message(subject):
    return f"From: demo@localhost\r\nSubject: {subject}\r\n\r\nhello\r\n".encode()


# -- logins -------------------------------------------------------------------------------------

def test_logins_by_address_and_in_any_case_reach_the_right_mailbox(daemons, home, cert):
    for user in USERS:
        seed(home / "mail", user, message(f"for {user}"), users=home / "users")
    pop3 = daemons.start("pop3d", mail_config(home, ("pop3",), cert))
    imap = daemons.start("imapd", mail_config(home, ("imap",), cert))
    # How each login is typed, and whose mailbox it opens.
    logins = [("user@example.org", "user@example.org"), ("USER@Example.ORG", "user@example.org"),
              ("Demo@localhost", "demo"), ("DEMO", "demo"), ("demo@EXAMPLE.org", "demo"),
              ("alice@example.org", "alice@example.org"), ("Alice@LocalHost", "alice")]
    for typed, owner in logins:
        p = poplib.POP3(*pop3.addr("pop3"), timeout=30)
        p.user(typed)
        p.pass_(PASSWORD)
        body = b"\n".join(p.retr(1)[1])
        assert f"Subject: for {owner}".encode() in body, (typed, body)
        p.quit()

        c = imaplib.IMAP4(*imap.addr("imap"), timeout=30)
        c.login(typed, PASSWORD)
        c.select("INBOX", readonly=True)
        typ, data = c.fetch("1", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        assert typ == "OK" and f"for {owner}".encode() in data[0][1], (typed, data)
        c.logout()
    # Not a local domain: no fallback to the local part.
    p = poplib.POP3(*pop3.addr("pop3"), timeout=30)
    p.user("demo@elsewhere.example")
    with pytest.raises(poplib.error_proto, match="AUTH"):
        p.pass_(PASSWORD)
    # One directory per user, named as the users file names them.
    assert sorted(p.name for p in (home / "mail").iterdir()) == sorted(USERS)


def test_smtp_ftp_and_rpc_logins_by_address(daemons, home, cert, tmp_path):
    smtpd = daemons.start("smtp-submit", smtp_config(home, cert))
    for typed in ("User@Example.org", "Demo@localhost"):
        smtp_login(smtpd, cert, typed).quit()
    with pytest.raises(smtplib.SMTPAuthenticationError):
        smtp_login(smtpd, cert, "nobody@example.org")

    ftproot = tmp_path / "ftproot"
    ftpd = daemons.start("ftpd", daemon_config(
        ("ftp",), home / "users", cert, auth="failure_delay = 0\n" + LOCAL,
        rest=f'[ftp]\nroot = "{ftproot}"\n'))
    for typed, owner in (("Demo@localhost", "demo"), ("USER@example.org", "user@example.org")):
        f = ftplib.FTP()
        f.connect(*ftpd.addr("ftp"), timeout=30)
        f.login(typed, PASSWORD)
        f.storbinary("STOR hello.txt", __import__("io").BytesIO(b"hi\n"))
        f.quit()
        assert (ftproot / owner / "hello.txt").read_bytes() == b"hi\n"

    rpcd = daemons.start("rpcd", daemon_config(("rpc",), home / "users", cert,
                                                auth="failure_delay = 0\n" + LOCAL, rest="""
[[method]]
name = "demo.only"
help = "For demo."
argv = ["/bin/echo", "demo"]
users = ["demo"]
"""))
    host, port = rpcd.addr("rpc")
    body = b'{"jsonrpc": "2.0", "method": "demo.only", "id": 1}'
    for typed, ok in (("Demo@LocalHost", True), ("demo", True), ("user@example.org", False)):
        out = subprocess.run(["curl", "-sS", "--max-time", "30", "-u", f"{typed}:{PASSWORD}",
                              "-H", "Content-Type: application/json", "--data-binary", body,
                              f"http://{host}:{port}/jsonrpc"],
                             capture_output=True, check=True, timeout=60).stdout
        assert (b'"result":"demo\\n"' in out.replace(b" ", b"")) == ok, (typed, out)


# -- smtp-submit: senders and recipients ---------------------------------------------------------

def test_sender_check_by_address_and_case(smtpd, cert):
    cases = {
        "user@example.org": [("user@example.org", 250), ("User+x@EXAMPLE.org", 250),
                             ("user@localhost", 553), ("demo@localhost", 553)],
        "Demo@localhost": [("DEMO@localhost", 250), ("demo@Example.org", 250)],
        # alice@example.org is its own user: alice may not use it, but alice@localhost.
        "alice": [("alice@localhost", 250), ("alice@example.org", 553)],
        "alice@example.org": [("alice@example.org", 250), ("alice@localhost", 553)],
    }
    for login, senders in cases.items():
        s = smtp_login(smtpd, cert, login)
        for sender, want in senders:
            code, reply = s.mail(sender)
            assert code == want, (login, sender, reply)
            s.rset()
        s.quit()
    s = smtp_login(smtpd, cert, "user@example.org")
    code, reply = s.mail("user@example.org@localhost")
    assert (code, reply) == (501, b"5.1.7 Bad sender address syntax: an address has exactly "
                                  b"one '@'.")
    s.quit()


def test_local_delivery_by_address_and_case(smtpd, home, cert):
    s = smtp_login(smtpd, cert, "demo")
    targets = {"DEMO@localhost": "demo", "user@Example.ORG": "user@example.org",
               "Alice@localhost": "alice", "alice@EXAMPLE.org": "alice@example.org",
               "demo+Lists@example.org": "demo"}
    for rcpt, owner in targets.items():
        s.sendmail("demo@localhost", [rcpt], message(f"to {rcpt}"))
        wait_for_subject(home, owner, f"to {rcpt}")
    s.quit()


def test_malformed_recipients_say_why(smtpd):
    r = raw(smtpd, login=False)
    r.login("demo")
    assert r.cmd(b"MAIL FROM:<demo@localhost>").startswith(b"250")
    for rcpt, why in [
        (b"a@b@localhost", b"an address has exactly one '@'"),
        (b"+x@localhost", b"the part before '@' is empty"),
        (b"a\x01b@localhost", b"control character"),
        (b"a" * 65 + b"@localhost", b"longer than 64 bytes"),
        (b"demo@-bad-.example", b"not a domain name"),
        (b"demo@[127.0.0.1]", b"address literals ([...]) are not accepted"),
    ]:
        reply = r.cmd(b"RCPT TO:<" + rcpt + b">")
        assert reply.startswith(b"501 5.1.3 Bad recipient address syntax: ") and why in reply, \
            (rcpt, reply)
    assert r.cmd(b"RCPT TO:<nosuchuser@localhost>") == b"550 5.1.1 No such user here."


# -- aliases ------------------------------------------------------------------------------------

def test_aliases_lists_detail_and_postmaster(smtpd, home, cert):
    s = smtp_login(smtpd, cert, "demo")
    s.sendmail("demo@localhost", ["Team+news@localhost"], message("to the team"))
    for owner in ("alice", "user@example.org", "demo"):
        wait_for_subject(home, owner, "to the team")
    s.sendmail("demo@localhost", ["alice+lists@localhost"], message("detail"))
    wait_for_subject(home, "alice", "detail")
    # The full address's alias comes before the user alice@example.org's local part.
    s.sendmail("demo@localhost", ["sales@example.org"], message("sales"))
    wait_for_subject(home, "alice", "sales")
    # RFC 5321 §4.5.1: postmaster, with a domain or without one.
    s.sendmail("demo@localhost", ["PostMaster@example.org"], message("pm with domain"))
    wait_for_subject(home, "demo", "pm with domain")
    code, _ = s.mail("demo@localhost")
    assert code == 250
    assert s.rcpt("<Postmaster>")[0] == 250
    assert s.data(message("pm bare"))[0] == 250
    wait_for_subject(home, "demo", "pm bare")
    s.quit()


def test_alias_loops_unknown_targets_and_remote_targets_without_smarthost(smtpd):
    r = raw(smtpd, login=False)
    r.login("demo")
    assert r.cmd(b"MAIL FROM:<demo@localhost>").startswith(b"250")
    assert r.cmd(b"RCPT TO:<loop1@localhost>") == \
        b"550 5.4.6 Alias loop: loop1 -> loop2 -> loop1."
    assert r.cmd(b"RCPT TO:<broken@localhost>") == (
        b"550 5.1.1 Alias broken leads to nosuchuser, which is neither a user nor an alias "
        b"here; the postmaster should add one to the aliases file.")
    assert r.cmd(b"RCPT TO:<far@localhost>") == (
        b"550 5.7.1 <far@localhost> leads to the remote address <carol@far.example>, but no "
        b"smarthost is configured.")
    smtpd.wait_log(r"Alias loop: loop1 -> loop2 -> loop1")


@needs_sink
def test_alias_to_a_remote_address_is_relayed(daemons, home, cert, tmp_path):
    port = free_port()
    sink = Sink(tmp_path, port)
    try:
        d = daemons.start("smtp-submit", smtp_config(home, cert, relay=relay_config(port)))
        s = smtp_login(d, cert, "demo")
        s.sendmail("demo@localhost", ["far@localhost"], message("far away"))
        s.quit()
        deadline = time.monotonic() + 30
        while not sink.messages() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert any(b"Subject: far away" in m for m in sink.messages())
    finally:
        sink.stop()


def test_aliases_file_changes_apply_at_once_and_bad_lines_are_reported(daemons, home, cert):
    aliases = home / "aliases"
    aliases.write_text("postmaster: demo\nbad line\n")
    # --check-config names the bad line, and the daemon still starts (it is skipped).
    conf = home / "smtp.toml"
    conf.write_text(smtp_config(home, cert))
    check = subprocess.run([str(binary("inetkit-smtp-submit")), "--check-config", "--config",
                            str(conf)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert f"{aliases}:2: expected 'name: target, …'; line skipped" in check.stderr
    d = daemons.start("smtp-submit", smtp_config(home, cert))
    r = raw(d, login=False)
    r.login("demo")
    assert r.cmd(b"MAIL FROM:<demo@localhost>").startswith(b"250")
    assert r.cmd(b"RCPT TO:<staff@localhost>") == b"550 5.1.1 No such user here."
    d.wait_log(r"aliases:2: expected 'name: target")
    aliases.write_text("postmaster: demo\nstaff: alice, demo\n")
    assert r.cmd(b"RCPT TO:<staff@localhost>") == b"250 2.1.5 Recipient OK."


def test_shipped_aliases_file(daemons, home, cert):
    """etc/aliases parses cleanly; postmaster and friends lead to root, whose mail waits in
    the system mailbox `root` until the sysadmin names a user for it, then goes to that user."""
    shipped = Path(__file__).resolve().parents[2] / "etc" / "aliases"
    text = shipped.read_text()
    aliases = home / "shipped-aliases"
    aliases.write_text(text)
    conf = home / "smtp.toml"
    conf.write_text(smtp_config(home, cert, aliases=aliases))
    check = subprocess.run([str(binary("inetkit-smtp-submit")), "--check-config", "--config",
                            str(conf)], capture_output=True, text=True, timeout=60)
    assert check.returncode == 0 and "warning" not in check.stderr, check.stderr
    d = daemons.start("smtp-submit", smtp_config(home, cert, aliases=aliases))
    r = raw(d, login=False)
    r.login("demo")
    assert r.cmd(b"MAIL FROM:<demo@localhost>").startswith(b"250")
    for rcpt in (b"postmaster@localhost", b"Abuse@localhost", b"root@localhost"):
        assert r.cmd(b"RCPT TO:<" + rcpt + b">") == b"250 2.1.5 Recipient OK.", rcpt
    assert r.cmd(b"DATA").startswith(b"354")
    assert r.cmd(b"From: demo@localhost\r\nSubject: for the postmaster\r\n\r\nhello\r\n.").startswith(b"250")
    d.wait_log(r"delivered .*user=\"?root\"?")
    listed = subprocess.run([str(binary("inetkit")), "mail", "list", "root", "--mail-root",
                             str(home / "mail"), "--users", str(home / "users")],
                            capture_output=True, text=True, timeout=60)
    assert listed.returncode == 0 and len(listed.stdout.splitlines()) == 2, listed
    aliases.write_text(text + "root: demo\n")
    assert r.cmd(b"RSET").startswith(b"250")
    assert r.cmd(b"MAIL FROM:<demo@localhost>").startswith(b"250")
    for rcpt in (b"postmaster@localhost", b"root@example.org", b"abuse@localhost",
                 b"MAILER-DAEMON@localhost"):
        assert r.cmd(b"RCPT TO:<" + rcpt + b">") == b"250 2.1.5 Recipient OK.", rcpt
    assert r.cmd(b"DATA").startswith(b"354")
    assert r.cmd(b"From: demo@localhost\r\nSubject: to demo now\r\n\r\nhello\r\n.").startswith(b"250")
    d.wait_log(r"delivered .*user=\"?demo\"?")


def test_expn_is_not_offered_and_vrfy_is_unchanged(smtpd, cert):
    s = smtp_login(smtpd, cert, "demo")
    assert s.expn("team") == (502, b"5.5.1 EXPN is not available.")
    code, reply = s.verify("team")
    assert code == 252 and b"team" not in reply and b"alice" not in reply
    s.quit()
    out = subprocess.run(["swaks", "--server", "%s:%d" % smtpd.addr("submission"),
                          "--quit-after", "EHLO", "--ehlo", "client.test"],
                         capture_output=True, text=True, timeout=60).stdout
    assert "EXPN" not in out.split("EHLO client.test", 1)[1]


# -- the admin command --------------------------------------------------------------------------

def inetkit_user(users, *args, password=None):
    stdin = None if password is None else password + "\n"
    return subprocess.run([str(binary("inetkit")), "user", *args, "--users", str(users)],
                          input=stdin, stdin=subprocess.DEVNULL if stdin is None else None,
                          capture_output=True, text=True, timeout=60)


def test_user_add_takes_addresses_in_lower_case_and_refuses_malformed_ones(home):
    users = home / "users"
    proc = inetkit_user(users, "add", "New.User@Example.ORG", password=PASSWORD)
    assert proc.returncode == 0, proc.stderr
    assert "stored as new.user@example.org" in proc.stdout
    assert "\nnew.user@example.org:{ARGON2ID}" in users.read_text()
    assert "already exists" in inetkit_user(users, "add", "NEW.user@example.org",
                                            password=PASSWORD).stderr
    before = users.read_text()
    for bad, why in [("a@b@localhost", "at most one '@'"),
                     ("user@example.org@localhost", "at most one '@'"),
                     ("@example.org", "must start with a letter or digit"),
                     ("bob@", "the part after '@' must be a domain name"),
                     ("bob@-x.org", "the part after '@' must be a domain name"),
                     ("a" * 65 + "@example.org", "longer than 64 bytes"),
                     ("bo\x01b@example.org", "only lowercase letters")]:
        proc = inetkit_user(users, "add", bad, password=PASSWORD)
        assert proc.returncode != 0 and why in proc.stderr, (bad, proc.stderr)
    assert users.read_text() == before
    # check finds a user as a login does.
    assert inetkit_user(users, "check", "Demo@localhost", password=PASSWORD).returncode == 0
    assert inetkit_user(users, "check", "NEW.USER@example.org",
                        password=PASSWORD).returncode == 0
    # passwd and del take the name in any case too.
    assert inetkit_user(users, "passwd", "New.User@example.org", password="other").returncode == 0
    assert inetkit_user(users, "check", "new.user@example.org", password="other").returncode == 0
    proc = inetkit_user(users, "del", "NEW.USER@EXAMPLE.ORG")
    assert proc.returncode == 0 and "removed user new.user@example.org" in proc.stdout
    assert "new.user" not in users.read_text()
