"""Two hosts over one mail root (docs/scale.md): smtp-submit, imapd and pop3d run on this host
and again on a second "host" (a network namespace with a host name of its own), all with
`[mail] watch = "poll"` over one Maildir tree. Sessions on either host see the other's
deliveries, flags, expunges and moves; UIDs are never handed out twice; nothing is lost.

One kernel serves both hosts here, so the shared file system is the local one; what the test
pins down is that the daemons rely only on what a shared file system gives them: locks that
hold between processes that share nothing (`fcntl` open-file-description locks), unique file
names from distinct host names, and change detection without inotify in poll mode."""

import imaplib
import os
import poplib
import re
import shutil
import smtplib
import socket
import threading
import time
from pathlib import Path

import pytest

from support.homes import PASSWORD
from support.inetkit import RemoteHost
from support.imap import ok

pytestmark = pytest.mark.skipif(
    os.geteuid() != 0 or not shutil.which("ip") or not shutil.which("unshare"),
    reason="needs root, ip and unshare to make the second host's namespaces")

# Generous: a poll happens every second; this only bounds a test that would otherwise hang.
SEEN_WITHIN = 30


def config(sockets, users, mail, address, rest=""):
    listen = "".join(f'{name} = ["{address}:0"]\n' for name in sockets)
    # The second host's clients connect from 10.199.x.1, not loopback: plain logins allowed.
    return (f'[listen]\n{listen}[auth]\nusers_file = "{users}"\nfailure_delay = 0\n'
            f'plaintext = "always"\n[mail]\nroot = "{mail}"\nwatch = "poll"\n{rest}')


def smtp_rest(spool, hostname):
    return (f'[smtp]\nhostname = "{hostname}"\nlocal_domains = ["example.org"]\n'
            f'spool = "{spool}"\n')


class Host:
    """One host's daemons: smtp-submit (its own spool), imapd and pop3d."""

    def __init__(self, daemons, users, mail, spool, address, remote=None):
        hostname = remote.hostname if remote else "local.test"
        start = lambda name, sockets, rest="": daemons.start(
            name, config(sockets, users, mail, address, rest), host=remote)
        self.smtp = start("smtp-submit", ("submission",), smtp_rest(spool, hostname))
        self.imap = start("imapd", ("imap",))
        self.pop3 = start("pop3d", ("pop3",))

    def imap_client(self) -> imaplib.IMAP4:
        c = imaplib.IMAP4(*self.imap.addr("imap"), timeout=30)
        c.login("alice", PASSWORD)
        return c

    def send(self, subject: str):
        with smtplib.SMTP(*self.smtp.addr("submission"), timeout=30) as s:
            s.login("alice", PASSWORD)
            s.sendmail("alice@example.org", ["alice@example.org"],
                       f"From: alice@example.org\r\nSubject: {subject}\r\n\r\n{subject}\r\n")


@pytest.fixture
def hosts(daemons, mailhome, tmp_path):
    users, mail = mailhome
    with RemoteHost(index=11) as remote:
        a = Host(daemons, users, mail, tmp_path / "spool-a", "127.0.0.1")
        b = Host(daemons, users, mail, tmp_path / "spool-b", remote.remote, remote)
        yield a, b
        for d in (b.smtp, b.imap, b.pop3):
            d.stop()


def uids(c: imaplib.IMAP4) -> list[int]:
    return [int(u) for u in ok(c.uid("SEARCH", "ALL"))[0].split()]


def subjects(c: imaplib.IMAP4) -> list[str]:
    data = ok(c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
    return sorted(part[1].decode().strip().removeprefix("Subject: ")
                  for part in data if isinstance(part, tuple))


def wait_exists(c: imaplib.IMAP4, count: int) -> None:
    deadline = time.monotonic() + SEEN_WITHIN
    while True:
        ok(c.noop())
        now = len(uids(c))
        if now == count:
            return
        assert time.monotonic() < deadline, f"{now} messages, waiting for {count}"
        time.sleep(0.2)


def inotify_instances(pid: int) -> int:
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir()
               if os.readlink(fd) == "anon_inode:inotify")


def test_poll_mode_watches_nothing_and_inotify_mode_does(daemons, mailhome):
    users, mail = mailhome
    found = {}
    for watch in ("inotify", "poll"):
        d = daemons.start("imapd", config(("imap",), users, mail, "127.0.0.1")
                          .replace('watch = "poll"', f'watch = "{watch}"'))
        c = imaplib.IMAP4(*d.addr("imap"), timeout=30)
        c.login("alice", PASSWORD)
        ok(c.select("INBOX"))
        found[watch] = inotify_instances(d.pid)
        c.logout()
        d.stop()
    # One inotify queue, with a second descriptor its reader thread waits on.
    assert found == {"inotify": 2, "poll": 0}


def test_two_hosts_deliver_append_flag_expunge_and_move_at_once(hosts):
    a, b = hosts
    ia, ib = a.imap_client(), b.imap_client()
    ok(ia.select("INBOX"))
    ok(ib.select("INBOX"))

    # Deliveries on both hosts and APPENDs on both at once: 4 × 10 messages.
    def deliver(host, name):
        for n in range(10):
            host.send(f"{name}-{n}")

    def append(host, name):
        c = host.imap_client()
        for n in range(10):
            ok(c.append("INBOX", None, None,
                        f"Subject: {name}-{n}\r\n\r\n{name}-{n}\r\n".encode()))
        c.logout()

    workers = [threading.Thread(target=f, args=(h, f"{f.__name__}-{tag}"))
               for f in (deliver, append) for h, tag in ((a, "a"), (b, "b"))]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
    wait_exists(ia, 40)
    wait_exists(ib, 40)
    sent = sorted(f"{kind}-{tag}-{n}" for kind in ("deliver", "append") for tag in "ab"
                  for n in range(10))
    assert subjects(ia) == sent and subjects(ib) == sent, "every message, once"
    seen = uids(ia)
    assert seen == uids(ib) and len(set(seen)) == 40, "one UID per message, the same on both"

    # A flag set on host A reaches an IDLE session on host B.
    idle = socket.create_connection(b.imap.addr("imap"), timeout=SEEN_WITHIN)
    f = idle.makefile("rwb")
    f.readline()
    for line in (b"i1 LOGIN alice \"correct horse\"\r\n", b"i2 SELECT INBOX\r\n"):
        f.write(line)
        f.flush()
        while not f.readline().startswith(line[:3]):
            pass
    f.write(b"i3 IDLE\r\n")
    f.flush()
    assert f.readline().startswith(b"+ ")
    ok(ia.uid("STORE", str(seen[0]), "+FLAGS", r"(\Flagged)"))
    update = f.readline()
    assert re.match(rb"\* 1 FETCH \(.*FLAGS \(.*\\Flagged", update), update
    f.write(b"DONE\r\n")
    f.flush()
    assert f.readline().startswith(b"i3 OK")
    idle.close()

    # Expunged on B, gone on A.
    gone = seen[1:6]
    data = ok(ib.uid("FETCH", ",".join(map(str, gone)), "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
    expunged = {part[1].decode().strip().removeprefix("Subject: ")
                for part in data if isinstance(part, tuple)}
    assert len(expunged) == 5
    ok(ib.uid("STORE", ",".join(map(str, gone)), "+FLAGS", r"(\Deleted)"))
    ok(ib.expunge())
    wait_exists(ia, 35)

    # Both hosts move ten messages each into a folder host B creates, at once.
    ok(ib.create("Archive"))
    left = [u for u in seen if u not in gone]
    moves = {ia: left[:10], ib: left[10:20]}
    movers = [threading.Thread(target=lambda c, u: ok(c.uid("MOVE", ",".join(map(str, u)),
                                                            "Archive")), args=(c, u))
              for c, u in moves.items()]
    for m in movers:
        m.start()
    for m in movers:
        m.join()
    wait_exists(ia, 15)
    wait_exists(ib, 15)
    archive = b.imap_client()
    ok(archive.select("Archive"))
    archived = uids(archive)
    assert len(archived) == 20 and len(set(archived)) == 20
    assert sorted(subjects(archive) + subjects(ia)) == sorted(set(sent) - expunged), \
        "moved or left, nothing lost"

    # POP3 on host B counts what IMAP on host A shows.
    p = poplib.POP3(*b.pop3.addr("pop3"), timeout=30)
    p.user("alice")
    p.pass_(PASSWORD)
    assert p.stat()[0] == 15
    p.quit()

    # A UID is never handed out twice: a new message gets one above every UID seen so far.
    b.send("late")
    wait_exists(ia, 16)
    newest = max(uids(ia))
    assert newest > max(seen)
    for c in (ia, ib, archive):
        c.logout()
