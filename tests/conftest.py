import sys
from pathlib import Path
from typing import NamedTuple

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from support.homes import user_line, write_users  # noqa: E402
from support.inetkit import Daemon, make_cert  # noqa: E402


@pytest.fixture
def daemons(tmp_path):
    """Starts daemons for one test and always stops them afterwards."""
    started = []

    class Factory:
        workdir = tmp_path

        def start(self, name, config, **kw):
            d = Daemon.start(name, config, tmp_path, **kw)
            started.append(d)
            return d

        def activate(self, name, sockets, **kw):
            d = Daemon.activate(name, sockets, tmp_path, **kw)
            started.append(d)
            return d

    yield Factory()
    for d in started:
        d.stop()


@pytest.fixture(scope="session")
def cert(tmp_path_factory):
    """A self-signed certificate for CN=localhost: (cert path, key path)."""
    return make_cert(tmp_path_factory.mktemp("tls"))


class MailHome(NamedTuple):
    """`users`: a users file with alice (SHA512-CRYPT, as `openssl passwd -6` makes it) and
    bob (PLAIN), both with support.homes.PASSWORD; `mail`: an empty mail root. Both are in
    the test's tmp_path."""
    users: Path
    mail: Path


@pytest.fixture
def mailhome(tmp_path) -> MailHome:
    users = write_users(tmp_path / "users", user_line("alice", "SHA512-CRYPT"), user_line("bob"))
    mail = tmp_path / "mail"
    mail.mkdir()
    return MailHome(users, mail)
