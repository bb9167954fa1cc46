"""inetkit-smtp-submit's spool: a message accepted with 250 is delivered exactly once across a
crash or kill -9, an expired message bounces, a full spool answers 452 and never 250."""

import os
import signal
import subprocess
import time

import pytest

from support.inetkit import free_port
from support.smtp import (client, config, inbox, queued_id, raw, relay_config, send, spool_files,
                          wait_delivered)
from support.smtp import home  # noqa: F401 (fixtures)


@pytest.mark.parametrize("point", ["before-delivery", "after-delivery"])
def test_crash_after_250_delivers_exactly_once(daemons, home, cert, point):
    d = daemons.start("smtp-submit", config(home, cert), env={"INETKIT_TEST_CRASH": point})
    s = client(d, cert)
    queue_id = send(s, rcpts=["bob@example.org", "alice@example.org"])
    assert d.wait(timeout=30) != 0, "the daemon died at the crash point"
    assert f"{queue_id}.env" in spool_files(home), "the accepted message survived"
    d2 = daemons.start("smtp-submit", config(home, cert))
    wait_delivered(d2, queue_id)
    assert len(inbox(home, "bob")) == 1, "delivered exactly once"
    assert len(inbox(home, "alice")) == 1
    assert spool_files(home) == []


def test_kill_9_after_250(daemons, home, cert):
    d = daemons.start("smtp-submit", config(home, cert))
    s = client(d, cert)
    send(s)
    os.kill(d.pid, signal.SIGKILL)
    d.wait()
    # Whether or not delivery began before the kill, the restart finishes it, once.
    daemons.start("smtp-submit", config(home, cert))
    deadline = time.monotonic() + 30
    while spool_files(home) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert spool_files(home) == []
    assert len(inbox(home, "bob")) == 1


def test_expired_message_bounces(daemons, home, cert):
    """A smarthost that stays down past max_lifetime: the sender gets a DSN saying so."""
    relay = relay_config(free_port()) + "max_lifetime = 0\n"
    d = daemons.start("smtp-submit", config(home, cert, relay=relay))
    s = client(d, cert)
    queue_id = send(s, rcpts=["carol@far.example"])
    s.quit()
    wait_delivered(d, queue_id)
    [bounce] = inbox(home, "alice")
    assert b"Final-Recipient: rfc822; carol@far.example" in bounce
    assert b"Status: 5.4.7" in bounce and b"delivery time expired" in bounce
    assert spool_files(home) == []


@pytest.fixture
def small_spool(home):
    """The spool on a 256 KiB tmpfs, so that it fills up."""
    spool = home / "spool"
    spool.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(spool)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")
    yield spool
    subprocess.run(["umount", "-l", str(spool)], check=True)


def test_full_spool_gives_452_never_250(daemons, home, cert, small_spool):
    d = daemons.start("smtp-submit", config(home, cert))
    r = raw(d)
    assert r.cmd(b"MAIL FROM:<alice@example.org>").startswith(b"250")
    assert r.cmd(b"RCPT TO:<bob@example.org>").startswith(b"250")
    assert r.cmd(b"DATA").startswith(b"354")
    line = b"y" * 998 + b"\r\n"
    r.send(b"Subject: too big for the disk\r\n\r\n" + line * 600 + b".\r\n")
    assert r.reply().startswith(b"452 4.3.1")
    assert spool_files(home) == [], "nothing of it is left"
    # With the space back, the next message is accepted and delivered.
    assert r.cmd(b"MAIL FROM:<alice@example.org>").startswith(b"250")
    assert r.cmd(b"RCPT TO:<bob@example.org>").startswith(b"250")
    assert r.cmd(b"DATA").startswith(b"354")
    queue_id = queued_id(r.cmd(b"Subject: small\r\n\r\nfits\r\n."))
    wait_delivered(d, queue_id)
    [msg] = inbox(home, "bob")
    assert b"Subject: small" in msg
