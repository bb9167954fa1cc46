"""`inetkit user add|passwd|del|list|check` on a real users file, and hashes made by Dovecot.

The verification in `inetkit user check` is the same code the daemons use
(inetkit_auth), so a Dovecot hash that passes here logs in to pop3d/imapd too.
"""

import os
import pty
import termios
import time
import shutil
import subprocess
import threading

import pytest

from support.inetkit import binary

SECRET = "correct horse battery staple"


def inetkit(users, *args, password=None, check=False):
    """Runs `inetkit user ARGS --users USERS`, the password (if any) as stdin's one line."""
    stdin = None if password is None else (password + "\n").encode()
    proc = subprocess.run([str(binary("inetkit")), "user", *args, "--users", str(users)],
                          input=stdin, stdin=subprocess.DEVNULL if stdin is None else None,
                          capture_output=True, timeout=60)
    if check and proc.returncode != 0:
        raise AssertionError(f"inetkit user {' '.join(args)}: rc={proc.returncode}\n"
                             f"{proc.stderr.decode()}")
    return proc


def listed(users):
    out = inetkit(users, "list", check=True).stdout.decode()
    return [tuple(line.split("\t")) for line in out.splitlines()]


def doveadm(*args):
    if shutil.which("doveadm") is None:
        pytest.fail("doveadm is missing: install dovecot-core")
    return subprocess.run(["doveadm", "-c", "/dev/null", *args], capture_output=True, text=True,
                          timeout=60)


@pytest.fixture
def users(tmp_path):
    path = tmp_path / "users"
    path.write_text("# inetkit users\n\n# keep this comment\n"
                    "carol:{PLAIN}carolpw:1001:1001:Carol:/srv/carol::quota=1G\n")
    path.chmod(0o640)
    return path


def test_add_list_passwd_del(users):
    original = users.read_text()
    inode = users.stat().st_ino

    out = inetkit(users, "add", "alice", password=SECRET, check=True)
    assert b"added user alice" in out.stdout
    # Replaced, not rewritten in place: a new inode with the old mode. (Checked after one
    # edit: a second one may get the first inode number back.)
    assert users.stat().st_ino != inode
    inetkit(users, "add", "bob", "--home", "/srv/ftp/bob", password="bobpw", check=True)
    assert listed(users) == [("carol", "PLAIN", "/srv/carol"), ("alice", "ARGON2ID", "-"),
                             ("bob", "ARGON2ID", "/srv/ftp/bob")]

    text = users.read_text()
    # Untouched lines stay byte for byte; new ones are Dovecot's ARGON2ID lines.
    assert text.startswith(original)
    alice = text.splitlines()[4]
    assert alice.startswith("alice:{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$")
    assert alice.endswith("::::::") and SECRET not in text
    assert text.splitlines()[5].endswith("::::/srv/ftp/bob::")
    assert users.stat().st_mode & 0o7777 == 0o640
    assert not [p for p in users.parent.iterdir() if p.name.startswith(".users")]

    assert inetkit(users, "check", "alice", password=SECRET).returncode == 0
    assert inetkit(users, "check", "alice", password=SECRET + "x").returncode == 1
    assert inetkit(users, "check", "carol", password="carolpw").returncode == 0

    inetkit(users, "passwd", "alice", password="new password", check=True)
    assert inetkit(users, "check", "alice", password=SECRET).returncode == 1
    assert inetkit(users, "check", "alice", password="new password").returncode == 0
    # passwd on carol replaces the hash and keeps uid, gid, gecos, home and extra fields.
    inetkit(users, "passwd", "carol", password="c2", check=True)
    carol = users.read_text().splitlines()[3]
    assert carol.startswith("carol:{ARGON2ID}$argon2id$")
    assert carol.endswith(":1001:1001:Carol:/srv/carol::quota=1G")

    inetkit(users, "del", "alice", check=True)
    assert [u[0] for u in listed(users)] == ["carol", "bob"]
    assert "# keep this comment" in users.read_text()
    assert inetkit(users, "check", "alice", password="new password").returncode == 1


def test_refusals_leave_the_file_alone(users):
    inetkit(users, "add", "alice", password="pw", check=True)
    before = users.read_bytes()
    cases = [
        (("add", "alice"), "pw", b"already exists"),
        (("add", "Alice"), "pw", b"already exists"),  # names are not case-sensitive
        (("add", "al:ice"), "pw", b"invalid user name"),
        (("add", "a/b"), "pw", b"invalid user name"),
        (("add", "../x"), "pw", b"invalid user name"),
        (("add", "a b"), "pw", b"invalid user name"),
        (("add", "a\x01"), "pw", b"invalid user name"),
        (("add", "dave", "--home", "rel/dir"), "pw", b"absolute"),
        (("add", "dave"), "", b"empty password"),
        (("add", "dave"), None, b"no password on stdin"),
        (("passwd", "nobody"), "pw", b"no user nobody"),
        (("del", "nobody"), None, b"no user nobody"),
        (("check", "nobody"), "pw", b"no user nobody"),
        (("frobnicate",), None, b"usage"),
    ]
    for args, password, message in cases:
        proc = inetkit(users, *args, password=password)
        assert proc.returncode != 0, args
        assert message in proc.stderr, (args, proc.stderr)
    assert users.read_bytes() == before
    assert sorted(u[0] for u in listed(users)) == ["alice", "carol"]


def test_add_creates_a_missing_file(tmp_path):
    users = tmp_path / "users"
    inetkit(users, "add", "alice@example.org", password="pw", check=True)
    assert users.stat().st_mode & 0o777 == 0o640
    assert [u[0] for u in listed(users)] == ["alice@example.org"]
    assert inetkit(users, "del", "bob").returncode == 1


def test_symlinked_file_is_edited_behind_the_link(tmp_path):
    real = tmp_path / "real-users"
    real.write_text("")
    link = tmp_path / "users"
    link.symlink_to(real.name)
    inetkit(link, "add", "alice", password="pw", check=True)
    assert link.is_symlink()
    assert real.read_text().startswith("alice:{ARGON2ID}")


def test_concurrent_adds_lose_nothing(users):
    names = [f"user{i}" for i in range(8)]
    results = {}

    def add(name):
        results[name] = inetkit(users, "add", name, password=name + "pw")

    threads = [threading.Thread(target=add, args=(n,)) for n in names]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert all(r.returncode == 0 for r in results.values()), results
    assert sorted(u[0] for u in listed(users)) == sorted(names + ["carol"])
    assert inetkit(users, "check", "user5", password="user5pw").returncode == 0


def test_malformed_lines_are_reported_and_skipped(users):
    with users.open("a") as f:
        f.write("broken line without password\n")
        f.write("dave:{MD5}0123456789abcdef\n")
        f.write("erin:{PLAIN}erinpw:notanumber\n")
    inetkit(users, "add", "frank", password="pw", check=True)
    proc = inetkit(users, "list")
    assert proc.returncode == 0
    err = proc.stderr.decode()
    assert f"{users}:5: bad user name" in err
    assert f"{users}:6: user dave: unknown password scheme {{MD5}}" in err
    assert f"{users}:7: user erin: uid is not a number; line skipped" in err
    assert "0123456789abcdef" not in err and "erinpw" not in err
    assert [u.split("\t")[0] for u in proc.stdout.decode().splitlines()] == ["carol", "dave", "frank"]
    assert ("dave", "-", "-") in listed(users)
    # The malformed lines survive edits untouched, for the sysadmin to fix.
    inetkit(users, "del", "frank", check=True)
    assert "dave:{MD5}0123456789abcdef\n" in users.read_text()


def test_password_from_the_terminal_without_echo(tmp_path):
    users = tmp_path / "users"
    pid, fd = pty.fork()
    if pid == 0:
        os.execv(str(binary("inetkit")), ["inetkit", "user", "add", "tina", "--users", str(users)])
    output = b""

    def read_until(marker):
        nonlocal output
        while marker not in output:
            try:
                chunk = os.read(fd, 1024)
            except OSError:
                break
            if not chunk:
                break
            output += chunk

    def type_when_echo_is_off(text):
        # The prompt is printed before echo is switched off: typing in between would be echoed
        # by the terminal itself, whatever the program does.
        deadline = time.monotonic() + 10
        while termios.tcgetattr(fd)[3] & termios.ECHO:
            assert time.monotonic() < deadline, "echo never switched off"
            time.sleep(0.01)
        os.write(fd, text)

    read_until(b"Password: ")
    type_when_echo_is_off(b"tty secret\n")
    read_until(b"Again: ")
    type_when_echo_is_off(b"tty secret\n")
    read_until(b"added user tina")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0, output
    assert b"tty secret" not in output, output
    assert inetkit(users, "check", "tina", password="tty secret").returncode == 0


# -- Dovecot compatibility -----------------------------------------------------------------------

@pytest.mark.parametrize("scheme", ["SHA512-CRYPT", "SHA256-CRYPT", "ARGON2ID", "ARGON2I",
                                    "BLF-CRYPT", "PLAIN"])
def test_dovecot_hashes_verify(tmp_path, scheme):
    made = doveadm("pw", "-s", scheme, "-p", SECRET)
    assert made.returncode == 0, made.stderr
    field = made.stdout.strip()
    assert field.startswith("{" + scheme + "}")
    users = tmp_path / "users"
    users.write_text(f"alice:{field}::::::\n")
    assert [u[:2] for u in listed(users)] == [("alice", scheme)]
    assert inetkit(users, "check", "alice", password=SECRET).returncode == 0
    wrong = inetkit(users, "check", "alice", password=SECRET[:-1])
    assert wrong.returncode == 1 and b"wrong password" in wrong.stderr


def test_our_hashes_verify_in_dovecot(tmp_path):
    users = tmp_path / "users"
    inetkit(users, "add", "alice", password=SECRET, check=True)
    field = users.read_text().split(":")[1]
    assert doveadm("pw", "-t", field, "-p", SECRET).returncode == 0
    assert doveadm("pw", "-t", field, "-p", "wrong").returncode != 0


def test_openssl_passwd_hash_without_prefix(tmp_path):
    """The §6 path: a line added by hand with `openssl passwd -6` output, prefixed or not."""
    made = subprocess.run(["openssl", "passwd", "-6", SECRET], capture_output=True, text=True,
                          check=True).stdout.strip()
    assert made.startswith("$6$")
    users = tmp_path / "users"
    users.write_text(f"alice:{{SHA512-CRYPT}}{made}::::::\nbob:{made}\n")
    assert [u[:2] for u in listed(users)] == [("alice", "SHA512-CRYPT"), ("bob", "SHA512-CRYPT")]
    for name in ("alice", "bob"):
        assert inetkit(users, "check", name, password=SECRET).returncode == 0
        assert inetkit(users, "check", name, password="nope").returncode == 1
