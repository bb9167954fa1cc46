"""inetkit-imapd with NeoMutt, run in a pseudo-terminal with its commands pushed on start:
it reads one message (\\Seen on the server), saves another to a folder (COPY, then the
original expunged on sync) and quits."""

import os
import pty
import select
import shutil
import time

import pytest

from support.homes import PASSWORD
from support.imap import client, imap, ok  # noqa: F401 (fixtures)

pytestmark = pytest.mark.skipif(not shutil.which("neomutt"), reason="neomutt is not installed")


def run_in_pty(argv, env, timeout=60):
    """Runs argv on a pseudo-terminal until it exits; returns (status, screen output)."""
    pid, fd = pty.fork()
    if pid == 0:
        os.execvpe(argv[0], argv, env)
    out = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            try:
                chunk = os.read(fd, 65536)
            except OSError:  # EIO: the program is gone
                break
            if not chunk:
                break
            out += chunk
    else:
        os.kill(pid, 9)
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    return status, out


def test_neomutt_reads_saves_and_syncs(imap, cert, tmp_path):
    c = client(imap, cert)
    ok(c.create("Archive"))
    c.logout()
    host, port = imap.addr("imap")
    muttrc = tmp_path / "muttrc"
    muttrc.write_text(f"""
set folder = "imap://alice@{host}:{port}/"
set spoolfile = "+INBOX"
set imap_pass = "{PASSWORD}"
set ssl_starttls = yes
set ssl_force_tls = yes
set certificate_file = "{cert[0]}"
set ssl_verify_host = no
set header_cache = ""
set message_cachedir = ""
set sort = mailbox-order
set confirmappend = no
set delete = yes
set quit = yes
set mark_old = no
set move = no
set wait_key = no
push "<display-message><exit><next-entry><save-message>=Archive<enter><sync-mailbox><quit>"
""")
    env = dict(os.environ, TERM="xterm", HOME=str(tmp_path), LANG="C.UTF-8")
    status, screen = run_in_pty(["neomutt", "-n", "-F", str(muttrc)], env)
    assert os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0, screen[-2000:]
    assert b"message 1" in screen and b"message 3" in screen, screen[-2000:]

    c = client(imap, cert)
    ok(c.select("INBOX"))
    inbox = ok(c.fetch("1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
    subjects = [part[1] for part in inbox if isinstance(part, tuple)]
    flags = [part[0] for part in inbox if isinstance(part, tuple)]
    assert [s.strip() for s in subjects] == [b"Subject: message 1", b"Subject: message 3"]
    assert b"\\Seen" in flags[0] and b"\\Seen" not in flags[1], flags
    ok(c.select("Archive"))
    archived = ok(c.fetch("1:*", "(BODY.PEEK[HEADER.FIELDS (SUBJECT)])"))
    assert [p[1].strip() for p in archived if isinstance(p, tuple)] == [b"Subject: message 2"]
    c.logout()
