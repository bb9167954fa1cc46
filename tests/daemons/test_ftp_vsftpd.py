"""inetkit-ftpd as vsftpd users know it (issue #15 item 6): SITE CHMOD/UMASK/HELP, the xferlog
transfer log, bandwidth limits, symlink targets in LIST, homes made on first login."""

import ftplib
import io
import os
import re
import signal
import stat
import subprocess
import time

import pytest

from support.homes import PASSWORD, daemon_config, user_line, write_users


@pytest.fixture
def home(tmp_path):
    """alice has a home field (an existing directory); carol's home does not exist yet; dave
    has his own rate in the users file's extra fields."""
    users = tmp_path / "users"
    alice = tmp_path / "alice"
    alice.mkdir()
    (alice / "hello.txt").write_bytes(b"hello\n")
    carol = tmp_path / "homes" / "carol"
    dave = tmp_path / "dave"
    dave.mkdir()
    write_users(users, user_line("alice", home=alice), user_line("bob"),
                user_line("carol", home=carol),
                user_line("dave", home=dave, extra="ftp_max_rate=100000"))
    return {"users": users, "alice": alice, "carol": carol, "dave": dave,
            "ftproot": tmp_path / "ftproot", "tmp": tmp_path}


def config(home, cert, ftp_extra=""):
    return daemon_config(("ftp", "ftps"), home["users"], cert, auth="failure_delay = 0.05\n",
                         rest=f"""[ftp]
root = "{home['ftproot']}"
{ftp_extra}
""")


def login(d, user="alice"):
    host, port = d.addr("ftp")
    f = ftplib.FTP()
    f.connect(host, port, timeout=60)
    f.login(user, PASSWORD)
    return f


def mode(path):
    return stat.S_IMODE(os.lstat(path).st_mode)


def test_site_chmod_within_the_root(daemons, home, cert):
    d = daemons.start("ftpd", config(home, cert))
    outside = home["tmp"] / "outside.txt"
    outside.write_bytes(b"secret")
    os.chmod(outside, 0o600)
    os.symlink("../outside.txt", home["alice"] / "up")
    os.symlink("hello.txt", home["alice"] / "same")
    f = login(d)
    assert f.sendcmd("SITE CHMOD 640 hello.txt").startswith("200")
    assert mode(home["alice"] / "hello.txt") == 0o640
    assert f.sendcmd("SITE chmod 0604 /same").startswith("200")  # a link inside is followed
    assert mode(home["alice"] / "hello.txt") == 0o604
    # A link out of the root is never followed, nor is a path that climbs out.
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.sendcmd("SITE CHMOD 666 up")
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.sendcmd(f"SITE CHMOD 666 ../../../../{home['tmp']}/outside.txt")
    assert mode(outside) == 0o600
    # No setuid, setgid or sticky bits unless configured; bad modes are syntax errors.
    with pytest.raises(ftplib.error_perm, match="^550 setuid"):
        f.sendcmd("SITE CHMOD 4755 hello.txt")
    assert mode(home["alice"] / "hello.txt") == 0o604
    for bad in ["SITE CHMOD 9 hello.txt", "SITE CHMOD 77777 hello.txt", "SITE CHMOD 644"]:
        with pytest.raises(ftplib.error_perm, match="^501"):
            f.sendcmd(bad)
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.sendcmd("SITE CHMOD 644 missing")
    with pytest.raises(ftplib.error_perm, match="^500"):
        f.sendcmd("SITE EXEC /bin/sh")
    assert "CHMOD UMASK HELP" in f.sendcmd("SITE HELP")
    f.quit()


def test_site_chmod_special_bits_when_configured(daemons, home, cert):
    d = daemons.start("ftpd", config(home, cert, "chmod_special_bits = true"))
    (home["alice"] / "d").mkdir()
    f = login(d)
    assert f.sendcmd("SITE CHMOD 1777 d").startswith("200")
    assert mode(home["alice"] / "d") == 0o1777
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.sendcmd("SITE CHMOD 777 /")  # the root itself is never changed
    f.quit()


def test_site_umask_applies_to_stor_and_mkd_of_this_session_only(daemons, home, cert):
    d = daemons.start("ftpd", config(home, cert))
    f = login(d)
    assert "No UMASK" in f.sendcmd("SITE UMASK")
    assert f.sendcmd("SITE UMASK 077").startswith("200")
    assert "0077" in f.sendcmd("SITE UMASK")
    f.storbinary("STOR private.txt", io.BytesIO(b"x"))
    f.mkd("privdir")
    assert mode(home["alice"] / "private.txt") == 0o600
    assert mode(home["alice"] / "privdir") == 0o700
    # A mask that gives more than the daemon's own umask (022) is honoured exactly.
    f.sendcmd("SITE UMASK 002")
    f.storbinary("STOR shared.txt", io.BytesIO(b"x"))
    f.mkd("shareddir")
    assert mode(home["alice"] / "shared.txt") == 0o664
    assert mode(home["alice"] / "shareddir") == 0o775
    # An existing file keeps its mode when overwritten.
    f.sendcmd("SITE UMASK 077")
    f.storbinary("STOR shared.txt", io.BytesIO(b"y"))
    assert mode(home["alice"] / "shared.txt") == 0o664
    for bad in ["SITE UMASK 8", "SITE UMASK 1022", "SITE UMASK abc"]:
        with pytest.raises(ftplib.error_perm, match="^501"):
            f.sendcmd(bad)
    f.quit()
    # Another session starts without it.
    f = login(d)
    assert "No UMASK" in f.sendcmd("SITE UMASK")
    f.quit()


def test_feat_and_help_name_the_site_commands(daemons, home, cert):
    d = daemons.start("ftpd", config(home, cert))
    host, port = d.addr("ftp")
    f = ftplib.FTP()
    f.connect(host, port, timeout=30)
    features = {line.strip() for line in f.sendcmd("FEAT").splitlines()[1:-1]}
    assert {"SITE CHMOD", "SITE UMASK", "SITE HELP"} <= features
    assert "SITE" in f.sendcmd("HELP")
    with pytest.raises(ftplib.error_perm, match="^530"):
        f.sendcmd("SITE CHMOD 644 x")  # a login first
    f.quit()


XFERLOG = re.compile(
    r"^\w{3} \w{3} [ \d]\d \d\d:\d\d:\d\d \d{4} (\d+) 127\.0\.0\.1 (\d+) (\S+) ([ab]) _ ([io]) "
    r"([ra]) (\S+) ftp 0 \* ([ci])$")


def test_xferlog_file_has_one_line_per_transfer(daemons, home, cert):
    log = home["tmp"] / "xferlog"
    d = daemons.start("ftpd", config(home, cert, f'xferlog = "{log}"'))
    f = login(d)
    f.storbinary("STOR up load.bin", io.BytesIO(b"u" * 5000))
    f.retrbinary("RETR hello.txt", lambda b: None)
    f.sendcmd("TYPE A")
    f.retrlines("RETR hello.txt", lambda line: None)
    f.retrlines("LIST", lambda line: None)  # a listing is no file transfer
    f.quit()
    for _ in range(50):
        lines = log.read_text().splitlines() if log.exists() else []
        if len(lines) >= 3:
            break
        time.sleep(0.1)
    parsed = [XFERLOG.match(line) for line in lines]
    assert all(parsed), lines
    fields = [m.groups() for m in parsed]
    assert [(b, p, t, io_, who, u, s) for _, b, p, t, io_, who, u, s in fields] == [
        ("5000", "/up_load.bin", "b", "i", "r", "alice", "c"),
        ("6", "/hello.txt", "b", "o", "r", "alice", "c"),
        ("6", "/hello.txt", "a", "o", "r", "alice", "c"),
    ]
    assert all(int(m.group(1)) >= 1 for m in parsed)


def test_xferlog_is_reopened_on_sighup_after_logrotate_moved_it(daemons, home, cert):
    log = home["tmp"] / "xferlog"
    d = daemons.start("ftpd", config(home, cert, f'xferlog = "{log}"'))
    f = login(d)
    f.retrbinary("RETR hello.txt", lambda b: None)
    # Its line is written before the 226 reply.
    rotated = home["tmp"] / "xferlog.1"
    log.rename(rotated)  # what logrotate does, then "systemctl reload"
    d.signal(signal.SIGHUP)
    d.wait_log("transfer log reopened")
    f.storbinary("STOR after.bin", io.BytesIO(b"a" * 70))
    f.quit()
    for _ in range(50):
        if log.exists() and log.read_text():
            break
        time.sleep(0.1)
    old, new = rotated.read_text().splitlines(), log.read_text().splitlines()
    assert len(old) == 1 and " /hello.txt b _ o " in old[0], old
    assert len(new) == 1 and XFERLOG.match(new[0]) and " 70 /after.bin b _ i " in new[0], new


def test_xferlog_goes_to_the_journal_without_a_file_and_marks_aborts(daemons, home, cert):
    d = daemons.start("ftpd", config(home, cert, "max_rate = 100000"))
    (home["alice"] / "big.bin").write_bytes(os.urandom(400_000))
    f = login(d)
    conn = f.transfercmd("RETR big.bin")
    conn.recv(1000)
    f.abort()
    conn.close()
    f.quit()
    deadline = time.time() + 10
    while time.time() < deadline:
        lines = [line for line in d.log().splitlines() if "/big.bin b _ o r alice ftp 0 * " in line]
        if lines:
            break
        time.sleep(0.1)
    assert lines and lines[-1].rstrip().endswith(" i"), d.log()[-2000:]


def timed(f, command, data=None):
    start = time.monotonic()
    if data is None:
        got = bytearray()
        f.retrbinary(command, got.extend)
    else:
        f.storbinary(command, io.BytesIO(data))
        got = data
    return time.monotonic() - start, bytes(got)


def test_session_rate_limit_holds_for_downloads_and_uploads(daemons, home, cert):
    data = os.urandom(300 * 1024)
    (home["alice"] / "big.bin").write_bytes(data)
    d = daemons.start("ftpd", config(home, cert, "max_rate = 200000"))
    f = login(d)
    took, got = timed(f, "RETR big.bin")  # sendfile
    assert got == data and took >= len(data) / 200000 * 0.9
    took, _ = timed(f, "STOR up.bin", data)  # splice
    assert (home["alice"] / "up.bin").read_bytes() == data
    assert took >= len(data) / 200000 * 0.9
    f.sendcmd("TYPE A")  # the buffered path
    took, _ = timed(f, "RETR big.bin")
    assert took >= len(data) / 200000 * 0.9
    f.quit()


def test_per_user_rate_from_the_users_file_and_the_total_rate(daemons, home, cert):
    data = os.urandom(200 * 1024)
    (home["dave"] / "big.bin").write_bytes(data)
    (home["alice"] / "big.bin").write_bytes(data)
    d = daemons.start("ftpd", config(home, cert, "max_rate_total = 200000"))
    # dave: 100000 B/s of his own, below the total.
    f = login(d, "dave")
    took, got = timed(f, "RETR big.bin")
    assert got == data and took >= len(data) / 100000 * 0.9
    f.quit()
    # Two sessions at once share the total: together at least 2 × size / total.
    import threading
    results = []

    def fetch():
        g = login(d, "alice")
        results.append(timed(g, "RETR big.bin"))
        g.quit()

    start = time.monotonic()
    threads = [threading.Thread(target=fetch) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    took = time.monotonic() - start
    assert [got == data for _, got in results] == [True, True]
    assert took >= 2 * len(data) / 200000 * 0.9


def test_list_shows_symlink_targets_inside_the_root_only(daemons, home, cert):
    d = daemons.start("ftpd", config(home, cert))
    (home["alice"] / "sub").mkdir()
    os.symlink("hello.txt", home["alice"] / "inside")
    os.symlink("sub", home["alice"] / "dirlink")
    os.symlink("/etc/passwd", home["alice"] / "absolute")
    os.symlink("../../../etc", home["alice"] / "climbs")
    os.symlink("nothing-here", home["alice"] / "dangling")
    f = login(d)
    lines = []
    f.retrlines("LIST", lines.append)
    by_name = {line.split(" ", 8)[-1].split(" -> ")[0].split()[-1]: line for line in lines}
    assert by_name["inside"].startswith("l") and by_name["inside"].endswith(" inside -> hello.txt")
    assert by_name["dirlink"].endswith(" dirlink -> sub")
    for name in ["absolute", "climbs", "dangling"]:
        assert by_name[name].startswith("l") and by_name[name].endswith(f" {name}"), lines
    assert not any("passwd" in line or "etc" in line for line in lines), lines
    f.quit()
    # lftp parses the arrow of the LIST line as a link.
    host, port = d.addr("ftp")
    out = subprocess.run(
        ["lftp", "-u", f"alice,{PASSWORD}", "-e", "set ftp:ssl-allow no; set ftp:use-mlsd no; cls -l; bye",
         f"ftp://{host}:{port}"], capture_output=True, text=True, timeout=60)
    assert "inside@ -> hello.txt" in out.stdout, out.stderr
    assert "climbs@\n" in out.stdout


def test_home_from_the_users_file_is_made_on_first_login(daemons, home, cert):
    d = daemons.start("ftpd", config(home, cert))
    assert not home["carol"].exists()
    f = login(d, "carol")
    f.storbinary("STOR first.txt", io.BytesIO(b"carol's"))
    f.quit()
    assert (home["carol"] / "first.txt").read_bytes() == b"carol's"
    g = login(d, "bob")  # the default root, made as it always was
    g.quit()
    bob = home["ftproot"] / "bob"
    assert mode(home["carol"]) == mode(bob)
    assert os.stat(home["carol"]).st_uid == os.stat(bob).st_uid
