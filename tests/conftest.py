import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

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
