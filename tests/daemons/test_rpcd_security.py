"""inetkit-rpcd's authentication and authorization: who may call what, audit lines, one password
check per connection and one for many connections while the users file is unchanged, logins
remembered but refused when the address is locked out or the file changed, throttled wrong
passwords, credentials only over TLS unless allowed, bad configs refused."""

import base64
import http.client
import re
import ssl
import subprocess
import time
import xmlrpc.client

import pytest

from support.homes import PASSWORD
from support.rpcd import config, curl, proxy, url
from support.rpcd import rpcd  # noqa: F401 (a fixture)


def test_authentication_and_authorization(rpcd):
    # Anonymous: public methods only; anything else asks for credentials.
    assert proxy(rpcd, user=None).open() == "open\n"
    with pytest.raises(xmlrpc.client.ProtocolError) as e:
        proxy(rpcd, user=None).echo("x")
    assert e.value.errcode == 401
    assert "Basic" in e.value.headers["www-authenticate"]
    with pytest.raises(xmlrpc.client.ProtocolError) as e:
        proxy(rpcd, user=None).does.not_exist()
    assert e.value.errcode == 401
    assert curl(rpcd, '{"jsonrpc":"2.0","method":"echo","params":["x"],"id":1}',
                user=None)[0] == 401
    # Users and groups.
    assert proxy(rpcd).ops.only() == "ops\n"
    with pytest.raises(xmlrpc.client.Fault) as e:
        proxy(rpcd, user="bob").ops.only()
    assert e.value.faultCode == -32004
    assert proxy(rpcd, user="bob").bob.only() == "bob\n"
    rpcd.wait_log(r'call failed: forbidden .*user="bob" method="ops.only"')
    # A wrong password is 401.
    with pytest.raises(xmlrpc.client.ProtocolError) as e:
        proxy(rpcd, password="wrong").echo("x")
    assert e.value.errcode == 401


def test_audit_lines_at_info_builtin_reads_at_debug(rpcd):
    # A successful call of read-only builtins is not worth an INFO line each, logged in or not
    # (a monitor polls them by the thousand, and under systemd each line is a journal entry
    # costing more than the call); configured commands and failures are, and so is who logged
    # in (the connection's end line).
    assert proxy(rpcd, user=None).host.uptime() > 0
    rpcd.wait_log(r'DEBUG .*call ok peer=\S+ user="-" method="host.uptime"')
    assert proxy(rpcd, user=None).open() == "open\n"
    rpcd.wait_log(r'INFO .*call ok peer=\S+ user="-" method="open"')
    assert proxy(rpcd).host.uptime() > 0
    rpcd.wait_log(r'DEBUG .*call ok peer=\S+ user="alice" method="host.uptime"')
    rpcd.wait_log(r'INFO .*session ended .*user=alice')
    assert proxy(rpcd).echo("x") == "x\n"
    rpcd.wait_log(r'INFO .*call ok peer=\S+ user="alice" method="echo"')
    with pytest.raises(xmlrpc.client.Fault):
        proxy(rpcd, user=None).host.uptime("unexpected")
    rpcd.wait_log(r'INFO .*call failed: .*user="-" method="host.uptime"')
    with pytest.raises(xmlrpc.client.Fault):
        proxy(rpcd).host.uptime("unexpected")
    rpcd.wait_log(r'INFO .*call failed: .*user="alice" method="host.uptime"')
    assert not re.search(r'INFO .*call ok peer=\S+ user="[^"]*" method="host.uptime"',
                         rpcd.log())


def test_one_password_check_per_connection(rpcd, tmp_path):
    host, port = rpcd.addr("rpc")
    c = http.client.HTTPConnection(host, port, timeout=30)
    auth = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    body = xmlrpc.client.dumps(("x",), "echo").encode()
    for _ in range(3):
        c.request("POST", "/RPC2", body=body,
                  headers={"Content-Type": "text/xml", "Authorization": auth})
        assert xmlrpc.client.loads(c.getresponse().read())[0] == ("x\n",)
    rpcd.wait_log(r'call ok .*user="alice" method="echo"')
    assert rpcd.log().count("login ok") == 1
    # alice removed from the users file: refused on the same connection once the daemon has
    # looked at the file again.
    users = tmp_path / "users"
    users.write_text("".join(l for l in users.read_text().splitlines(keepends=True)
                             if not l.startswith("alice:")))
    users_file_looked_at_again()
    c.request("POST", "/RPC2", body=body,
              headers={"Content-Type": "text/xml", "Authorization": auth})
    r = c.getresponse()
    r.read()
    assert r.status == 401


# How long a connection's login may be taken on trust after the users file changed: the
# daemon looks at the file at most once a second (login.rs, RECHECK_EVERY). New connections
# see a change at once.
USERS_FILE_RECHECK = 1.0


def users_file_looked_at_again():
    time.sleep(USERS_FILE_RECHECK + 0.2)


def call_on_new_connection(d, user, password, method="echo"):
    """One XML-RPC call over a connection of its own; the HTTP status."""
    host, port = d.addr("rpc")
    c = http.client.HTTPConnection(host, port, timeout=30)
    auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    c.request("POST", "/RPC2", body=xmlrpc.client.dumps(("x",), method).encode(),
              headers={"Content-Type": "text/xml", "Authorization": auth})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


def wait_count(d, text, n, timeout=10.0):
    """Waits until the log shows `text` n times (it is read as it comes); the log."""
    deadline = time.monotonic() + timeout
    while d.log().count(text) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return d.log()


def test_one_password_check_for_many_connections(rpcd, tmp_path):
    # The same credentials on new connections: the password is checked once.
    assert [call_on_new_connection(rpcd, "alice", PASSWORD) for _ in range(3)] == [200] * 3
    assert wait_count(rpcd, "login remembered", 2).count("login ok") == 1
    # Another password is checked (and fails), and does not replace the one remembered.
    assert call_on_new_connection(rpcd, "alice", "guess") == 401
    assert call_on_new_connection(rpcd, "alice", PASSWORD) == 200
    assert wait_count(rpcd, "login remembered", 3).count("login ok") == 1
    # The users file changed: checked again, and a password changed there is refused.
    users = tmp_path / "users"
    users.write_text(users.read_text() + "carol:{PLAIN}other::::::\n")
    assert call_on_new_connection(rpcd, "alice", PASSWORD) == 200
    assert wait_count(rpcd, "login ok", 2).count("login ok") == 2
    bob = users.read_text().replace(f"bob:{{PLAIN}}{PASSWORD}:", "bob:{PLAIN}new password:")
    assert call_on_new_connection(rpcd, "bob", PASSWORD) == 200
    users.write_text(bob)
    assert call_on_new_connection(rpcd, "bob", PASSWORD) == 401
    assert call_on_new_connection(rpcd, "bob", "new password") == 200
    # A removed user is refused at once.
    users.write_text("".join(l for l in users.read_text().splitlines(keepends=True)
                             if not l.startswith("alice:")))
    assert call_on_new_connection(rpcd, "alice", PASSWORD) == 401


def test_a_remembered_login_is_refused_while_its_address_is_locked_out(daemons, tmp_path, cert):
    d = daemons.start("rpcd", config(tmp_path, cert, auth_extra=(
        "failure_delay = 0.01\nmax_failure_delay = 0.02\nmax_failures = 3\nlockout = 600")))
    assert call_on_new_connection(d, "alice", PASSWORD) == 200
    assert [call_on_new_connection(d, "alice", "guess") for _ in range(4)] == [401] * 3 + [429]
    # The right password, remembered from before the lockout: refused all the same.
    assert call_on_new_connection(d, "alice", PASSWORD) == 429
    assert d.log().count("login ok") == 1


def test_a_changed_users_file_is_checked_again_on_a_kept_connection(rpcd, tmp_path):
    host, port = rpcd.addr("rpc")
    users = tmp_path / "users"
    c = http.client.HTTPConnection(host, port, timeout=30)
    body = xmlrpc.client.dumps(("x",), "echo").encode()

    def call(user, password):
        auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        c.request("POST", "/RPC2", body=body,
                  headers={"Content-Type": "text/xml", "Authorization": auth})
        r = c.getresponse()
        r.read()
        return r.status

    assert [call("bob", PASSWORD) for _ in range(2)] == [200, 200]
    assert rpcd.log().count("login ok") == 1
    sock = c.sock
    # Another line added: the file changed, so the password is checked again (and passes).
    users.write_text(users.read_text() + "carol:{PLAIN}other::::::\n")
    users_file_looked_at_again()
    assert call("bob", PASSWORD) == 200
    assert rpcd.log().count("login ok") == 2
    # bob's password changed: the old one is refused on the same connection.
    users.write_text(users.read_text().replace(f"bob:{{PLAIN}}{PASSWORD}:",
                                               "bob:{PLAIN}new password:"))
    users_file_looked_at_again()
    assert call("bob", PASSWORD) == 401
    assert call("bob", "new password") == 200
    assert c.sock is sock, "all on one connection"


def test_wrong_passwords_are_throttled(daemons, tmp_path, cert):
    d = daemons.start("rpcd", config(tmp_path, cert, auth_extra=(
        "failure_delay = 0.01\nmax_failure_delay = 0.02\nmax_failures = 3\nlockout = 600")))
    codes = []
    for _ in range(5):
        with pytest.raises(xmlrpc.client.ProtocolError) as e:
            proxy(d, password="guess").echo("x")
        codes.append(e.value.errcode)
    assert codes[:3] == [401, 401, 401]
    assert codes[3:] == [429, 429]
    # Locked out: even the right password is refused now.
    with pytest.raises(xmlrpc.client.ProtocolError) as e:
        proxy(d).echo("x")
    assert e.value.errcode == 429
    d.wait_log("too many failed logins")


def test_credentials_need_tls_unless_allowed(daemons, tmp_path, cert):
    d = daemons.start("rpcd", config(tmp_path, cert, auth_extra='plaintext = "never"'))
    with pytest.raises(xmlrpc.client.ProtocolError) as e:
        proxy(d).echo("x")
    assert e.value.errcode == 403
    # Public methods still work without credentials on plain HTTP.
    assert proxy(d, user=None).open() == "open\n"
    ctx = ssl.create_default_context(cafile=str(cert[0]))
    p = xmlrpc.client.ServerProxy(url(d, scheme="https").replace("127.0.0.1", "localhost"),
                                  context=ctx, allow_none=True)
    assert p.echo("over tls") == "over tls\n"
    assert "echo" in p.system.listMethods()


def test_bad_config_is_refused(tmp_path, cert):
    from support.inetkit import binary
    conf = tmp_path / "bad.toml"
    conf.write_text('[[method]]\nname = "x"\nargv = ["/bin/echo"]\nfrobnicate = 1\n')
    r = subprocess.run([str(binary("inetkit-rpcd")), "-c", str(conf), "--check-config"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "frobnicate" in r.stderr
    for bad, why in [('argv = ["echo"]', "absolute program path"),
                     ('argv = ["/bin/echo"]\nparams = [{ name = "b", type = "base64" }]',
                      "cannot be a command argument"),
                     ('argv = ["/bin/echo"]\ntimeout = 0', "timeout"),
                     ('argv = ["/bin/echo"]\n[[method]]\nname = "x"\nargv = ["/bin/echo"]',
                      "defined twice")]:
        conf.write_text(f'[[method]]\nname = "x"\n{bad}\n')
        r = subprocess.run([str(binary("inetkit-rpcd")), "-c", str(conf), "--check-config"],
                           capture_output=True, text=True)
        assert r.returncode != 0 and why in r.stderr, (bad, r.stderr)
    conf.write_text('[builtins]\npublic = ["host.nope"]\n')
    r = subprocess.run([str(binary("inetkit-rpcd")), "-c", str(conf), "--check-config"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "host.nope" in r.stderr
