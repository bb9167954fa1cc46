"""Start the real inetkit binaries for tests, the way systemd or a sysadmin would.

Two ways in, as in production:
- `Daemon.start(...)`: the daemon binds the sockets of its config itself. Every address is
  `127.0.0.1:0`; the bound ports are read from its "listening" log lines.
- `Daemon.activate(...)`: the test binds the sockets and passes them as fds 3.. with
  LISTEN_FDS/LISTEN_FDNAMES/LISTEN_PID, exactly as systemd's socket activation does.

Either way the daemon gets a NOTIFY_SOCKET the test reads, so `start` returns once the daemon
said READY=1, and tests can check STATUS=, WATCHDOG=1 and STOPPING=1.
"""

from __future__ import annotations

import os
import re
import signal
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(os.environ.get("INETKIT_BIN", ROOT / "target" / "release"))

LISTENING = re.compile(r"listening \((tcp|udp)\) socket=(\S+) address=(\S+)")

# Runs as the daemon's own process: puts the passed sockets at fds 3.. and sets LISTEN_PID to
# its pid, which exec keeps, so the daemon sees what systemd would have given it.
_ACTIVATE = r"""
import os, sys
fds = [int(f) for f in sys.argv[1].split(",") if f]
tmp = [os.dup(f) for f in fds]
for i, f in enumerate(tmp):
    os.dup2(f, 3 + i)
    os.set_inheritable(3 + i, True)
# The originals (kept open and inheritable by pass_fds) would leak into the daemon as extra
# copies of its sockets, which systemd never gives it.
for f in fds:
    if not 3 <= f < 3 + len(fds):
        os.close(f)
os.environ["LISTEN_PID"] = str(os.getpid())
if "WATCHDOG_USEC" in os.environ:
    os.environ["WATCHDOG_PID"] = str(os.getpid())
os.execv(sys.argv[2], sys.argv[2:])
"""


# The daemons with an [auth] section, and so a login guard.
LOGIN_DAEMONS = frozenset({"pop3d", "imapd", "smtp-submit", "ftpd", "rpcd"})
GUARD_STATE_KEY = re.compile(r"^\s*guard_state\s*=", re.MULTILINE)
AUTH_HEADER = re.compile(r"^\[auth\][ \t]*(#.*)?\n", re.MULTILINE)


def own_guard_state(name: str, config: str, workdir: Path) -> str:
    """`config` with `[auth] guard_state` set to a file in `workdir` (one per daemon name), so
    a test never counts failed logins in the host's /run/inetkit/login-guard nor in another
    test's. A config that sets guard_state itself keeps it."""
    if name not in LOGIN_DAEMONS or GUARD_STATE_KEY.search(config):
        return config
    line = f'guard_state = "{workdir / f"login-guard-{name}"}"\n'
    header = AUTH_HEADER.search(config)
    if header:
        return config[:header.end()] + line + config[header.end():]
    if config and not config.endswith("\n"):
        config += "\n"
    return f"{config}[auth]\n{line}"


def own_guard_state_in(argv: list[str], workdir: Path) -> None:
    """Gives the login daemon that `argv` runs (`inetkit-<name> ... -c <config>`) a guard
    state file of its own in `workdir`, written into its config (see own_guard_state)."""
    for i, arg in enumerate(argv):
        name = Path(arg).name.removeprefix("inetkit-")
        if name in LOGIN_DAEMONS and Path(arg).name != name and "-c" in argv[i + 1:-1]:
            conf = Path(argv[argv.index("-c", i + 1) + 1])
            text = conf.read_text()
            guarded = own_guard_state(name, text, workdir)
            if guarded != text:
                conf.write_text(guarded)
            return


def binary(name: str) -> Path:
    path = BIN / name
    if not path.exists():
        raise RuntimeError(f"{path} is missing: run `cargo build --release` first")
    return path


def free_port(kind=socket.SOCK_STREAM) -> int:
    with socket.socket(socket.AF_INET, kind) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def recv_exact(sock: socket.socket, n: int) -> bytes:
    """`n` bytes from `sock`, or fewer if it closes first."""
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            break
        data += chunk
    return data


def accept_yes(daemon: str, config: Path, fdname: str) -> tuple[subprocess.Popen, int]:
    """`systemd-socket-activate --accept` on a free loopback port, starting inetkit-`daemon`
    for each connection as an Accept=yes socket unit does; the activator and the port."""
    port = free_port()
    activator = subprocess.Popen(
        ["systemd-socket-activate", "--accept", "-l", f"127.0.0.1:{port}", f"--fdname={fdname}",
         str(binary(f"inetkit-{daemon}")), "-c", str(config)],
        stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    return activator, port


def connect_when_listening(port: int, timeout: float = 10.0) -> socket.socket:
    """A connection to 127.0.0.1:`port`, tried until something listens there (an activator,
    a peer server that has just been started)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return socket.create_connection(("127.0.0.1", port), timeout=2)
        except OSError:
            assert time.monotonic() < deadline, f"nothing listens on port {port}"
            time.sleep(0.05)


def close_serving(sock: socket.socket, thread: threading.Thread) -> None:
    """Closes `sock`, which `thread` blocks on (recv, accept): wakes the thread with shutdown()
    and waits for it first, so it never goes on reading the descriptor number the next socket
    reuses (and takes, say, a daemon's READY=1 from its NOTIFY_SOCKET)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # an unconnected UDP socket says ENOTCONN, but its reader is woken all the same
    thread.join(timeout=10)
    sock.close()


class Notifications:
    """The NOTIFY_SOCKET end: collects what the daemon sends with sd_notify."""

    def __init__(self, directory: Path):
        self.directory = directory
        self.path = str(directory / f"notify-{os.getpid()}-{id(self)}.sock")
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(self.path)
        self.messages: list[str] = []
        self._cond = threading.Condition()
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self):
        while True:
            try:
                data = self.sock.recv(4096)
            except OSError:
                return
            if not data:  # shut down by close(); sd_notify never sends an empty datagram
                return
            with self._cond:
                self.messages.extend(data.decode(errors="replace").splitlines())
                self._cond.notify_all()

    def wait_for(self, prefix: str, timeout: float = 10.0) -> str:
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for m in self.messages:
                    if m.startswith(prefix):
                        return m
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"no {prefix!r} from the daemon; got {self.messages}")
                self._cond.wait(left)

    def seen(self, prefix: str) -> bool:
        with self._cond:
            return any(m.startswith(prefix) for m in self.messages)

    def close(self):
        # Wake the reader and wait for it before the descriptor is freed: a reader about to
        # call recv() on a closed number would otherwise read the next daemon's socket, which
        # reuses it, and take its READY=1 (seen as "never became ready" on a loaded machine).
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._thread.join(timeout=10)
        self.sock.close()
        shutil.rmtree(self.directory, ignore_errors=True)


class Daemon:
    def __init__(self, proc: subprocess.Popen, notify: Notifications, log_path: Path):
        self.proc = proc
        self.notify = notify
        self.log_path = log_path
        self.lines: list[str] = []
        self.addresses: dict[tuple[str, str], list[tuple[str, int]]] = {}
        self._cond = threading.Condition()
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()

    # -- starting ---------------------------------------------------------------------------

    @classmethod
    def start(cls, name: str, config: str, workdir: Path, env: dict | None = None,
              args: tuple = (), host: "RemoteHost | None" = None) -> "Daemon":
        """Runs `inetkit-<name> -c <config>`; the config binds its own sockets. With `host`,
        the daemon runs on that host (its network namespace and host name)."""
        conf = workdir / (f"{name}.toml" if host is None else f"{name}-{host.hostname}.toml")
        conf.write_text(config)
        argv = [str(binary(f"inetkit-{name}")), "-c", str(conf), *args]
        if host is not None:
            argv = host.command(argv)
        return cls._spawn(argv, workdir, env or {}, pass_fds=())

    @classmethod
    def activate(cls, name: str, sockets: list[tuple[str, socket.socket]], workdir: Path,
                 config: str = "", env: dict | None = None) -> "Daemon":
        """Runs the daemon with `sockets` passed as systemd would, named as given."""
        conf = workdir / f"{name}.toml"
        conf.write_text(config)
        fds = [s.fileno() for _, s in sockets]
        env = dict(env or {})
        env["LISTEN_FDS"] = str(len(sockets))
        env["LISTEN_FDNAMES"] = ":".join(n for n, _ in sockets)
        argv = [sys.executable, "-c", _ACTIVATE, ",".join(map(str, fds)),
                str(binary(f"inetkit-{name}")), "-c", str(conf)]
        return cls._spawn(argv, workdir, env, pass_fds=tuple(fds))

    @classmethod
    def _spawn(cls, argv, workdir: Path, env: dict, pass_fds) -> "Daemon":
        own_guard_state_in(argv, workdir)
        notify = Notifications(Path(tempfile.mkdtemp(prefix="notify-", dir="/tmp")))
        full_env = {k: v for k, v in os.environ.items()
                    if not k.startswith(("LISTEN_", "NOTIFY_", "WATCHDOG_", "JOURNAL_"))}
        full_env.update({"NOTIFY_SOCKET": notify.path, "INETKIT_LOG": "debug"})
        full_env.update(env)
        log_path = workdir / f"daemon-{len(list(workdir.glob('daemon-*.log')))}.log"
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                stderr=subprocess.PIPE, env=full_env, pass_fds=pass_fds)
        daemon = cls(proc, notify, log_path)
        try:
            notify.wait_for("READY=1", timeout=20)
        except TimeoutError:
            daemon.stop()
            raise RuntimeError(f"daemon never became ready; log:\n{daemon.log()}")
        return daemon

    # -- the log ----------------------------------------------------------------------------

    def _read_log(self):
        with open(self.log_path, "w") as out:
            for raw in self.proc.stderr:
                line = raw.decode(errors="replace").rstrip("\n")
                out.write(line + "\n")
                out.flush()
                with self._cond:
                    self.lines.append(line)
                    m = LISTENING.search(line)
                    if m:
                        kind, name, addr = m.groups()
                        host, port = addr.rsplit(":", 1)
                        self.addresses.setdefault((name, kind), []).append(
                            (host.strip("[]"), int(port)))
                    self._cond.notify_all()

    def log(self) -> str:
        with self._cond:
            return "\n".join(self.lines)

    def wait_log(self, pattern: str, timeout: float = 10.0) -> str:
        regex = re.compile(pattern)
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for line in self.lines:
                    if regex.search(line):
                        return line
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"log never matched {pattern!r}:\n" + "\n".join(self.lines))
                self._cond.wait(left)

    def addr(self, name: str, kind: str = "tcp") -> tuple[str, int]:
        """The address the daemon bound for socket `name` (start() only)."""
        deadline = time.monotonic() + 10
        with self._cond:
            while (name, kind) not in self.addresses:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise KeyError(f"no {kind} socket {name!r} in the log:\n" + "\n".join(self.lines))
                self._cond.wait(left)
            return self.addresses[(name, kind)][0]

    # -- process ----------------------------------------------------------------------------

    @property
    def pid(self) -> int:
        return self.proc.pid

    def rss_kib(self) -> int:
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise RuntimeError("no VmRSS")

    def signal(self, sig: int):
        self.proc.send_signal(sig)

    def wait(self, timeout: float = 30.0) -> int:
        return self.proc.wait(timeout=timeout)

    def stop(self, timeout: float = 10.0) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(timeout=5)
        self.notify.close()
        return self.proc.returncode


def listening_socket(kind: str = "tcp", host: str = "127.0.0.1") -> socket.socket:
    """A socket bound on a free loopback port, as a .socket unit would make it."""
    if kind == "tcp":
        s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((host, 0))
        s.listen(128)
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((host, 0))
    return s


def make_cert(directory: Path, cn: str = "localhost") -> tuple[Path, Path]:
    """A self-signed certificate and key made with the openssl command line."""
    cert, key = directory / f"{cn}.pem", directory / f"{cn}.key"
    subprocess.run(
        ["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
         "-nodes", "-days", "30", "-subj", f"/CN={cn}",
         "-addext", f"subjectAltName=DNS:{cn},IP:127.0.0.1",
         "-keyout", str(key), "-out", str(cert)],
        check=True, capture_output=True)
    return cert, key


class RemoteHost:
    """A second host on a private link, in a network namespace this test run makes: a client
    whose address is not loopback, for the policies that treat loopback differently.

    The host side is 10.199.<n>.1, the remote side 10.199.<n>.2; `run()` executes a command on
    the remote side."""

    def __init__(self, index: int = 0):
        self.name = f"inetkit-remote-{os.getpid()}-{index}"
        self.host_if = f"ikh{os.getpid() % 100000}{index}"
        self.local = f"10.199.{index}.1"
        self.remote = f"10.199.{index}.2"
        self.hostname = f"remote{index}.test"

    def __enter__(self) -> "RemoteHost":
        ip = lambda *a: subprocess.run(["ip", *a], check=True, capture_output=True)
        ip("netns", "add", self.name)
        try:
            ip("link", "add", self.host_if, "type", "veth", "peer", "name", "remote0",
               "netns", self.name)
            ip("addr", "add", f"{self.local}/30", "dev", self.host_if)
            ip("link", "set", self.host_if, "up")
            ip("-n", self.name, "addr", "add", f"{self.remote}/30", "dev", "remote0")
            ip("-n", self.name, "link", "set", "remote0", "up")
            ip("-n", self.name, "link", "set", "lo", "up")
        except Exception:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc) -> None:
        # Deleting the namespace deletes the veth pair with it.
        subprocess.run(["ip", "netns", "del", self.name], capture_output=True)

    def run(self, argv: list[str], **kw) -> subprocess.CompletedProcess:
        return subprocess.run(["ip", "netns", "exec", self.name, *argv], **kw)

    def command(self, argv: list[str]) -> list[str]:
        """`argv` run on the remote side under the host name `hostname` (a UTS namespace of its
        own), as the same process: `ip netns exec`, `unshare` and `sh` each exec the next."""
        return ["ip", "netns", "exec", self.name, "unshare", "--uts", "--", "sh", "-c",
                'hostname "$0" && exec "$@"', self.hostname, *argv]
