"""Real directory servers for the directory-backend tests and the login benchmark: OpenLDAP's
slapd and PostgreSQL, from Debian's packages, started unprivileged in a temp dir on loopback.

Each can be stopped and started again on the same address (the "directory down" tests).
`Slapd.available()` / `Postgres.available()` say why not when the binaries are missing.
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
from pathlib import Path

from support.inetkit import connect_when_listening, free_port

SUFFIX = "dc=example,dc=org"
ADMIN_DN = f"cn=admin,{SUFFIX}"
ADMIN_PASSWORD = "directory admin"
PEOPLE = f"ou=people,{SUFFIX}"


def _unprivileged_user() -> str | None:
    """PostgreSQL refuses to run as root: as root, run it as `postgres` (or `nobody`)."""
    if os.geteuid() != 0:
        return None
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
            return name
        except KeyError:
            continue
    return None


def make_ca_and_server_cert(directory: Path) -> tuple[Path, Path, Path]:
    """A CA and a certificate for 127.0.0.1 and localhost that it signed (webpki will not take a
    self-signed CA certificate as the server's own): (CA, certificate, key)."""
    directory.mkdir(parents=True, exist_ok=True)

    def run(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)

    run("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-days", "30", "-subj", "/CN=test CA", "-keyout", "ca.key", "-out", "ca.pem")
    run("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
        "-subj", "/CN=localhost", "-keyout", "server.key", "-out", "server.csr")
    (directory / "ext").write_text(
        "subjectAltName=DNS:localhost,IP:127.0.0.1\nbasicConstraints=CA:FALSE\n")
    run("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
        "-CAcreateserial", "-days", "30", "-extfile", "ext", "-out", "server.pem")
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


class Slapd:
    """slapd with a slapd.conf of its own (mdb under `workdir`), the users loaded with slapadd
    before it starts; ldap:// on `port` and, with `cert` (certificate, key), ldaps:// on `tls_port` and StartTLS."""

    BIN = "/usr/sbin/slapd"
    SLAPADD = "/usr/sbin/slapadd"
    SCHEMA = Path("/etc/ldap/schema")

    @classmethod
    def available(cls) -> str | None:
        """None when slapd can run here, else why not."""
        for path in (cls.BIN, cls.SLAPADD, cls.SCHEMA / "nis.schema"):
            if not Path(path).exists():
                return f"{path} is missing (Debian packages slapd and ldap-utils)"
        return None

    def __init__(self, workdir: Path, users: list[tuple[str, str, str, str]], cert=None):
        """`users`: (uid, userPassword, homeDirectory, description as the quota)."""
        self.dir = workdir / "slapd"
        (self.dir / "db").mkdir(parents=True)
        self.port = free_port()
        self.tls_port = free_port() if cert else None
        self.proc: subprocess.Popen | None = None
        tls = ""
        if cert:
            tls = f"TLSCertificateFile {cert[0]}\nTLSCertificateKeyFile {cert[1]}\n"
        self.conf = self.dir / "slapd.conf"
        self.conf.write_text(
            "".join(f"include {self.SCHEMA}/{s}.schema\n"
                    for s in ("core", "cosine", "nis", "inetorgperson"))
            + f"pidfile {self.dir}/slapd.pid\nmodulepath /usr/lib/ldap\nmoduleload back_mdb\n"
            + tls
            + f'database mdb\nsuffix "{SUFFIX}"\nrootdn "{ADMIN_DN}"\n'
            + f'rootpw "{ADMIN_PASSWORD}"\ndirectory {self.dir}/db\nmaxsize 10485760\n'
            # Users may bind and read themselves; nobody else but the admin reads passwords.
            + "access to attrs=userPassword by self read by anonymous auth by * none\n"
            + "access to * by * read\n")
        ldif = [f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\n"
                "o: Example\ndc: example\n",
                f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people\n"]
        for n, (uid, password, home, quota) in enumerate(users):
            ldif.append(
                f"dn: uid={uid},{PEOPLE}\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\n"
                f"uid: {uid}\ncn: {uid}\nsn: {uid}\nuidNumber: {2000 + n}\ngidNumber: 2000\n"
                f"homeDirectory: {home}\nuserPassword: {password}\ndescription: {quota}\n")
        (self.dir / "users.ldif").write_text("\n".join(ldif))
        subprocess.run([self.SLAPADD, "-f", str(self.conf), "-l", str(self.dir / "users.ldif")],
                       check=True, capture_output=True, timeout=60)

    @property
    def url(self) -> str:
        return f"ldap://127.0.0.1:{self.port}"

    @property
    def tls_url(self) -> str:
        return f"ldaps://127.0.0.1:{self.tls_port}"

    def start(self) -> "Slapd":
        urls = f"ldap://127.0.0.1:{self.port}/"
        if self.tls_port:
            urls += f" ldaps://127.0.0.1:{self.tls_port}/"
        # -d keeps it in the foreground (no fork), so it is ours to stop.
        self.proc = subprocess.Popen([self.BIN, "-f", str(self.conf), "-h", urls, "-d", "0"],
                                     stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                     stderr=open(self.dir / "slapd.log", "ab"))
        connect_when_listening(self.port, timeout=20).close()
        return self

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=30)
        self.proc = None


class Postgres:
    """A PostgreSQL cluster made by initdb under `workdir`, listening on a loopback port and
    a Unix socket in its directory, trust authentication, database `mail`."""

    @classmethod
    def bindir(cls) -> Path | None:
        for candidate in sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True):
            if (candidate / "initdb").exists():
                return candidate
        found = shutil.which("initdb")
        return Path(found).resolve().parent if found else None

    @classmethod
    def available(cls) -> str | None:
        if cls.bindir() is None:
            return "initdb is missing (Debian package postgresql)"
        if os.geteuid() == 0 and _unprivileged_user() is None:
            return "running as root with no postgres or nobody user to run PostgreSQL as"
        return None

    def __init__(self, workdir: Path, sql: str):
        bindir = self.bindir()
        assert bindir is not None
        self.bin = bindir
        self.dir = workdir / "postgres"
        self.data = self.dir / "data"
        self.dir.mkdir(parents=True)
        self.port = free_port()
        self.as_user = _unprivileged_user()
        if self.as_user:
            shutil.chown(self.dir, self.as_user)
            # The user must reach its directory through the test's tmp path.
            for parent in self.dir.parents:
                if parent == Path("/"):
                    break
                os.chmod(parent, os.stat(parent).st_mode | 0o011)
        self._run([self.bin / "initdb", "-D", str(self.data), "-U", "inetkit", "-A", "trust",
                   "--no-sync", "-E", "UTF8"])
        self.start()
        self._run([self.bin / "psql", "-h", str(self.dir), "-p", str(self.port), "-U", "inetkit",
                   "-d", "postgres", "-q", "-c", "CREATE DATABASE mail"])
        self._run([self.bin / "psql", "-h", str(self.dir), "-p", str(self.port), "-U", "inetkit",
                   "-d", "mail", "-q", "-v", "ON_ERROR_STOP=1", "-c", sql])

    def _run(self, argv, **kw):
        argv = [str(a) for a in argv]
        if self.as_user:
            argv = ["runuser", "-u", self.as_user, "--", *argv]
        done = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                              cwd=self.dir, **kw)
        if done.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: exit {done.returncode}: {done.stderr}")
        return done

    @property
    def connection(self) -> str:
        """The connection string over TCP."""
        return f"host=127.0.0.1 port={self.port} dbname=mail user=inetkit sslmode=disable"

    @property
    def socket_connection(self) -> str:
        """The same over the Unix socket."""
        return f"host={self.dir} port={self.port} dbname=mail user=inetkit"

    def start(self) -> "Postgres":
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off"
        self._run([self.bin / "pg_ctl", "-D", str(self.data), "-l", str(self.dir / "log"),
                   "-o", options, "-w", "start"])
        return self

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run([self.bin / "pg_ctl", "-D", str(self.data), "-m", "immediate", "-w",
                       "stop"])
