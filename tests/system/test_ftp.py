"""System test of inetkit-ftpd: install, enable the sockets, add a user with `inetkit user add`,
then upload and download from the host through the socket-activated unit: plain FTP from
loopback, AUTH TLS with PROT P (the data connection resuming the control session), and
implicit TLS on port 990, with the snakeoil certificate."""

from __future__ import annotations

import ftplib
import io
import os
import re
import ssl
import time

import pytest

from .container import busy_ports, unverified_tls

SERVICE = "inetkit-ftpd.service"
SOCKETS = ("inetkit-ftpd.socket", "inetkit-ftps.socket")
PASSWORD = "ftp system test"
USER = "ftpsys"



class ReuseFTP_TLS(ftplib.FTP_TLS):
    """Data connections resume the control connection's TLS session, as the server demands."""

    def ntransfercmd(self, cmd, rest=None):
        conn, size = ftplib.FTP.ntransfercmd(self, cmd, rest)
        if self._prot_p:
            conn = self.context.wrap_socket(conn, server_hostname=self.host,
                                            session=self.sock.session)
        return conn, size


class ImplicitFTP_TLS(ReuseFTP_TLS):
    """FTPS on port 990: TLS from the first byte."""

    def connect(self, host, port, timeout=30):
        self.host, self.port, self.timeout = host, port, timeout
        import socket
        raw = socket.create_connection((host, port), timeout)
        self.sock = self.context.wrap_socket(raw, server_hostname=host)
        self.af = self.sock.family
        self.file = self.sock.makefile("r", encoding=self.encoding)
        self.welcome = self.getresp()
        return self.welcome


@pytest.fixture(scope="module")
def ftp(inetkit):
    busy = busy_ports([21, 990])
    assert not busy, f"something on the host holds {busy} (vsftpd?); stop it"
    c = inetkit
    c.run("inetkit", "user", "add", USER, input=PASSWORD + "\n")
    c.systemctl("enable", "--now", *SOCKETS)
    yield c
    c.systemctl("disable", "--now", *SOCKETS, SERVICE)
    # Leave the users file as the package made it, for the tests that check it.
    c.run("inetkit", "user", "del", USER)


def test_tls_upload_and_download_through_the_socket_unit(ftp):
    f = ReuseFTP_TLS(context=unverified_tls(), timeout=30)
    f.connect("127.0.0.1", 21)
    f.auth()
    snakeoil = ftp.run("cat", "/etc/ssl/certs/ssl-cert-snakeoil.pem").stdout
    assert f.sock.getpeercert(binary_form=True) == ssl.PEM_cert_to_DER_cert(snakeoil)
    f.login(USER, PASSWORD)
    f.prot_p()
    data = os.urandom(1024 * 1024 + 5)
    f.storbinary("STOR upload.bin", io.BytesIO(data))
    out = io.BytesIO()
    f.retrbinary("RETR upload.bin", out.write)
    assert out.getvalue() == data
    f.quit()
    assert ftp.systemctl("is-active", SERVICE) == "active"
    # The file sits in the user's root, made on first login, owned by inetkit.
    size = ftp.run("stat", "-c", "%s %U", "/var/lib/inetkit/ftp/ftpsys/upload.bin").stdout.split()
    assert size == [str(len(data)), "inetkit"]


def test_plain_download_from_loopback_and_implicit_tls(ftp):
    ftp.write("/var/lib/inetkit/ftp/ftpsys/hello.txt", "hello from the container\n")
    ftp.run("chown", "inetkit:inetkit", "/var/lib/inetkit/ftp/ftpsys/hello.txt")
    f = ftplib.FTP()
    f.connect("127.0.0.1", 21, timeout=30)
    f.login(USER, PASSWORD)
    out = io.BytesIO()
    f.retrbinary("RETR hello.txt", out.write)
    assert out.getvalue() == b"hello from the container\n"
    f.quit()
    f = ImplicitFTP_TLS(context=unverified_tls(), timeout=30)
    f.connect("127.0.0.1", 990)
    f.login(USER, PASSWORD)
    f.prot_p()
    assert "hello.txt" in f.nlst()
    f.quit()


def test_confined_to_the_root(ftp):
    f = ftplib.FTP()
    f.connect("127.0.0.1", 21, timeout=30)
    f.login(USER, PASSWORD)
    with pytest.raises(ftplib.error_perm, match="^550"):
        f.retrbinary("RETR ../../../../etc/passwd", lambda b: None)
    f.quit()


def test_hardening_exposure(ftp):
    out = ftp.run("systemd-analyze", "security", "--no-pager", SERVICE).stdout
    exposure = float(re.search(rf"Overall exposure level for {SERVICE}: ([0-9.]+)", out)[1])
    print(f"{SERVICE} exposure {exposure}")
    assert exposure <= 1.5, out


def test_xferlog_in_var_log_and_its_logrotate_reload(ftp):
    """The unit provides /var/log/inetkit; the shipped logrotate config's reload makes the
    daemon open the transfer log again, so the next line starts the new file."""
    c = ftp
    config = "/etc/inetkit/ftpd.toml"
    original = c.run("cat", config).stdout
    assert '\n#xferlog = "/var/log/inetkit/xferlog"\n' in original
    c.write(config, original.replace('\n#xferlog = ', '\nxferlog = '))
    c.systemctl("stop", SERVICE)
    try:
        def transfer(name: str) -> None:
            f = ftplib.FTP()
            f.connect("127.0.0.1", 21, timeout=30)
            f.login(USER, PASSWORD)
            f.storbinary(f"STOR {name}", io.BytesIO(b"x" * 33))
            f.quit()

        transfer("before.bin")
        c.run("mv", "/var/log/inetkit/xferlog", "/var/log/inetkit/xferlog.1")
        # What the logrotate config's postrotate runs.
        rotate = c.run("cat", "/etc/logrotate.d/inetkit-ftpd").stdout
        postrotate = rotate.split("postrotate", 1)[1].split("endscript", 1)[0].strip()
        c.sh(postrotate)
        # The reload signals the daemon and returns; the reopened file appears when it is done.
        for _ in range(100):
            if c.run("test", "-e", "/var/log/inetkit/xferlog", check=False).returncode == 0:
                break
            time.sleep(0.1)
        transfer("after.bin")
        old = c.run("cat", "/var/log/inetkit/xferlog.1").stdout.splitlines()
        new = c.run("cat", "/var/log/inetkit/xferlog").stdout.splitlines()
        assert len(old) == 1 and " 33 /before.bin b _ i r ftpsys ftp 0 * c" in old[0], old
        assert len(new) == 1 and " 33 /after.bin b _ i r ftpsys ftp 0 * c" in new[0], new
        assert c.run("stat", "-c", "%U %a", "/var/log/inetkit").stdout.split() == ["inetkit", "750"]
    finally:
        c.write(config, original)
        c.systemctl("stop", SERVICE)
        c.run("rm", "-f", "/var/log/inetkit/xferlog", "/var/log/inetkit/xferlog.1")
