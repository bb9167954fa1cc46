"""A booted Debian 12 (bookworm) in systemd-nspawn: the sysadmin's machine for system tests.

The root is debootstrapped once and cached outside the repository (``$INETKIT_TEST_CACHE``,
default ``/var/cache/inetkit-test/bookworm-root``). Every run boots a throwaway overlay of it,
so each starts from the same clean system and nothing a run does reaches the cache.

The container shares the host's network namespace (no ``--private-network``): a socket it
listens on is reachable from the host on 127.0.0.1 and ::1, so tests talk to it with the usual
clients from outside. systemd is not PID 1 on the machines this runs on, hence
``--register=no --keep-unit`` (no machined, no scope unit); commands run inside through
``nsenter`` on the container's init.

Needs root, systemd-container (systemd-nspawn), debootstrap and util-linux (nsenter).
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SUITE = "bookworm"
# What a minbase root lacks to boot as a systemd machine and fetch packages over https.
BASE_PACKAGES = ("systemd", "systemd-sysv", "dbus", "ca-certificates")
DEFAULT_MIRROR = "http://deb.debian.org/debian"
DEFAULT_SECURITY_MIRROR = "http://deb.debian.org/debian-security"

CACHE_DIR = Path(os.environ.get("INETKIT_TEST_CACHE", "/var/cache/inetkit-test"))
MACHINE = "inetkit-test"
# The environment of commands run inside: nothing of the caller's leaks in.
INSIDE_ENV = {
    "PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "LANG": "C.UTF-8",
    "DEBIAN_FRONTEND": "noninteractive",
    "SYSTEMD_PAGER": "",
    "SYSTEMD_COLORS": "0",
}


class ContainerError(RuntimeError):
    pass


def log(message: str) -> None:
    print(f"[system-test] {message}", file=sys.stderr, flush=True)


# --- the cached root -------------------------------------------------------------------------


def host_mirrors() -> tuple[str, str]:
    """The Debian mirror and security mirror the host's apt uses for bookworm.

    Reads /etc/apt/sources.list and sources.list.d (one-line and deb822 formats); falls back
    to deb.debian.org.
    """
    mirror, security = None, None
    entries: list[tuple[list[str], list[str]]] = []  # (uris, suites)
    apt = Path("/etc/apt")
    for path in [apt / "sources.list", *sorted((apt / "sources.list.d").glob("*.list"))]:
        if path.is_file():
            for line in path.read_text().splitlines():
                words = re.sub(r"\[[^]]*\]", "", line.split("#", 1)[0]).split()
                if len(words) >= 3 and words[0] == "deb":
                    entries.append(([words[1]], [words[2]]))
    for path in sorted((apt / "sources.list.d").glob("*.sources")):
        for stanza in re.split(r"\n\s*\n", path.read_text()):
            fields = dict(
                (k.strip().lower(), v.strip())
                for k, _, v in (
                    line.partition(":")
                    for line in stanza.splitlines()
                    if line and not line.startswith("#")
                )
            )
            if "deb" in fields.get("types", "").split() and fields.get("enabled", "yes") != "no":
                entries.append((fields.get("uris", "").split(), fields.get("suites", "").split()))
    for uris, suites in entries:
        for uri in uris:
            if SUITE in suites and mirror is None:
                mirror = uri
            if f"{SUITE}-security" in suites and security is None:
                security = uri
    return (mirror or DEFAULT_MIRROR).rstrip("/"), (security or DEFAULT_SECURITY_MIRROR).rstrip("/")


@contextlib.contextmanager
def locked(path: Path, what: str):
    """An exclusive lock on `path`, waiting (and saying so) while another process holds it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"waiting for {what} ({path} is locked by another run)")
            fcntl.flock(f, fcntl.LOCK_EX)
        yield


def cached_root() -> Path:
    """The cached bookworm root, debootstrapped on first use (well under a minute)."""
    mirror, security = host_mirrors()
    root = CACHE_DIR / f"{SUITE}-root"
    stamp_text = f"suite={SUITE}\nmirror={mirror}\nsecurity={security}\npackages={','.join(BASE_PACKAGES)}\n"
    stamp = root / "etc" / "inetkit-test-root"
    with locked(CACHE_DIR / "root.lock", "the cached root"):
        if stamp.is_file() and stamp.read_text() == stamp_text:
            return root
        new = CACHE_DIR / f"{SUITE}-root.new"
        shutil.rmtree(new, ignore_errors=True)
        log(f"debootstrapping {SUITE} from {mirror} into {new} (once; cached afterwards)")
        started = time.monotonic()
        subprocess.run(
            [
                "debootstrap",
                "--variant=minbase",
                f"--include={','.join(BASE_PACKAGES)}",
                SUITE,
                str(new),
                mirror,
            ],
            check=True,
            stdout=subprocess.DEVNULL,
        )
        _configure_root(new, mirror, security)
        stamp_path = new / "etc" / "inetkit-test-root"
        stamp_path.write_text(stamp_text)
        shutil.rmtree(root, ignore_errors=True)
        new.rename(root)
        log(f"cached root ready in {time.monotonic() - started:.0f} s: {root}")
        return root


def _configure_root(root: Path, mirror: str, security: str) -> None:
    """apt sources like the host's, and package lists fetched once, so runs start quickly."""
    (root / "etc/apt/sources.list").unlink(missing_ok=True)
    (root / "etc/apt/sources.list.d/debian.sources").write_text(
        f"Types: deb\nURIs: {mirror}\nSuites: {SUITE} {SUITE}-updates\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n\n"
        f"Types: deb\nURIs: {security}\nSuites: {SUITE}-security\nComponents: main\n"
        "Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg\n"
    )
    (root / "etc/hostname").write_text(f"{MACHINE}\n")
    resolv = root / "etc/resolv.conf"
    resolv.unlink(missing_ok=True)
    shutil.copy("/etc/resolv.conf", resolv)
    subprocess.run(
        ["chroot", str(root), "apt-get", "update", "-q"],
        check=True,
        env=INSIDE_ENV,
        stdout=subprocess.DEVNULL,
    )
    subprocess.run(["chroot", str(root), "apt-get", "clean"], check=True, env=INSIDE_ENV)


# --- ports -----------------------------------------------------------------------------------


def unverified_tls() -> ssl.SSLContext:
    """A client TLS context that accepts the container's snakeoil certificate: it is
    self-signed for the container's host name, so the tests compare it with the one the
    daemon serves instead of trusting it."""
    ctx = ssl.create_default_context()
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


def busy_ports(ports) -> list[str]:
    """Which of `ports` something on the host (or a container sharing its network) holds,
    as "tcp/7"-style strings, by trying to bind each one on the wildcard address."""
    busy = []
    for port in ports:
        for kind, proto in ((socket.SOCK_STREAM, "tcp"), (socket.SOCK_DGRAM, "udp")):
            for family, addr in ((socket.AF_INET, "0.0.0.0"), (socket.AF_INET6, "::")):
                with socket.socket(family, kind) as s:
                    # As systemd binds: connections of an earlier run in TIME_WAIT are no
                    # conflict, a listening socket still is.
                    if kind == socket.SOCK_STREAM:
                        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
                    if family == socket.AF_INET6:
                        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
                    try:
                        s.bind((addr, port))
                    except OSError:
                        busy.append(f"{proto}/{port}")
                        break
    return sorted(set(busy))


# --- the booted container --------------------------------------------------------------------


class Container:
    """A booted throwaway copy of the cached root. Use as a context manager, or call
    :meth:`boot` and then always :meth:`shutdown`."""

    def __init__(self, root: Path):
        self.lower = root
        self.scratch: Path | None = None
        self.root: Path | None = None  # the container's / as seen from the host
        self.nspawn: subprocess.Popen | None = None
        self.pid: int | None = None  # the container's init, in the host's PID namespace
        self.overlay = False
        self.exit_status: int | None = None

    # lifecycle

    def __enter__(self) -> "Container":
        try:
            self.boot()
        except BaseException:
            self.shutdown()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def boot(self, timeout: float = 90) -> None:
        runs = CACHE_DIR / "runs"
        runs.mkdir(parents=True, exist_ok=True)
        self.scratch = Path(tempfile.mkdtemp(prefix="run-", dir=runs))
        self.root = self.scratch / "root"
        self.root.mkdir()
        self._make_root()
        console = open(self.scratch / "console.log", "wb")
        started = time.monotonic()
        self.nspawn = subprocess.Popen(
            [
                "systemd-nspawn",
                "--boot",
                "--register=no",
                "--keep-unit",
                f"--machine={MACHINE}",
                "--console=pipe",
                "-D",
                str(self.root),
            ],
            stdin=subprocess.DEVNULL,
            stdout=console,
            stderr=subprocess.STDOUT,
            # Its own session: a Ctrl-C at the terminal reaches pytest, which halts the
            # container in order, rather than nspawn directly.
            start_new_session=True,
        )
        console.close()
        (self.scratch / "nspawn.pid").write_text(f"{self.nspawn.pid}\n")
        self.pid = self._find_init(timeout=30)
        state = self._wait_running(deadline=started + timeout)
        log(f"container booted ({state}) in {time.monotonic() - started:.1f} s, init pid {self.pid}")
        if state != "running":
            failed = self.run("systemctl", "--failed", "--no-legend", check=False).stdout
            log(f"failed units:\n{failed}")

    def _make_root(self) -> None:
        """An overlay of the cached root (instant), or a copy where overlayfs is missing."""
        upper, work = self.scratch / "upper", self.scratch / "work"
        upper.mkdir()
        work.mkdir()
        result = subprocess.run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir={self.lower},upperdir={upper},workdir={work}",
                str(self.root),
            ],
            capture_output=True,
            text=True,
        )
        if result.returncode == 0:
            self.overlay = True
        else:
            log(f"overlayfs unavailable ({result.stderr.strip()}); copying the root instead")
            subprocess.run(
                ["cp", "-a", "--reflink=auto", f"{self.lower}/.", str(self.root)], check=True
            )

    def _find_init(self, timeout: float) -> int:
        """The container's PID 1: the `systemd` child of the nspawn process."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.nspawn.poll() is not None:
                raise ContainerError(f"systemd-nspawn exited with {self.nspawn.returncode}\n{self.console()}")
            for task in Path(f"/proc/{self.nspawn.pid}/task").glob("*"):
                with contextlib.suppress(OSError):
                    for child in (task / "children").read_text().split():
                        with contextlib.suppress(OSError):
                            if Path(f"/proc/{child}/comm").read_text().strip() == "systemd":
                                return int(child)
            time.sleep(0.05)
        raise ContainerError(f"no systemd under systemd-nspawn after {timeout} s\n{self.console()}")

    def _wait_running(self, deadline: float) -> str:
        """Waits for boot to finish; "running", or "degraded" (some unit failed)."""
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise ContainerError(f"the container did not finish booting\n{self.console()}")
            result = self.run(
                "systemctl", "is-system-running", "--wait", check=False, timeout=remaining
            )
            state = result.stdout.strip()
            if state in ("running", "degraded"):
                return state
            # Before systemd listens on its private socket, systemctl fails at once.
            time.sleep(0.1)

    def shutdown(self, timeout: float = 60) -> None:
        """Halts the container in order (SIGTERM to nspawn makes it ask init to halt), kills
        it if that takes longer than `timeout`, and removes the scratch copy. Records
        nspawn's exit status in :attr:`exit_status` (0 for a clean halt)."""
        if self.nspawn is not None and self.nspawn.poll() is None:
            self.nspawn.send_signal(signal.SIGTERM)
            try:
                self.nspawn.wait(timeout)
            except subprocess.TimeoutExpired:
                log(f"container did not halt within {timeout} s; killing it")
                self.nspawn.kill()
                self.nspawn.wait()
        if self.nspawn is not None:
            self.exit_status = self.nspawn.returncode
        if self.scratch is not None:
            remove_run(self.scratch)
            self.scratch = None

    def console(self, lines: int = 40) -> str:
        with contextlib.suppress(OSError):
            text = (self.scratch / "console.log").read_text(errors="replace")
            return "\n".join(text.splitlines()[-lines:])
        return ""

    # commands inside

    def run(
        self,
        *argv: str,
        check: bool = True,
        input: str | None = None,
        timeout: float = 120,
    ) -> subprocess.CompletedProcess:
        """Runs a command inside the container (all its namespaces, a clean environment) and
        returns the completed process with text stdout and stderr."""
        result = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", "--", *argv],
            input=input,
            capture_output=True,
            text=True,
            env=INSIDE_ENV,
            timeout=timeout,
        )
        if check and result.returncode != 0:
            raise ContainerError(
                f"inside the container: {shlex.join(argv)} exited with {result.returncode}\n"
                f"{result.stdout}{result.stderr}"
            )
        return result

    def sh(self, script: str, **kw) -> subprocess.CompletedProcess:
        return self.run("sh", "-ec", script, **kw)

    def systemctl(self, *args: str, **kw) -> str:
        return self.run("systemctl", *args, **kw).stdout.strip()

    def show(self, unit: str, *props: str) -> dict[str, str]:
        """`systemctl show -p ...` as a dict."""
        out = self.systemctl("show", unit, *(f"--property={p}" for p in props))
        return dict(line.split("=", 1) for line in out.splitlines() if "=" in line)

    def journal(self, *units: str, lines: int = 60) -> str:
        args = [f"--unit={u}" for u in units]
        return self.run(
            "journalctl", "--no-pager", "--boot", f"--lines={lines}", *args, check=False
        ).stdout

    def put(self, source: Path, dest: str, mode: int | None = None) -> None:
        """Copies a host file into the container at absolute path `dest`."""
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(source, target)
        if mode is not None:
            target.chmod(mode)

    def write(self, dest: str, text: str, mode: int = 0o644) -> None:
        target = self.root / dest.lstrip("/")
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_text(text)
        target.chmod(mode)

    def install_debs(self, *debs: Path) -> str:
        """`apt-get install ./pkg.deb` inside, as a sysadmin would: dependencies come from the
        Debian mirror. Returns apt's output."""
        names = []
        for deb in debs:
            self.put(deb, f"/root/{deb.name}")
            names.append(f"./{deb.name}")
        self.run("apt-get", "update", "-q", timeout=300)
        return self.sh(
            f"cd /root && apt-get install -y -q --no-install-recommends {' '.join(names)}",
            timeout=600,
        ).stdout


def remove_run(scratch: Path) -> None:
    """Unmounts and deletes one run's scratch directory (also one a killed run left)."""
    root = scratch / "root"
    if os.path.ismount(root):
        if subprocess.run(["umount", str(root)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(root)], check=False)
    shutil.rmtree(scratch, ignore_errors=True)


def clean_stale_runs() -> None:
    """Stops containers and removes scratch copies that killed runs left behind. Call with the
    run lock held, so no live run is touched."""
    for scratch in sorted((CACHE_DIR / "runs").glob("run-*")):
        with contextlib.suppress(OSError, ValueError):
            pid = int((scratch / "nspawn.pid").read_text())
            cmdline = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            # Only the nspawn this harness started for that very directory.
            if cmdline[0].endswith(b"systemd-nspawn") and str(scratch / "root").encode() in cmdline:
                log(f"stopping a container left by an earlier run (pid {pid})")
                os.kill(pid, signal.SIGTERM)
                for _ in range(100):
                    if not Path(f"/proc/{pid}").exists():
                        break
                    time.sleep(0.1)
                else:
                    os.kill(pid, signal.SIGKILL)
        log(f"removing {scratch} left by an earlier run")
        remove_run(scratch)


def check_host_tools() -> None:
    missing = [t for t in ("systemd-nspawn", "debootstrap", "nsenter", "nc", "openssl") if not shutil.which(t)]
    if missing:
        raise ContainerError(
            f"the system test needs {', '.join(missing)} "
            "(apt-get install systemd-container debootstrap util-linux netcat-openbsd openssl)"
        )
    if os.geteuid() != 0:
        raise ContainerError("the system test needs root (debootstrap, mounts, systemd-nspawn)")
