"""What the daemon tests set up again and again: users with the test password, mail delivered
into a user's INBOX, the config of a daemon whose sockets are on 127.0.0.1:0, and a client's
TLS context for the test certificate.

The `mailhome` fixture in tests/conftest.py builds on these.
"""

from __future__ import annotations

import functools
import ssl
import subprocess
from pathlib import Path

from support.inetkit import binary

PASSWORD = "correct horse"


@functools.cache
def _sha512_crypt() -> str:
    # Made the way the design card tells a sysadmin to (`openssl passwd -6`), once a run.
    return subprocess.run(["openssl", "passwd", "-6", PASSWORD], capture_output=True,
                          text=True, check=True).stdout.strip()


def user_line(name: str, scheme: str = "PLAIN", home: str | Path = "", extra: str = "") -> str:
    """One users-file line for `name` with PASSWORD, stored as `scheme` (PLAIN or
    SHA512-CRYPT), an optional home field and extra fields."""
    password = _sha512_crypt() if scheme == "SHA512-CRYPT" else PASSWORD
    return f"{name}:{{{scheme}}}{password}::::{home}::{extra}\n"


def write_users(path: Path, *lines: str) -> Path:
    """Writes a users file of `lines` (from user_line) and returns its path."""
    path.write_text("".join(lines))
    return path


def seed(mail_root: Path, user: str, message: bytes, users: Path | None = None) -> None:
    """Delivers a message the way a sysadmin seeds one: `inetkit deliver`. `user` must be in
    `users` (default: the file `users` beside the mail root, as the mailhome fixture has it)."""
    users = users or mail_root.parent / "users"
    subprocess.run([str(binary("inetkit")), "deliver", "--mail-root", str(mail_root),
                    "--users", str(users), user],
                   input=message, check=True, capture_output=True, timeout=30)


def message(n: int, body: str = "") -> bytes:
    """Test message number `n` for alice, with `body` after its one line of text."""
    return (f"From: Sender <sender@example.org>\r\nTo: alice@localhost\r\nSubject: message {n}\r\n"
            f"Date: Mon, 2 Mar 2026 10:00:00 +0000\r\n"
            f"Message-ID: <{n}@example.org>\r\n\r\nThis is message {n}.\r\n{body}").encode()


def tls_context(cert) -> ssl.SSLContext:
    """A client context that trusts the test certificate (`cert` fixture: cert, key)."""
    return ssl.create_default_context(cafile=str(cert[0]))


def daemon_config(sockets, users: Path, cert=None, auth: str = "", rest: str = "") -> str:
    """A daemon's config: each of `sockets` on 127.0.0.1:0 (the bound ports are in
    `Daemon.addr`), `cert` as [tls] when given, [auth] with `users` and the `auth` lines, then
    `rest` (the daemon's own sections) as it is."""
    listen = "".join(f'{name} = ["127.0.0.1:0"]\n' for name in sockets)
    tls = f'[tls]\ncert = "{cert[0]}"\nkey = "{cert[1]}"\n' if cert else ""
    return f'[listen]\n{listen}{tls}[auth]\nusers_file = "{users}"\n{auth}\n{rest}'
