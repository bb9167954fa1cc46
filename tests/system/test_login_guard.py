"""System test of the login guard the daemons share: /run/inetkit/login-guard, made by the
package's tmpfiles.d entry, written through the shipped units' sandboxes by the static-user
pop3d and the DynamicUser rpcd alike, so failed logins in one lock the address out of the
other."""

from __future__ import annotations

import poplib
import threading
import xmlrpc.client

import pytest

from .container import busy_ports

STATE = "/run/inetkit/login-guard"
PASSWORD = "guard system test"
SOCKETS = ("inetkit-pop3d.socket", "inetkit-rpcd.socket")
SERVICES = ("inetkit-pop3d.service", "inetkit-rpcd.service")


def forget_failures(c):
    """Empties the state file: the daemons start it over (running ones too, at their next
    login). Every system test logs in from 127.0.0.1 on the same host, so all of them count
    in this one table."""
    c.sh(f": > {STATE}")


@pytest.fixture(scope="module")
def guarded(inetkit):
    busy = busy_ports([110, 8000])
    assert not busy, f"something on the host holds {busy}; stop it"
    c = inetkit
    # The wrong passwords of the tests before this one (test_imap's, in imapd) count against
    # 127.0.0.1 for failure_window, here as well: the budget of max_failures starts full only
    # from an empty table. (Without this, rpcd refused the 10th guess below with 429.)
    forget_failures(c)
    c.run("inetkit", "user", "add", "gus", input=PASSWORD + "\n")
    c.systemctl("enable", "--now", *SOCKETS)
    yield c
    c.systemctl("disable", "--now", *SOCKETS, *SERVICES)
    forget_failures(c)
    c.run("inetkit", "user", "del", "gus", check=False)


def test_the_package_makes_the_state_file(guarded):
    out = guarded.run("stat", "-c", "%a %U %G", "/run/inetkit", STATE).stdout.splitlines()
    assert out == ["2770 inetkit inetkit", "660 inetkit inetkit"]


def test_failures_in_rpcd_lock_the_address_out_of_pop3d(guarded):
    # Both log in fine first.
    p = poplib.POP3("127.0.0.1", 110, timeout=60)
    p.user("gus")
    p.pass_(PASSWORD)
    p.quit()
    ok = xmlrpc.client.ServerProxy(f"http://gus:{PASSWORD}@127.0.0.1:8000/RPC2")
    assert "system.listMethods" in ok.system.listMethods()

    # max_failures (10) wrong passwords through rpcd, at once, so the growing delays overlap.
    codes = []

    def guess(i):
        wrong = xmlrpc.client.ServerProxy(f"http://gus:wrong{i}@127.0.0.1:8000/RPC2")
        try:
            wrong.system.listMethods()
        except xmlrpc.client.ProtocolError as e:
            codes.append(e.errcode)

    threads = [threading.Thread(target=guess, args=(i,)) for i in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    assert sorted(codes) == [401] * 10

    # pop3d (the static inetkit user) reads what rpcd (a transient user) wrote: locked out.
    p = poplib.POP3("127.0.0.1", 110, timeout=60)
    p.user("gus")
    with pytest.raises(poplib.error_proto, match=r"SYS/TEMP"):
        p.pass_(PASSWORD)
    journal = guarded.journal(*SERVICES, lines=200)
    assert "login guard shared through its state file" in journal
    assert "unusable" not in journal, journal

    forget_failures(guarded)
    p = poplib.POP3("127.0.0.1", 110, timeout=60)
    p.user("gus")
    p.pass_(PASSWORD)
    p.quit()
