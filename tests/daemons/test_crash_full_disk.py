"""A full file system under every daemon that writes: a 2 MiB tmpfs as the mail root (imapd
APPEND and COPY), as the spool and mail root (smtp-submit DATA), as the FTP root (STOR).

Each answers with its protocol's error, leaves nothing half-written that a client can see,
and serves the next command on the same connection."""

import ftplib
import imaplib
import io
import re
import smtplib
import subprocess
import time
from pathlib import Path

import pytest

from support.homes import PASSWORD, user_line, write_users
from support.imap import ok


@pytest.fixture
def small(tmp_path):
    """A 2 MiB tmpfs (we run as root in CI; elsewhere the mount is refused and we skip)."""
    path = tmp_path / "small"
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(path)],
                             capture_output=True, text=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs: {mounted.stderr.strip()}")
    yield path
    subprocess.run(["umount", "-l", str(path)], check=True)


@pytest.fixture
def users(tmp_path):
    return write_users(tmp_path / "users", user_line("alice"), user_line("bob"))


def message(name: str, size: int) -> bytes:
    head = f"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: {name}\r\n\r\n".encode()
    line = b"x" * 998 + b"\r\n"
    return head + line * (size // len(line) + 1)


def files(folder: Path):
    """What a client could ever see of a folder, and what a writer left in tmp/."""
    return {sub: sorted(p.name for p in (folder / sub).iterdir()) for sub in ("tmp", "new", "cur")}


# -- imapd -------------------------------------------------------------------------------------

def imapd(daemons, users, cert, mail):
    return daemons.start("imapd", f"""
[listen]
imap = ["127.0.0.1:0"]
[tls]
cert = "{cert[0]}"
key = "{cert[1]}"
[auth]
users_file = "{users}"
failure_delay = 0
[mail]
root = "{mail}"
""")


def imap_login(d):
    c = imaplib.IMAP4(*d.addr("imap"), timeout=30)
    c.login("alice", PASSWORD)
    return c


def test_append_on_a_full_disk(daemons, users, cert, small):
    mail = small / "mail"
    d = imapd(daemons, users, cert, mail)
    c = imap_login(d)
    ok(c.append("INBOX", None, None, message("fits", 100_000)))
    before = files(mail / "alice")

    typ, data = c.append("INBOX", None, None, message("too big", 3_000_000))
    assert typ == "NO" and data[0].startswith(b"[OVERQUOTA]"), (typ, data)
    assert files(mail / "alice") == before, "nothing of it is left, not even in tmp/"
    assert ok(c.select("INBOX")) == [b"1"]

    # Still serving, and the space the failed message took is free again.
    ok(c.noop())
    ok(c.append("INBOX", None, None, message("fits too", 100_000)))
    assert ok(c.select("INBOX")) == [b"2"]


def test_copy_on_a_full_disk_leaves_the_target_unchanged(daemons, users, cert, small):
    """UID COPY 1:3 where only the first copy fits: NO [OVERQUOTA], and Archive is as it was
    (RFC 3501 §6.4.7), not holding the first message."""
    mail = small / "mail"
    d = imapd(daemons, users, cert, mail)
    c = imap_login(d)
    for n in range(3):
        ok(c.append("INBOX", None, None, message(f"big {n}", 450_000)))
    ok(c.create("Archive"))
    ok(c.append("Archive", None, None, message("already there", 1000)))
    status = ok(c.status("Archive", "(MESSAGES UIDNEXT UIDVALIDITY)"))
    archive = files(mail / "alice" / ".Archive")
    ok(c.select("INBOX"))

    typ, data = c.uid("COPY", "1:3", "Archive")
    assert typ == "NO" and data[0].startswith(b"[OVERQUOTA]"), (typ, data)
    assert files(mail / "alice" / ".Archive") == archive
    assert ok(c.status("Archive", "(MESSAGES UIDNEXT UIDVALIDITY)")) == status

    ok(c.noop())
    ok(c.uid("COPY", "1", "Archive"))
    # imaplib files the tagged OK's response code under its name.
    _, [copyuid] = c.response("COPYUID")
    assert copyuid.split()[1:] == [b"1", status_uidnext(status)], copyuid
    assert b"MESSAGES 2" in ok(c.status("Archive", "(MESSAGES)"))[0]


def status_uidnext(status) -> bytes:
    return re.search(rb"UIDNEXT (\d+)", status[0]).group(1)


# -- smtp-submit -------------------------------------------------------------------------------

def test_data_on_a_full_disk(daemons, users, cert, small):
    spool, mail = small / "spool", small / "mail"
    d = daemons.start("smtp-submit", f"""
[listen]
submission = ["127.0.0.1:0"]
[tls]
cert = "{cert[0]}"
key = "{cert[1]}"
[auth]
users_file = "{users}"
failure_delay = 0
[mail]
root = "{mail}"
[smtp]
hostname = "mx.test"
local_domains = ["localhost", "example.org"]
spool = "{spool}"
""")
    s = smtplib.SMTP(*d.addr("submission"), timeout=30)
    s.ehlo("client.test")
    s.login("alice", PASSWORD)
    with pytest.raises(smtplib.SMTPDataError) as refused:
        s.sendmail("alice@example.org", ["bob@example.org"], message("too big", 3_000_000))
    assert refused.value.smtp_code == 452, refused.value
    assert refused.value.smtp_error.startswith(b"4.3.1"), refused.value
    assert [p for p in spool.rglob("*") if p.is_file()] == [], "nothing spooled"
    assert not (mail / "bob").exists() or files(mail / "bob") == {"tmp": [], "new": [], "cur": []}

    # Still serving: the next message goes through and is delivered.
    assert s.noop()[0] == 250
    s.sendmail("alice@example.org", ["bob@example.org"], message("small", 1000))
    deadline = time.monotonic() + 30
    while not (mail / "bob" / "new").is_dir() or not files(mail / "bob")["new"]:
        assert time.monotonic() < deadline, "never delivered"
        time.sleep(0.05)
    [delivered] = files(mail / "bob")["new"]
    assert b"Subject: small" in (mail / "bob" / "new" / delivered).read_bytes()
    s.quit()


# -- ftpd --------------------------------------------------------------------------------------

def test_stor_on_a_full_disk(daemons, users, cert, small):
    d = daemons.start("ftpd", f"""
[listen]
ftp = ["127.0.0.1:0"]
[tls]
cert = "{cert[0]}"
key = "{cert[1]}"
[auth]
users_file = "{users}"
failure_delay = 0
[ftp]
root = "{small / 'ftp'}"
""")
    f = ftplib.FTP()
    f.connect(*d.addr("ftp"), timeout=30)
    f.login("bob", PASSWORD)
    f.storbinary("STOR fits.txt", io.BytesIO(b"fits\n"))

    try:
        f.storbinary("STOR big.bin", io.BytesIO(b"x" * 3_000_000))
        reply = "226 the upload was taken"
    except (ftplib.error_temp, ftplib.error_perm) as err:
        reply = str(err)
    except OSError:
        # The server dropped the data connection while we were still sending: the reply to
        # STOR is still to be read on the control connection.
        try:
            reply = f.getresp()
        except (ftplib.error_temp, ftplib.error_perm) as err:
            reply = str(err)
    assert reply[:3] in ("452", "552"), reply
    assert "big.bin" not in f.nlst(), "nothing half-written is left to see"

    f.voidcmd("NOOP")
    f.storbinary("STOR after.txt", io.BytesIO(b"after\n"))
    assert sorted(f.nlst()) == ["after.txt", "fits.txt"]
    f.quit()
