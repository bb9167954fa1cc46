"""A daemon started as its unit starts it, for the benches' "installed" rows.

The shipped etc/<daemon>.toml with its /etc, /run, /var/lib and /var/log paths moved into a
temp dir; the socket bound here and handed over as systemd does (LISTEN_FDS, named as the
socket unit's FileDescriptorName=); the unit's Environment= lines and no other environment
but PATH and LANG; a TLS pair as the LoadCredential= credentials tls-cert and tls-key; logging
to a file, at the shipped config's level.

Not reproduced: the unit's User= and sandbox (its system call filter included), its cgroup
limits (MemoryHigh=, MemoryMax=, TasksMax=), LimitNOFILE= (the daemon raises its own soft limit
to the hard one), LISTEN_PID, and the journal. bench/coldstart measures what the sandbox costs
at start.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

# Where the shipped configs keep things, and where they go in the temp dir.
MOVED = (("/etc/inetkit/", "etc/"), ("/run/inetkit/", "run/"),
         ("/var/lib/inetkit/", "lib/"), ("/var/log/inetkit/", "log/"))


def shipped_config(daemon: str, workdir: Path, edits: tuple[tuple[str, str], ...] = ()) -> Path:
    """etc/`daemon`.toml with its paths moved under `workdir` (made), and `edits` (each
    (old, new) found exactly once) for what a sysadmin must set; returns the file written."""
    text = (REPO / "etc" / f"{daemon}.toml").read_text()
    for old, new in MOVED:
        (workdir / new).mkdir(parents=True, exist_ok=True)
        text = text.replace(f'"{old}', f'"{workdir}/{new}')
    for old, new in edits:
        if text.count(old) != 1:
            raise RuntimeError(f"etc/{daemon}.toml: expected {old!r} once")
        text = text.replace(old, new)
    path = workdir / f"{daemon}.toml"
    path.write_text(text)
    return path


def unit_environment(daemon: str) -> dict[str, str]:
    """The Environment= settings of units/inetkit-`daemon`.service."""
    env = {}
    for line in (REPO / "units" / f"inetkit-{daemon}.service").read_text().splitlines():
        if line.startswith("Environment="):
            name, _, value = line.removeprefix("Environment=").partition("=")
            env[name] = value
    return env


def credentials(workdir: Path, pair: tuple[Path, Path] | None = None) -> Path:
    """A directory with a TLS pair as tls-cert and tls-key (for CREDENTIALS_DIRECTORY): `pair`
    (certificate, key) copied, or a new self-signed one."""
    creds = workdir / "credentials"
    creds.mkdir(exist_ok=True)
    if pair:
        shutil.copy(pair[0], creds / "tls-cert")
        shutil.copy(pair[1], creds / "tls-key")
    else:
        subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                        "ec_paramgen_curve:P-256", "-nodes", "-days", "2", "-subj",
                        "/CN=localhost", "-keyout", str(creds / "tls-key"),
                        "-out", str(creds / "tls-cert")], check=True, capture_output=True)
    return creds


def onto_fd3(fd: int) -> None:
    """In the child: the listener as fd 3 only, as systemd passes it."""
    os.dup2(fd, 3)
    if fd != 3:
        os.close(fd)


def start(daemon: str, binary: Path, config: Path, fd_name: str, port: int, workdir: Path,
          log, pair: tuple[Path, Path] | None = None) -> subprocess.Popen:
    """inetkit-`daemon` with a listener on 127.0.0.1:`port` passed as fd 3, the unit's
    environment, and `pair` (or a new one) as its credentials; output to `log` (a file)."""
    # As systemd starts a service: little of the caller's environment (INETKIT_LOG or
    # JOURNAL_STREAM would change the daemon's logging), then the unit's.
    env = {k: v for k, v in os.environ.items() if k in ("PATH", "LANG")}
    env.update(unit_environment(daemon))
    env.update(LISTEN_FDS="1", LISTEN_FDNAMES=fd_name,
               CREDENTIALS_DIRECTORY=str(credentials(workdir, pair)))
    listener = socket.create_server(("127.0.0.1", port), backlog=1024)
    fd = listener.fileno()
    try:
        # The child closes what pass_fds leaves out after preexec_fn has run: fd 3 must be
        # named too, or the listener dup2'd there is closed when it had another number (under
        # flock(1), whose lock file is fd 3).
        return subprocess.Popen([str(binary), "-c", str(config)], env=env,
                                pass_fds=tuple({fd, 3}), preexec_fn=lambda: onto_fd3(fd),
                                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                                cwd=workdir)
    finally:
        listener.close()
