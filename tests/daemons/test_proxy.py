"""Proxy mode of imapd and pop3d: one front end, two backends (real inetkit daemons on
127.0.0.1 and 127.0.0.2, each with its own users file and mail root), and users whose record
on the front end says which backend they live on (Dovecot's `host=`, `port=`, `ssl=yes`,
`starttls=yes`). What lands where proves the relay; the backends' logs prove who connected."""

from __future__ import annotations

import base64
import imaplib
import poplib
import re
import subprocess
from pathlib import Path

import pytest

from support.homes import PASSWORD, message, seed, user_line, write_users
from support.inetkit import binary, free_port

FRONT_PASSWORD = "front door"
MASTER_PASSWORD = "master key"
SESSION_STARTED = "session started"


@pytest.fixture(scope="module")
def backend_ca(tmp_path_factory) -> dict:
    """A CA and a backend certificate it signed, for 127.0.0.1, 127.0.0.2 and localhost."""
    d = tmp_path_factory.mktemp("backend-tls")

    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=d)

    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", "30", "-subj", "/CN=inetkit test backend CA",
            "-keyout", "ca.key", "-out", "ca.pem")
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", "/CN=backend", "-keyout", "backend.key", "-out", "backend.csr")
    (d / "ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1,IP:127.0.0.2\n"
                           "basicConstraints=CA:FALSE\n")
    openssl("x509", "-req", "-in", "backend.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
            "-CAcreateserial", "-days", "30", "-extfile", "ext", "-out", "backend.pem")
    return {"ca": d / "ca.pem", "cert": d / "backend.pem", "key": d / "backend.key"}


def backend_users(path: Path) -> Path:
    """alice and bob with the test password, and the master user `proxy`."""
    return write_users(path, user_line("alice"), user_line("bob"),
                       f"proxy:{{PLAIN}}{MASTER_PASSWORD}::::::\n")


def start_backend(daemons, tmp_path: Path, daemon: str, name: str, address: str, tls) -> dict:
    """A backend `daemon` (imapd or pop3d) called `name` on `address`, with both its sockets
    (plain with STARTTLS, and implicit TLS), its own users and mail root."""
    home = tmp_path / name
    (home / "mail").mkdir(parents=True)
    users = backend_users(home / "users")
    plain, implicit = ("imap", "imaps") if daemon == "imapd" else ("pop3", "pop3s")
    config = (f'[listen]\n{plain} = ["{address}:0"]\n{implicit} = ["{address}:0"]\n'
              f'[tls]\ncert = "{tls["cert"]}"\nkey = "{tls["key"]}"\n'
              f'[auth]\nusers_file = "{users}"\nguard_state = ""\nmaster_users = ["proxy"]\n'
              f'[mail]\nroot = "{home / "mail"}"\n')
    d = daemons.start(daemon, config)
    return {"daemon": d, "mail": home / "mail", "users": users,
            "plain": d.addr(plain)[1], "tls": d.addr(implicit)[1]}


def start_front(daemons, tmp_path: Path, daemon: str, users: Path, ca: Path, proxy: str = ""):
    """The front end: proxy mode on, backends' certificates checked against `ca`."""
    mail = tmp_path / "front-mail"
    mail.mkdir(exist_ok=True)
    socket = "imap" if daemon == "imapd" else "pop3"
    config = (f'[listen]\n{socket} = ["127.0.0.1:0"]\n'
              f'[auth]\nusers_file = "{users}"\nguard_state = ""\n'
              f'[mail]\nroot = "{mail}"\n'
              f'[proxy]\nenabled = true\nca_file = "{ca}"\n{proxy}')
    d = daemons.start(daemon, config)
    return d, mail


def front_users(path: Path, b1: dict, b2: dict, password: str = PASSWORD) -> Path:
    """alice on backend 1 over STARTTLS, bob on backend 2 over implicit TLS, carol on a port
    where nothing listens, dave on the front end itself."""
    dead = free_port()
    return write_users(
        path,
        f"alice:{{PLAIN}}{password}::::::proxy host=127.0.0.1 port={b1['plain']} starttls=yes\n",
        f"bob:{{PLAIN}}{password}::::::proxy host=127.0.0.2 port={b2['tls']} ssl=yes\n",
        f"carol:{{PLAIN}}{password}::::::host=127.0.0.1 port={dead}\n",
        f"dave:{{PLAIN}}{password}::::::\n",
    )


def sessions_started(d) -> int:
    return d.log().count(SESSION_STARTED)


def files_in(mail: Path, user: str) -> list[Path]:
    root = mail / user
    return [p for sub in ("new", "cur") for p in (root / sub).glob("*")] if root.exists() else []


@pytest.fixture
def imap_setup(daemons, tmp_path, backend_ca):
    b1 = start_backend(daemons, tmp_path, "imapd", "back1", "127.0.0.1", backend_ca)
    b2 = start_backend(daemons, tmp_path, "imapd", "back2", "127.0.0.2", backend_ca)
    users = front_users(tmp_path / "front-users", b1, b2)
    front, front_mail = start_front(daemons, tmp_path, "imapd", users, backend_ca["ca"])
    return front, front_mail, b1, b2


@pytest.fixture
def pop3_setup(daemons, tmp_path, backend_ca):
    b1 = start_backend(daemons, tmp_path, "pop3d", "back1", "127.0.0.1", backend_ca)
    b2 = start_backend(daemons, tmp_path, "pop3d", "back2", "127.0.0.2", backend_ca)
    seed(b1["mail"], "alice", message(1, "Stored on backend 1.\r\n"), users=b1["users"])
    seed(b2["mail"], "bob", message(2, "Stored on backend 2.\r\n"), users=b2["users"])
    users = front_users(tmp_path / "front-users", b1, b2)
    front, front_mail = start_front(daemons, tmp_path, "pop3d", users, backend_ca["ca"])
    return front, front_mail, b1, b2


def imap(front) -> imaplib.IMAP4:
    return imaplib.IMAP4(*front.addr("imap"), timeout=30)


def pop3(front) -> poplib.POP3:
    return poplib.POP3(*front.addr("pop3"), timeout=30)


# -- IMAP ---------------------------------------------------------------------------------------

def test_imap_sessions_land_on_the_users_backend(imap_setup):
    front, front_mail, b1, b2 = imap_setup
    # alice with LOGIN, relayed to backend 1 over STARTTLS.
    m = imap(front)
    typ, data = m.login("alice", PASSWORD)
    assert typ == "OK" and b"proxied" in data[0]
    # The backend's capabilities after login: what our imapd has only once logged in.
    typ, caps = m.capability()
    assert b"IMAP4REV1" in caps[0].upper() and b"AUTH=PLAIN" not in caps[0]
    typ, _ = m.append("INBOX", None, None, message(10))
    assert typ == "OK"
    m.select("INBOX")
    typ, data = m.search(None, "ALL")
    assert data[0].split() == [b"1"]
    m.logout()
    # bob with AUTHENTICATE PLAIN, relayed to backend 2 over implicit TLS.
    m = imap(front)
    typ, _ = m.authenticate("PLAIN", lambda _: f"\0bob\0{PASSWORD}".encode())
    assert typ == "OK"
    assert m.append("INBOX", None, None, message(20))[0] == "OK"
    m.logout()

    assert len(files_in(b1["mail"], "alice")) == 1 and files_in(b1["mail"], "bob") == []
    assert len(files_in(b2["mail"], "bob")) == 1 and files_in(b2["mail"], "alice") == []
    assert b"message 10" in files_in(b1["mail"], "alice")[0].read_bytes()
    # The front end never touched a mail store.
    assert list(front_mail.iterdir()) == []
    # Its end lines say where each session went, and the bytes moved to and from there.
    ended = front.wait_log(rf"session ended .*user=alice.*proxy=127\.0\.0\.1:{b1['plain']}")
    assert re.search(r"proxy_out=[1-9]\d* proxy_in=[1-9]", ended), ended
    front.wait_log(rf"session ended .*user=bob.*proxy=127\.0\.0\.2:{b2['tls']}")
    # The backends saw TLS.
    b1["daemon"].wait_log(r"session ended .*user=alice.*tls=TLSv1\.3")
    b2["daemon"].wait_log(r"session ended .*user=bob.*tls=TLSv1\.3")


def test_imap_a_wrong_password_never_reaches_a_backend(imap_setup):
    front, _, b1, b2 = imap_setup
    before = (sessions_started(b1["daemon"]), sessions_started(b2["daemon"]))
    m = imap(front)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.login("alice", "not the password")
    m.logout()
    front.wait_log(r"session ended")
    assert (sessions_started(b1["daemon"]), sessions_started(b2["daemon"])) == before


def test_imap_backend_down_is_a_temporary_error(imap_setup):
    front, _, _, _ = imap_setup
    m = imap(front)
    with pytest.raises(imaplib.IMAP4.error, match=r"UNAVAILABLE"):
        m.login("carol", PASSWORD)
    m.logout()
    line = front.wait_log(r"proxy login failed")
    assert "user=carol" in line or "carol" in line
    assert len(re.findall(r"proxy login failed", front.log())) == 1
    # A user without host= is served by the front end itself.
    m = imap(front)
    typ, data = m.login("dave", PASSWORD)
    assert typ == "OK" and b"proxied" not in data[0]
    m.logout()


def test_imap_master_login(daemons, tmp_path, backend_ca):
    b1 = start_backend(daemons, tmp_path, "imapd", "back1", "127.0.0.1", backend_ca)
    b2 = start_backend(daemons, tmp_path, "imapd", "back2", "127.0.0.2", backend_ca)
    # The front end's passwords are not the backends': only the master login can get in.
    users = front_users(tmp_path / "front-users", b1, b2, password=FRONT_PASSWORD)
    secret = tmp_path / "master.secret"
    secret.write_text(MASTER_PASSWORD + "\n")
    front, _ = start_front(daemons, tmp_path, "imapd", users, backend_ca["ca"],
                           proxy=f'master_user = "proxy"\nmaster_password_file = "{secret}"\n')
    m = imap(front)
    assert m.login("alice", FRONT_PASSWORD)[0] == "OK"
    assert m.append("INBOX", None, None, message(30))[0] == "OK"
    m.logout()
    assert len(files_in(b1["mail"], "alice")) == 1
    b1["daemon"].wait_log(r"master user logged in as another user.*master=proxy.*user=alice")
    b1["daemon"].wait_log(r"session ended .*user=alice")


# -- POP3 ---------------------------------------------------------------------------------------

def test_pop3_sessions_land_on_the_users_backend(pop3_setup):
    front, front_mail, b1, b2 = pop3_setup
    p = pop3(front)
    p.user("alice")
    assert p.pass_(PASSWORD).startswith(b"+OK")
    assert p.stat()[0] == 1
    assert b"Stored on backend 1." in p.retr(1)[1]
    p.quit()
    p = pop3(front)
    p.user("bob")
    assert p.pass_(PASSWORD).startswith(b"+OK")
    assert b"Stored on backend 2." in p.retr(1)[1]
    p.quit()
    assert list(front_mail.iterdir()) == []
    front.wait_log(rf"session ended .*user=alice.*proxy=127\.0\.0\.1:{b1['plain']}")
    front.wait_log(rf"session ended .*user=bob.*proxy=127\.0\.0\.2:{b2['tls']}")


def test_pop3_wrong_password_and_backend_down(pop3_setup):
    front, _, b1, b2 = pop3_setup
    before = (sessions_started(b1["daemon"]), sessions_started(b2["daemon"]))
    p = pop3(front)
    p.user("bob")
    with pytest.raises(poplib.error_proto, match=r"\[AUTH\]"):
        p.pass_("not the password")
    p.user("carol")
    with pytest.raises(poplib.error_proto, match=r"\[SYS/TEMP\]"):
        p.pass_(PASSWORD)
    p.quit()
    assert (sessions_started(b1["daemon"]), sessions_started(b2["daemon"])) == before
    front.wait_log(r"proxy login failed")


def test_pop3_master_login_with_auth_plain(daemons, tmp_path, backend_ca):
    b1 = start_backend(daemons, tmp_path, "pop3d", "back1", "127.0.0.1", backend_ca)
    b2 = start_backend(daemons, tmp_path, "pop3d", "back2", "127.0.0.2", backend_ca)
    seed(b2["mail"], "bob", message(2, "Stored on backend 2.\r\n"), users=b2["users"])
    users = front_users(tmp_path / "front-users", b1, b2, password=FRONT_PASSWORD)
    secret = tmp_path / "master.secret"
    secret.write_text(MASTER_PASSWORD + "\n")
    front, _ = start_front(daemons, tmp_path, "pop3d", users, backend_ca["ca"],
                           proxy=f'master_user = "proxy"\nmaster_password_file = "{secret}"\n')
    p = pop3(front)
    token = base64.b64encode(f"\0bob\0{FRONT_PASSWORD}".encode()).decode()
    assert p._shortcmd(f"AUTH PLAIN {token}").startswith(b"+OK")
    assert b"Stored on backend 2." in p.retr(1)[1]
    p.quit()
    b2["daemon"].wait_log(r"master user logged in as another user.*master=proxy.*user=bob")


def test_a_backend_does_not_take_another_users_authzid_from_a_non_master(daemons, tmp_path,
                                                                        backend_ca):
    b1 = start_backend(daemons, tmp_path, "imapd", "back1", "127.0.0.1", backend_ca)
    m = imaplib.IMAP4("127.0.0.1", b1["plain"], timeout=30)
    with pytest.raises(imaplib.IMAP4.error, match="AUTHENTICATIONFAILED"):
        m.authenticate("PLAIN", lambda _: f"alice\0bob\0{PASSWORD}".encode())
    m.logout()


# -- what else turns a login into a temporary error ---------------------------------------------

def test_a_backend_refusing_the_login_is_a_temporary_error(daemons, tmp_path, backend_ca):
    # The user's own login, but the backend knows another password: it refuses.
    b1 = start_backend(daemons, tmp_path, "imapd", "back1", "127.0.0.1", backend_ca)
    b2 = start_backend(daemons, tmp_path, "imapd", "back2", "127.0.0.2", backend_ca)
    users = front_users(tmp_path / "front-users", b1, b2, password=FRONT_PASSWORD)
    front, _ = start_front(daemons, tmp_path, "imapd", users, backend_ca["ca"])
    m = imap(front)
    with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
        m.login("alice", FRONT_PASSWORD)
    m.logout()
    front.wait_log(r"proxy login failed: 127\.0\.0\.1:\d+ refused the login")


def test_a_backend_certificate_from_another_ca_is_refused(daemons, tmp_path, backend_ca, cert):
    b1 = start_backend(daemons, tmp_path, "imapd", "back1", "127.0.0.1", backend_ca)
    b2 = start_backend(daemons, tmp_path, "imapd", "back2", "127.0.0.2", backend_ca)
    users = front_users(tmp_path / "front-users", b1, b2)
    # Trusting only the test suite's other certificate: neither backend's chains to it.
    front, _ = start_front(daemons, tmp_path, "imapd", users, cert[0])
    for user in ("alice", "bob"):
        m = imap(front)
        with pytest.raises(imaplib.IMAP4.error, match="UNAVAILABLE"):
            m.login(user, PASSWORD)
        m.logout()
    front.wait_log(r"proxy login failed: cannot connect to 127\.0\.0\.2:\d+: .*certificate")
    b1["daemon"].wait_log(r"session ended .*reason=error.*TLS handshake")


def test_check_config_reads_the_proxy_settings(tmp_path):
    conf = tmp_path / "imapd.toml"
    conf.write_text(f'[proxy]\nenabled = true\nmaster_user = "proxy"\n'
                    f'master_password_file = "{tmp_path / "missing"}"\n')
    out = subprocess.run([str(binary("inetkit-imapd")), "--check-config", "-c", str(conf)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode != 0
    assert "master_password_file" in out.stderr and "missing" in out.stderr, out.stderr
    (tmp_path / "missing").write_text(MASTER_PASSWORD + "\n")
    out = subprocess.run([str(binary("inetkit-imapd")), "--check-config", "-c", str(conf)],
                         capture_output=True, text=True, timeout=30)
    assert out.returncode == 0, out.stderr
    assert "proxy mode: on, logging in on backends as proxy" in out.stdout
