"""Users from a directory instead of the users file: a real slapd and a real PostgreSQL
(tests/support/directories.py) behind `[auth.directory]`, logged into with imaplib, poplib,
smtplib, ftplib and xmlrpc.client. Right password, wrong password, unknown user; the
directory stopped mid-test gives each protocol its temporary error, never "wrong password";
started again, logins work again. Also `--check-config` and `inetkit user check --config`."""

import ftplib
import imaplib
import poplib
import smtplib
import subprocess
import xmlrpc.client

import pytest

from support.directories import (ADMIN_DN, ADMIN_PASSWORD, PEOPLE, Postgres, Slapd,
                                 make_ca_and_server_cert)
from support.homes import PASSWORD, _sha512_crypt
from support.inetkit import binary

# carol only ever logs in while the directory is down: never found, so never cached.
USERS = ["alice", "bob", "carol"]
MAX_FAILURES = "max_failures = 1000\n"


def crypt() -> str:
    return "{CRYPT}" + _sha512_crypt()


@pytest.fixture
def pki(tmp_path):
    """(CA, server certificate, key) for slapd's ldaps:// and StartTLS."""
    return make_ca_and_server_cert(tmp_path / "pki")


@pytest.fixture
def slapd(tmp_path, pki):
    why = Slapd.available()
    if why:
        pytest.skip(why)
    users = [(u, crypt(), f"/srv/ftp/{u}", "1G") for u in USERS]
    server = Slapd(tmp_path, users, cert=pki[1:]).start()
    yield server
    server.stop()


@pytest.fixture
def postgres(tmp_path):
    why = Postgres.available()
    if why:
        pytest.skip(why)
    values = ",".join(f"('{u}', '{crypt()}', '1G', 'staff')" for u in USERS)
    server = Postgres(tmp_path, "CREATE TABLE users (name text PRIMARY KEY, password text, "
                      f"quota text, groups text); INSERT INTO users VALUES {values};")
    yield server
    server.stop()


def ldap_section(server, **over):
    keys = {"url": server.url, "base": PEOPLE, "bind_dn": ADMIN_DN,
            "bind_password": ADMIN_PASSWORD, "extra_attributes": '{ quota = "description" }'}
    keys.update(over)
    lines = "".join(f"{k} = {v}\n" if k == "extra_attributes" else f'{k} = "{v}"\n'
                    if not isinstance(v, bool) else f"{k} = {str(v).lower()}\n"
                    for k, v in keys.items())
    return f'[auth.directory]\ntype = "ldap"\n{lines}'


def pg_section(server, connection=None):
    return ('[auth.directory]\ntype = "postgresql"\n'
            f'connection = "{connection or server.connection}"\n'
            'query = "SELECT name, password, quota, groups FROM users WHERE name = $1"\n')


def config(tmp_path, sockets, directory, cache_ttl=0, max_failures=MAX_FAILURES):
    """Every socket in `sockets` on 127.0.0.1:0, a mail and FTP root, the directory."""
    listen = "".join(f'{name} = ["127.0.0.1:0"]\n' for name in sockets)
    (tmp_path / "mail").mkdir(exist_ok=True)
    (tmp_path / "ftp").mkdir(exist_ok=True)
    return (f"[listen]\n{listen}"
            f'[auth]\nusers_file = "{tmp_path / "no-users"}"\nplaintext = "always"\n'
            f"failure_delay = 0\n{max_failures}directory_timeout = 2\ncache_ttl = {cache_ttl}\n"
            f"{directory}")


def imap_config(tmp_path, directory, **kw):
    return config(tmp_path, ["imap"], directory, **kw) + f'[mail]\nroot = "{tmp_path / "mail"}"\n'


def pop3_config(tmp_path, directory, **kw):
    return config(tmp_path, ["pop3"], directory, **kw) + f'[mail]\nroot = "{tmp_path / "mail"}"\n'


def smtp_config(tmp_path, directory):
    return (config(tmp_path, ["submission"], directory)
            + f'[mail]\nroot = "{tmp_path / "mail"}"\n'
            + f'[smtp]\nspool = "{tmp_path / "spool"}"\n')


def ftp_config(tmp_path, directory):
    return config(tmp_path, ["ftp"], directory) + f'[ftp]\nroot = "{tmp_path / "ftp"}"\n'


def rpc_config(tmp_path, directory):
    return config(tmp_path, ["rpc"], directory) + """[[method]]
name = "echo"
help = "Runs /bin/echo with the text."
params = [{ name = "text", type = "string" }]
argv = ["/bin/echo"]
"""


# -- one login per protocol, as the client library reports it -------------------------------

def imap(d, user, password=PASSWORD):
    c = imaplib.IMAP4(*d.addr("imap"), timeout=60)
    try:
        return c.login(user, password)[0]
    except imaplib.IMAP4.error as e:
        return str(e)
    finally:
        c.shutdown()


def pop3(d, user, password=PASSWORD):
    c = poplib.POP3(*d.addr("pop3"), timeout=60)
    try:
        c.user(user)
        return c.pass_(password).decode()
    except poplib.error_proto as e:
        return e.args[0].decode()
    finally:
        c.sock.close()


def smtp(d, user, password=PASSWORD):
    c = smtplib.SMTP(*d.addr("submission"), timeout=60)
    try:
        c.ehlo("client.example")
        return c.login(user, password)[0]
    except smtplib.SMTPAuthenticationError as e:
        return e.smtp_code
    except smtplib.SMTPServerDisconnected:
        return "disconnected"
    finally:
        c.close()


def ftp(d, user, password=PASSWORD):
    c = ftplib.FTP()
    c.connect(*d.addr("ftp"), timeout=60)
    try:
        return c.login(user, password)[:3]
    except ftplib.error_perm as e:
        return str(e)[:3]
    except ftplib.error_temp as e:
        return str(e)[:3]
    finally:
        c.close()


def rpc(d, user, password=PASSWORD):
    host, port = d.addr("rpc")
    proxy = xmlrpc.client.ServerProxy(f"http://{user}:{password}@{host}:{port}/RPC2")
    try:
        proxy.echo("hi")
        return 200
    except xmlrpc.client.ProtocolError as e:
        return e.errcode


LOGINS = {
    "imapd": (imap_config, imap, "OK", "AUTHENTICATIONFAILED", "[UNAVAILABLE]"),
    "pop3d": (pop3_config, pop3, "+OK", "-ERR [AUTH]", "-ERR [SYS/TEMP]"),
    "smtp-submit": (smtp_config, smtp, 235, 535, 454),
    "ftpd": (ftp_config, ftp, "230", "530", "421"),
    "rpcd": (rpc_config, rpc, 200, 401, 503),
}


def matches(reply, expected):
    return expected in reply if isinstance(expected, str) and isinstance(reply, str) \
        else reply == expected


def check_logins(d, login, ok, failed, down, server):
    assert matches(login(d, "alice"), ok), login(d, "alice")
    assert matches(login(d, "ALICE@localhost"), ok)
    assert matches(login(d, "alice", "wrong"), failed), login(d, "alice", "wrong")
    assert matches(login(d, "nobody"), failed)
    server.stop()
    reply = login(d, "carol")
    assert matches(reply, down), reply
    assert not matches(reply, failed)
    d.wait_log("directory unavailable")
    server.start()
    assert matches(login(d, "bob"), ok)
    d.wait_log("directory answers again")


@pytest.mark.parametrize("daemon", LOGINS)
def test_ldap_logins(daemons, tmp_path, slapd, daemon):
    make, login, ok, failed, down = LOGINS[daemon]
    d = daemons.start(daemon, make(tmp_path, ldap_section(slapd)))
    check_logins(d, login, ok, failed, down, slapd)


@pytest.mark.parametrize("daemon", LOGINS)
def test_postgresql_logins(daemons, tmp_path, postgres, daemon):
    make, login, ok, failed, down = LOGINS[daemon]
    d = daemons.start(daemon, make(tmp_path, pg_section(postgres)))
    check_logins(d, login, ok, failed, down, postgres)


def test_ldap_bind_as_the_user(daemons, tmp_path, slapd):
    d = daemons.start("pop3d", pop3_config(tmp_path, ldap_section(slapd, auth_bind=True)))
    assert pop3(d, "alice").startswith("+OK")
    assert pop3(d, "alice", "wrong").startswith("-ERR [AUTH]")
    assert pop3(d, "nobody").startswith("-ERR [AUTH]")
    slapd.stop()
    assert pop3(d, "carol").startswith("-ERR [SYS/TEMP]")
    slapd.start()
    assert pop3(d, "bob").startswith("+OK")


def test_ldaps_and_starttls(daemons, tmp_path, slapd, pki):
    ldaps = ldap_section(slapd, url=slapd.tls_url, ca_file=str(pki[0]))
    d = daemons.start("imapd", imap_config(tmp_path, ldaps))
    assert imap(d, "alice") == "OK"
    d.stop()
    starttls = ldap_section(slapd, starttls=True, ca_file=str(pki[0]))
    d = daemons.start("imapd", imap_config(tmp_path, starttls))
    assert imap(d, "alice") == "OK"
    d.stop()
    # Without the test CA the server's certificate is not trusted: unavailable, not failed.
    # (That StartTLS fails so too shows it did start TLS.)
    for untrusted in (ldap_section(slapd, url=slapd.tls_url), ldap_section(slapd, starttls=True)):
        d = daemons.start("imapd", imap_config(tmp_path, untrusted))
        assert "[UNAVAILABLE]" in imap(d, "alice")
        assert "invalid peer certificate" in d.wait_log("directory unavailable")
        d.stop()


def test_postgresql_over_the_unix_socket(daemons, tmp_path, postgres):
    section = pg_section(postgres, connection=postgres.socket_connection)
    d = daemons.start("imapd", imap_config(tmp_path, section))
    assert imap(d, "alice") == "OK"
    assert "AUTHENTICATIONFAILED" in imap(d, "alice", "wrong")


def test_the_cache_keeps_lookups_never_passwords(daemons, tmp_path, postgres):
    d = daemons.start("imapd", imap_config(tmp_path, pg_section(postgres), cache_ttl=600))
    assert imap(d, "alice") == "OK"
    postgres.stop()
    # alice's record is remembered, her password still checked at every login.
    assert imap(d, "alice") == "OK"
    assert "AUTHENTICATIONFAILED" in imap(d, "alice", "wrong")
    assert "[UNAVAILABLE]" in imap(d, "bob")


def test_the_guard_counts_directory_failures_but_not_outages(daemons, tmp_path, postgres):
    d = daemons.start("pop3d", pop3_config(tmp_path, pg_section(postgres),
                                           max_failures="max_failures = 3\nlockout = 600\n"))
    # An outage is nobody's guess: many logins while it lasts lock nobody out.
    postgres.stop()
    for _ in range(5):
        assert pop3(d, "carol").startswith("-ERR [SYS/TEMP]")
    postgres.start()
    assert pop3(d, "alice").startswith("+OK")
    # Wrong passwords checked against the directory count as in the users file.
    for _ in range(3):
        assert pop3(d, "alice", "wrong").startswith("-ERR [AUTH]")
    assert pop3(d, "alice").startswith("-ERR [SYS/TEMP] Too many failed logins")


def run_inetkit(*args, password=PASSWORD):
    return subprocess.run([str(binary("inetkit")), *args], input=password + "\n",
                          capture_output=True, text=True, timeout=60)


@pytest.mark.parametrize("kind", ["ldap", "postgresql"])
def test_check_config_and_user_check(tmp_path, request, kind):
    server = request.getfixturevalue("slapd" if kind == "ldap" else "postgres")
    section = ldap_section(server) if kind == "ldap" else pg_section(server)
    conf = tmp_path / "imapd.toml"
    conf.write_text(imap_config(tmp_path, section))
    check = subprocess.run([str(binary("inetkit-imapd")), "-c", str(conf), "--check-config"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert "answers" in check.stdout
    ok = run_inetkit("user", "check", "alice", "--config", str(conf))
    assert ok.returncode == 0, ok.stderr
    assert "password ok for alice" in ok.stdout
    wrong = run_inetkit("user", "check", "alice", "--config", str(conf), password="wrong")
    assert wrong.returncode != 0
    assert "wrong password" in wrong.stderr
    unknown = run_inetkit("user", "check", "nobody", "--config", str(conf))
    assert unknown.returncode != 0
    assert "no user nobody" in unknown.stderr
    server.stop()
    check = subprocess.run([str(binary("inetkit-imapd")), "-c", str(conf), "--check-config"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 0
    assert "does not answer" in check.stderr
    down = run_inetkit("user", "check", "alice", "--config", str(conf))
    assert down.returncode != 0
    assert "does not answer" in down.stderr


def test_a_directory_config_that_cannot_work_is_refused(tmp_path):
    conf = tmp_path / "pop3d.toml"
    conf.write_text(pop3_config(tmp_path, '[auth.directory]\ntype = "ldap"\n'
                                'url = "http://example.org"\nbase = "dc=x"\n'))
    check = subprocess.run([str(binary("inetkit-pop3d")), "-c", str(conf), "--check-config"],
                           capture_output=True, text=True, timeout=60)
    assert check.returncode != 0
    assert "expected ldap:// or ldaps://" in check.stderr
