"""inetkit-ftpd with the clients people use: ftplib (plain and FTP_TLS with PROT P), curl, lftp;
path escapes, FTP bounce, passive-port theft, abort, timeouts and password guessing."""

import ftplib
import hashlib
import io
import os
import socket
import ssl
import subprocess
import time
from pathlib import Path

import pytest

from support.homes import PASSWORD, daemon_config, tls_context, user_line, write_users


class ReuseFTP_TLS(ftplib.FTP_TLS):
    """FTP_TLS whose data connections resume the control connection's TLS session, as
    servers that require session reuse (vsftpd, inetkit-ftpd) demand."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


@pytest.fixture
def home(tmp_path):
    """alice has a home field (her root); bob has none and gets <[ftp] root>/bob."""
    users = tmp_path / "users"
    alice = tmp_path / "alice"
    alice.mkdir()
    (alice / "hello.txt").write_bytes(b"line one\nline two\n")
    write_users(users, user_line("alice", home=alice), user_line("bob"))
    ftproot = tmp_path / "ftproot"
    anon = tmp_path / "anon"
    anon.mkdir()
    (anon / "pub.txt").write_bytes(b"public\n")
    return {"users": users, "alice": alice, "ftproot": ftproot, "anon": anon, "tmp": tmp_path}


def config(home, cert, ftp_extra="", auth_extra=""):
    auth = f"failure_delay = 0.05\nmax_failure_delay = 0.1\n{auth_extra}"
    return daemon_config(("ftp", "ftps"), home["users"], cert, auth=auth, rest=f"""[ftp]
root = "{home['ftproot']}"
anonymous_root = "{home['anon']}"
{ftp_extra}
""")


@pytest.fixture
def ftpd(daemons, home, cert):
    return daemons.start("ftpd", config(home, cert))


def plain(d, user="alice"):
    host, port = d.addr("ftp")
    f = ftplib.FTP()
    f.connect(host, port, timeout=30)
    f.login(user, PASSWORD)
    return f


def secure(d, cert, user="alice", cls=ReuseFTP_TLS):
    host, port = d.addr("ftp")
    f = cls(context=tls_context(cert), timeout=30)
    f.connect(host, port)
    f.auth()
    f.login(user, PASSWORD)
    f.prot_p()
    return f


def curl(*args, check=True):
    return subprocess.run(["curl", "-sS", "--max-time", "60", *args], capture_output=True,
                          check=check, timeout=90)


# -- the control session ------------------------------------------------------------------------

def test_greeting_feat_and_simple_commands(ftpd):
    host, port = ftpd.addr("ftp")
    f = ftplib.FTP()
    welcome = f.connect(host, port, timeout=30)
    assert welcome.startswith("220 ")
    feat = f.sendcmd("FEAT").splitlines()
    assert feat[0].startswith("211-") and feat[-1].startswith("211 ")
    features = {line.strip() for line in feat[1:-1]}
    assert features == {"AUTH TLS", "PBSZ", "PROT", "EPRT", "EPSV", "MDTM",
                        "MLST type*;size*;modify*;perm*;unique*;", "PASV", "REST STREAM",
                        "SITE CHMOD", "SITE HELP", "SITE UMASK",
                        "SIZE", "TVFS", "UTF8"}
    assert f.sendcmd("OPTS UTF8 ON").startswith("200")
    assert f.sendcmd("SYST") == "215 UNIX Type: L8"
    assert f.sendcmd("NOOP").startswith("200")
    assert f.sendcmd("HELP").startswith("214")
    assert f.sendcmd("STAT").startswith("211")
    with pytest.raises(ftplib.error_perm, match="^530"):
        f.sendcmd("PWD")
    with pytest.raises(ftplib.error_perm, match="^503"):
        f.sendcmd("PBSZ 0")
    f.login("alice", PASSWORD)
    assert f.sendcmd("TYPE I").startswith("200")
    assert f.sendcmd("MODE S").startswith("200")
    assert f.sendcmd("STRU F").startswith("200")
    with pytest.raises(ftplib.error_perm, match="^504"):
        f.sendcmd("MODE B")
    with pytest.raises(ftplib.error_perm, match="^504"):
        f.sendcmd("STRU R")
    assert f.pwd() == "/"
    assert f.quit().startswith("221")


def test_password_refused_before_tls_unless_allowed(daemons, home, cert):
    d = daemons.start("ftpd", config(home, cert, auth_extra='plaintext = "never"'))
    host, port = d.addr("ftp")
    f = ftplib.FTP_TLS(context=tls_context(cert), timeout=30)
    f.connect(host, port)
    with pytest.raises(ftplib.error_perm, match="^530"):
        f.sendcmd("USER alice")
    f.auth()
    f.login("alice", PASSWORD)
    with pytest.raises(ftplib.error_perm, match="^533"):
        f.sendcmd("CCC")
    assert f.sendcmd("PBSZ 0") == "200 PBSZ=0"
    with pytest.raises(ftplib.error_perm, match="^536"):
        f.sendcmd("PROT S")
    f.quit()


def test_anonymous_is_off_by_default_and_read_only_when_on(ftpd, daemons, home, cert):
    host, port = ftpd.addr("ftp")
    f = ftplib.FTP()
    f.connect(host, port, timeout=30)
    with pytest.raises(ftplib.error_perm, match="^530"):
        f.login("anonymous", "guest@")
    f.close()

    d = daemons.start("ftpd", config(home, cert, ftp_extra="anonymous = true"))
    host, port = d.addr("ftp")
    f = ftplib.FTP()
    f.connect(host, port, timeout=30)
    f.login()  # anonymous
    out = io.BytesIO()
    f.retrbinary("RETR pub.txt", out.write)
    assert out.getvalue() == b"public\n"
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.storbinary("STOR new.txt", io.BytesIO(b"x"))
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.mkd("dir")
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.delete("pub.txt")
    f.quit()
    assert not (home["anon"] / "new.txt").exists()
    assert (home["anon"] / "pub.txt").exists()


def test_wrong_passwords_are_throttled(daemons, home, cert):
    d = daemons.start("ftpd", config(home, cert, auth_extra="max_failures = 3"))
    host, port = d.addr("ftp")
    f = ftplib.FTP()
    f.connect(host, port, timeout=30)
    for _ in range(2):
        with pytest.raises(ftplib.error_perm, match="^530"):
            f.login("alice", "wrong")
    f.close()
    f = ftplib.FTP()
    f.connect(host, port, timeout=30)
    with pytest.raises(ftplib.error_perm, match="^530"):
        f.login("alice", "wrong")
    # The address has spent its budget: even the right password is refused now.
    with pytest.raises(ftplib.error_temp, match="^421"):
        f.login("alice", PASSWORD)


# -- transfers with ftplib -----------------------------------------------------------------------

def test_tls_prot_p_upload_download_and_file_commands(ftpd, home, cert):
    f = secure(ftpd, cert)
    data = os.urandom(3 * 1024 * 1024 + 17)
    f.storbinary("STOR big.bin", io.BytesIO(data))
    assert (home["alice"] / "big.bin").read_bytes() == data
    out = io.BytesIO()
    f.retrbinary("RETR big.bin", out.write)
    assert out.getvalue() == data
    assert f.size("big.bin") == len(data)
    assert f.sendcmd("MDTM big.bin")[:4] == "213 " and len(f.sendcmd("MDTM big.bin")) == 18
    assert f.mkd("sub") == "/sub"
    f.cwd("sub")
    assert f.pwd() == "/sub"
    f.storbinary("APPE log", io.BytesIO(b"one\n"))
    f.storbinary("APPE log", io.BytesIO(b"two\n"))
    assert (home["alice"] / "sub" / "log").read_bytes() == b"one\ntwo\n"
    resp = f.sendcmd("CDUP")
    assert resp.startswith("250") and f.pwd() == "/"
    assert sorted(f.nlst()) == ["big.bin", "hello.txt", "sub"]
    facts = dict(f.mlsd(facts=["type", "size"]))
    assert facts["big.bin"]["type"] == "file" and facts["big.bin"]["size"] == str(len(data))
    assert facts["sub"]["type"] == "dir"
    lines = []
    f.retrlines("LIST", lines.append)
    big = next(line for line in lines if line.endswith(" big.bin"))
    assert big.startswith("-rw") and f" {len(data)} " in big
    assert next(line for line in lines if line.endswith(" sub")).startswith("d")
    mlst = f.sendcmd("MLST big.bin").splitlines()
    assert mlst[0].startswith("250-") and "type=file;" in mlst[1] and mlst[1].endswith(" /big.bin")
    f.rename("big.bin", "sub/moved.bin")
    assert (home["alice"] / "sub" / "moved.bin").exists()
    f.delete("sub/moved.bin")
    f.delete("sub/log")
    f.rmd("sub")
    assert sorted(p.name for p in home["alice"].iterdir()) == ["hello.txt"]
    with pytest.raises(ftplib.error_temp, match="^425"):
        f.sendcmd("STOU")  # no PASV/PORT first: nothing is created
    assert f.storbinary("STOU", io.BytesIO(b"unique")).startswith("226")
    made = [p for p in home["alice"].iterdir() if p.name.startswith("file.")]
    assert len(made) == 1 and made[0].read_bytes() == b"unique"
    f.quit()


def test_prot_p_data_connection_must_resume_the_session(ftpd, cert):
    f = secure(ftpd, cert, cls=ftplib.FTP_TLS)
    # A data connection with a fresh TLS session (what plain ftplib does) gets no data.
    conn, _ = ftplib.FTP.ntransfercmd(f, "RETR hello.txt")
    received = b""
    try:
        tls = f.context.wrap_socket(conn, server_hostname=f.host)
        received = tls.recv(1000)
    except (ssl.SSLError, OSError):
        pass
    conn.close()
    assert received == b""
    with pytest.raises(ftplib.error_perm, match="^522"):
        f.voidresp()
    # The same session resumed works.
    f.__class__ = ReuseFTP_TLS
    out = io.BytesIO()
    f.retrbinary("RETR hello.txt", out.write)
    assert out.getvalue() == b"line one\nline two\n"
    f.quit()


def test_plaintext_sendfile_download_ascii_and_resume(ftpd, home, cert):
    data = os.urandom(8 * 1024 * 1024)
    (home["alice"] / "blob").write_bytes(data)
    f = plain(ftpd)
    out = io.BytesIO()
    f.retrbinary("RETR blob", out.write)
    assert hashlib.sha256(out.getvalue()).digest() == hashlib.sha256(data).digest()
    # REST + RETR: the rest of the file from an offset.
    out = io.BytesIO()
    f.retrbinary("RETR blob", out.write, rest=5_000_000)
    assert out.getvalue() == data[5_000_000:]
    # TYPE A: LF on disk is CRLF on the wire, and back.
    raw = []
    f.sendcmd("TYPE A")
    conn = f.transfercmd("RETR hello.txt")
    while chunk := conn.recv(65536):
        raw.append(chunk)
    conn.close()
    f.voidresp()
    assert b"".join(raw) == b"line one\r\nline two\r\n"
    f.storlines("STOR text.txt", io.BytesIO(b"a\nb\n"))  # ftplib sends CRLF in ASCII mode
    assert (home["alice"] / "text.txt").read_bytes() == b"a\nb\n"
    # REST + STOR: an upload resumed at an offset keeps the first part.
    f.sendcmd("TYPE I")
    (home["alice"] / "part").write_bytes(data[:1000])
    f.storbinary("STOR part", io.BytesIO(data[1000:2000]), rest=1000)
    assert (home["alice"] / "part").read_bytes() == data[:2000]
    f.quit()


def test_user_without_home_gets_a_root_made_for_them(ftpd, home):
    f = plain(ftpd, user="bob")
    f.storbinary("STOR x", io.BytesIO(b"bob's"))
    f.quit()
    assert (home["ftproot"] / "bob" / "x").read_bytes() == b"bob's"


def test_port_and_eprt_to_own_address_work(ftpd, home):
    f = plain(ftpd)
    f.set_pasv(False)  # ftplib then sends PORT (EPRT for IPv6)
    out = io.BytesIO()
    f.retrbinary("RETR hello.txt", out.write)
    assert out.getvalue() == b"line one\nline two\n"
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    assert f.sendcmd(f"EPRT |1|127.0.0.1|{port}|").startswith("200")
    f.putcmd("NLST")
    conn, _ = listener.accept()
    names = conn.makefile("rb").read()
    conn.close()
    listener.close()
    assert f.getresp().startswith("150") and f.voidresp().startswith("226")
    assert b"hello.txt\r\n" in names
    f.quit()


def test_ipv6_epsv_and_eprt(daemons, home, cert):
    conf = config(home, cert).replace('ftp = ["127.0.0.1:0"]', 'ftp = ["[::1]:0"]')
    d = daemons.start("ftpd", conf)
    host, port = d.addr("ftp")
    assert host == "::1"
    f = ftplib.FTP()
    f.connect(host, port, timeout=30)
    f.login("alice", PASSWORD)
    with pytest.raises(ftplib.error_temp, match="^425"):
        f.sendcmd("PASV")  # PASV cannot carry an IPv6 address
    out = io.BytesIO()
    f.retrbinary("RETR hello.txt", out.write)  # ftplib uses EPSV over IPv6
    assert out.getvalue() == b"line one\nline two\n"
    f.set_pasv(False)  # EPRT |2|::1|port|
    assert f.nlst() == ["hello.txt"]
    with pytest.raises(ftplib.error_perm, match="^500"):
        f.sendcmd("EPRT |1|127.0.0.1|4000|")  # not the client's own address
    f.quit()


# -- other clients ------------------------------------------------------------------------------

def test_curl_ssl_reqd_upload_download_resume_listing(ftpd, home, cert, tmp_path):
    host, port = ftpd.addr("ftp")
    base = f"ftp://alice:correct%20horse@{host}:{port}/"
    tls = ["--ssl-reqd", "--cacert", str(cert[0])]
    src = tmp_path / "src.bin"
    data = os.urandom(2 * 1024 * 1024 + 3)
    src.write_bytes(data)
    curl(*tls, "-T", str(src), base + "up.bin")
    assert (home["alice"] / "up.bin").read_bytes() == data
    dst = tmp_path / "dst.bin"
    dst.write_bytes(data[:12345])  # an interrupted download
    curl(*tls, "-C", "-", "-o", str(dst), base + "up.bin")
    assert dst.read_bytes() == data
    (home["alice"] / "up.bin").write_bytes(data[:777])  # an interrupted upload
    curl(*tls, "-C", "-", "-T", str(src), base + "up.bin")
    assert (home["alice"] / "up.bin").read_bytes() == data
    listing = curl(*tls, base).stdout.decode()
    assert any(line.endswith(" up.bin") and line.startswith("-") for line in listing.splitlines())
    names = curl(*tls, "--list-only", base).stdout.decode().split()
    assert sorted(names) == ["hello.txt", "up.bin"]
    # Implicit TLS on the ftps port.
    host, sport = ftpd.addr("ftps")
    got = curl("--cacert", str(cert[0]), f"ftps://alice:correct%20horse@{host}:{sport}/hello.txt")
    assert got.stdout == b"line one\nline two\n"


def test_lftp_mirror_up_and_down(ftpd, home, cert, tmp_path):
    tree = tmp_path / "tree"
    (tree / "a" / "b").mkdir(parents=True)
    (tree / "top.txt").write_bytes(b"top\n")
    (tree / "a" / "mid.bin").write_bytes(os.urandom(300_000))
    (tree / "a" / "b" / "deep.txt").write_bytes(b"deep\n")
    host, port = ftpd.addr("ftp")
    down = tmp_path / "down"

    def lftp(commands):
        script = (f"set ftp:ssl-force true; set ftp:ssl-protect-data true; "
                  f"set ssl:ca-file {cert[0]}; set ssl:check-hostname true; "
                  f"set net:max-retries 1; set net:timeout 20; "
                  f"open -u alice,'{PASSWORD}' ftp://{host}:{port}; {commands}; bye")
        return subprocess.run(["lftp", "-c", script], capture_output=True, timeout=120,
                              env={**os.environ, "HOME": str(tmp_path)})

    up = lftp(f"mirror -R {tree} /tree")
    assert up.returncode == 0, up.stderr
    for rel in ["top.txt", "a/mid.bin", "a/b/deep.txt"]:
        assert (home["alice"] / "tree" / rel).read_bytes() == (tree / rel).read_bytes()
    got = lftp(f"mirror /tree {down}")
    assert got.returncode == 0, got.stderr
    for rel in ["top.txt", "a/mid.bin", "a/b/deep.txt"]:
        assert (down / rel).read_bytes() == (tree / rel).read_bytes()


# -- confinement --------------------------------------------------------------------------------

def test_paths_cannot_escape_the_root(ftpd, home):
    outside = home["tmp"] / "outside.txt"
    outside.write_bytes(b"secret")
    os.symlink("/", home["alice"] / "escape")
    os.symlink("../outside.txt", home["alice"] / "up")
    f = plain(ftpd)
    for path in ["../../etc/passwd", "/etc/passwd", "/../../../etc/passwd", "escape/etc/passwd",
                 "up", "../outside.txt"]:
        with pytest.raises(ftplib.error_perm, match="^550"):
            f.retrbinary(f"RETR {path}", lambda b: None)
        with pytest.raises(ftplib.error_perm, match="^550"):
            f.size(path)
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.cwd("escape")
    f.cwd("/../..")
    assert f.pwd() == "/"
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.storbinary("STOR escape/tmp/planted", io.BytesIO(b"x"))
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.storbinary("STOR up", io.BytesIO(b"overwritten"))
    assert outside.read_bytes() == b"secret"
    # RNTO cannot move a file out of the root either.
    f.sendcmd("RNFR hello.txt")
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.sendcmd(f"RNTO ../../../../../{home['tmp']}/moved.txt")
    f.sendcmd("RNFR hello.txt")
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.sendcmd("RNTO escape/tmp/moved.txt")
    assert (home["alice"] / "hello.txt").exists()
    assert not (home["tmp"] / "moved.txt").exists()
    # NUL and CR in names.
    with pytest.raises(ftplib.error_perm, match="^553"):
        f.sendcmd("MKD a\0b")
    f.sock.sendall(b"MKD a\rb\r\n")  # ftplib itself refuses to send a CR
    with pytest.raises(ftplib.error_perm, match="^553"):
        f.getresp()
    assert sorted(p.name for p in home["alice"].iterdir()) == ["escape", "hello.txt", "up"]
    # The listing shows the planted symlink as a link, not what it points at.
    lines = []
    f.retrlines("LIST", lines.append)
    assert next(line for line in lines if line.endswith(" escape")).startswith("l")
    f.quit()


# -- the data channel under attack and under strain ---------------------------------------------

def test_ftp_bounce_is_refused(ftpd):
    f = plain(ftpd)
    for cmd in ["PORT 127,0,0,2,31,144", "PORT 127,0,0,1,0,25", "EPRT |1|127.0.0.2|8080|",
                "EPRT |1|127.0.0.1|25|"]:
        with pytest.raises(ftplib.error_perm, match="^500"):
            f.sendcmd(cmd)
    # Nothing was set up: a transfer now has no data connection.
    with pytest.raises(ftplib.error_temp, match="^425"):
        f.sendcmd("NLST")
    f.quit()


def test_passive_connection_from_another_address_is_refused(ftpd, home):
    f = plain(ftpd)
    resp = f.sendcmd("EPSV")
    port = int(resp.split("|||")[1].split("|")[0])
    thief = socket.socket()
    thief.bind(("127.0.0.2", 0))
    thief.connect(("127.0.0.1", port))
    f.putcmd("RETR hello.txt")
    thief.settimeout(30)
    assert thief.recv(100) == b""  # closed without a byte
    thief.close()
    conn = socket.create_connection(("127.0.0.1", port), timeout=30)
    assert f.getresp().startswith("150")
    assert conn.makefile("rb").read() == b"line one\nline two\n"
    conn.close()
    assert f.voidresp().startswith("226")
    ftpd.wait_log("data connection from another address refused")
    f.quit()


def test_data_connection_never_opened_times_out(daemons, home, cert):
    d = daemons.start("ftpd", config(home, cert, ftp_extra="data_timeout = 1"))
    f = plain(d)
    f.sendcmd("PASV")
    with pytest.raises(ftplib.error_temp, match="^425"):
        f.sendcmd("RETR hello.txt")
    assert f.sendcmd("NOOP").startswith("200")
    f.quit()


def test_one_mib_command_line(ftpd):
    host, port = ftpd.addr("ftp")
    s = socket.create_connection((host, port), timeout=30)
    r = s.makefile("rb")
    assert r.readline().startswith(b"220")
    s.sendall(b"RETR " + b"a" * (1 << 20) + b"\r\nNOOP\r\n")
    assert r.readline().startswith(b"500")
    assert r.readline().startswith(b"200")
    s.close()


def test_abor_stops_a_running_transfer(ftpd, home):
    with open(home["alice"] / "huge", "wb") as big:
        big.truncate(256 * 1024 * 1024)
    f = plain(ftpd)
    conn = f.transfercmd("RETR huge")
    assert len(conn.recv(65536)) > 0
    resp = f.abort()  # ABOR with the Telnet urgent byte, as RFC 959 says
    assert resp.startswith("426")
    assert f.voidresp().startswith("226")
    conn.close()
    assert f.sendcmd("NOOP").startswith("200")
    ftpd.wait_log("transfer aborted by the client")
    f.quit()


def test_commands_sent_during_a_transfer_are_answered_after_it_in_order(ftpd, home):
    (home["alice"] / "big").write_bytes(os.urandom(8 * 1024 * 1024))
    f = plain(ftpd)
    conn = f.transfercmd("RETR big")
    # The transfer now waits for us to read: it is running while these arrive.
    assert len(conn.recv(65536)) > 0
    f.sock.sendall(b"PW")
    f.sock.sendall(b"D\r\n" + b"x" * 10000 + b"\r\nSYST\r\n")
    assert f.sendcmd("STAT").startswith("213 Status:")  # answered at once
    received = 0
    while chunk := conn.recv(1 << 20):
        received += len(chunk)
    conn.close()
    assert f.getline().startswith("226")
    assert f.getline() == '257 "/" is the current directory.'
    assert f.getline() == "500 Command line too long."
    assert f.getline().startswith("215")
    assert f.sendcmd("NOOP").startswith("200")
    f.quit()


def test_dropped_upload_leaves_the_partial_file_and_rest_resumes_it(ftpd, home):
    data = os.urandom(4 * 1024 * 1024)
    f = plain(ftpd)
    conn = f.transfercmd("STOR partial.bin")
    conn.sendall(data[:300_000])
    # The client vanishes mid-upload: its control connection drops while data still flows.
    f.close()
    ftpd.wait_log("partial file kept")
    conn.close()
    kept = (home["alice"] / "partial.bin").read_bytes()
    assert len(kept) <= 300_000 and kept == data[:len(kept)]
    # REST + STOR picks up where it stopped.
    f = plain(ftpd)
    offset = f.size("partial.bin")
    assert offset == len(kept)
    f.storbinary("STOR partial.bin", io.BytesIO(data[offset:]), rest=offset)
    f.quit()
    assert (home["alice"] / "partial.bin").read_bytes() == data


def test_socket_activation(daemons, home, cert):
    from support.inetkit import listening_socket
    ftp, ftps = listening_socket(), listening_socket()
    conf = config(home, cert).replace('ftp = ["127.0.0.1:0"]\nftps = ["127.0.0.1:0"]\n', "")
    d = daemons.activate("ftpd", [("ftp", ftp), ("ftps", ftps)], config=conf)
    assert d.pid
    port = ftp.getsockname()[1]
    f = ftplib.FTP()
    f.connect("127.0.0.1", port, timeout=30)
    f.login("alice", PASSWORD)
    assert "hello.txt" in f.nlst()
    f.quit()


# -- one user must not take the daemon down (issue 13, finding 7) --------------------------------

def test_fifo_in_the_root_is_refused_and_the_daemon_keeps_serving(ftpd, home):
    os.mkfifo(home["alice"] / "pipe")
    f = plain(ftpd)
    # Opening a FIFO for reading waits for a writer, for ever: RETR must answer instead.
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.retrbinary("RETR pipe", lambda b: None)
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.storbinary("STOR pipe", io.BytesIO(b"x"))
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.storbinary("APPE pipe", io.BytesIO(b"x"))
    # With a writer holding it open, the open itself succeeds: the type on the descriptor
    # is what refuses it.
    writer = os.open(home["alice"] / "pipe", os.O_RDWR | os.O_NONBLOCK)
    try:
        with pytest.raises(ftplib.error_perm, match="^550"):
            f.retrbinary("RETR pipe", lambda b: None)
    finally:
        os.close(writer)
    # Another session is served at once, and this one goes on.
    g = plain(ftpd)
    assert "pipe" in g.nlst()
    out = io.BytesIO()
    g.retrbinary("RETR hello.txt", out.write)
    assert out.getvalue() == b"line one\nline two\n"
    g.quit()
    assert f.sendcmd("NOOP").startswith("200")
    f.quit()


def test_unused_passive_port_is_closed_after_data_timeout(daemons, home, cert):
    d = daemons.start("ftpd", config(home, cert, ftp_extra="data_timeout = 1"))
    f = plain(d)
    port = int(f.sendcmd("EPSV").split("|||")[1].split("|")[0])
    d.wait_log("passive port unused")
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(("127.0.0.1", port), timeout=30).close()
    # The session knows it is gone: a transfer now asks for a new one.
    with pytest.raises(ftplib.error_temp, match="^425"):
        f.sendcmd("RETR hello.txt")
    out = io.BytesIO()
    f.retrbinary("RETR hello.txt", out.write)  # a fresh EPSV works
    assert out.getvalue() == b"line one\nline two\n"
    f.quit()


def test_passive_ports_are_capped_per_client_address(daemons, home, cert):
    d = daemons.start("ftpd", config(home, cert, ftp_extra="max_passive_per_address = 2"))
    a, b, c = plain(d), plain(d), plain(d)
    assert a.sendcmd("PASV").startswith("227")
    assert b.sendcmd("EPSV").startswith("229")
    with pytest.raises(ftplib.error_temp, match="^425 Too many passive"):
        c.sendcmd("PASV")
    # A new PASV of the same session replaces its port rather than taking another.
    assert a.sendcmd("PASV").startswith("227")
    # Another address has its own count.
    host, port = d.addr("ftp")
    other = ftplib.FTP(source_address=("127.0.0.2", 0))
    other.connect(host, port, timeout=30)
    other.login("alice", PASSWORD)
    assert other.sendcmd("PASV").startswith("227")
    other.quit()
    # A port that was used, or whose session ended, is free again.
    out = io.BytesIO()
    a.retrbinary("RETR hello.txt", out.write)
    assert out.getvalue() == b"line one\nline two\n"
    assert c.sendcmd("PASV").startswith("227")
    b.quit()
    assert a.sendcmd("PASV").startswith("227")
    for f in (a, c):
        f.quit()


def resumed_upload_under_way(f, name, rest, sent):
    """REST `rest` + STOR `name` with `sent` bytes sent; returns the data connection once the
    server says (STAT mid-transfer) it has written them all."""
    conn = f.transfercmd(f"STOR {name}", rest=rest)
    conn.sendall(sent)
    for _ in range(500):
        if f.sendcmd("STAT") == f"213 Status: {len(sent)} bytes transferred so far.":
            return conn
        time.sleep(0.01)
    raise AssertionError("the server never received the bytes sent")


@pytest.mark.parametrize("how", ["abor", "control connection lost"])
def test_interrupted_resumed_upload_cuts_the_older_longer_file(ftpd, home, how):
    # A REST + STOR over a longer file that stops early must not keep the old file's tail:
    # SIZE would tell the client to resume past what it actually sent.
    old, new = os.urandom(1024 * 1024), os.urandom(5000)
    f = plain(ftpd)
    f.storbinary("STOR big.bin", io.BytesIO(old))
    assert f.size("big.bin") == len(old)
    conn = resumed_upload_under_way(f, "big.bin", 1000, new)
    if how == "abor":
        assert f.abort().startswith("426")
        assert f.voidresp().startswith("226")
        conn.close()
    else:
        f.close()
        ftpd.wait_log("control connection lost mid-upload")
        conn.close()
        f = plain(ftpd)
    assert f.size("big.bin") == 1000 + len(new)
    f.quit()
    assert (home["alice"] / "big.bin").read_bytes() == old[:1000] + new


def test_rest_beyond_the_end_of_an_upload_is_refused(ftpd, home):
    (home["alice"] / "small").write_bytes(b"12345")
    f = plain(ftpd)
    with pytest.raises(ftplib.error_perm, match="^554"):
        f.storbinary("STOR small", io.BytesIO(b"x"), rest=4398046511104)
    assert (home["alice"] / "small").read_bytes() == b"12345"
    assert os.stat(home["alice"] / "small").st_blocks <= 8  # no hole, nothing past the end
    with pytest.raises(ftplib.error_perm, match="^554"):
        f.storbinary("STOR missing", io.BytesIO(b"x"), rest=10)
    assert not (home["alice"] / "missing").exists()
    # At the end exactly (or before it) is a resume, as before.
    f.storbinary("STOR small", io.BytesIO(b"678"), rest=5)
    assert (home["alice"] / "small").read_bytes() == b"12345678"
    # REST is for the next transfer only: a plain STOR after a refused one starts afresh.
    f.storbinary("STOR small", io.BytesIO(b"new"))
    assert (home["alice"] / "small").read_bytes() == b"new"
    f.quit()
