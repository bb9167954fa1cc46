"""Fixtures of the system test: one booted Debian 12 container per session with the inetkit
package installed, torn down at the end whatever happens.

A daemon's system test is a `test_<daemon>.py` here that takes the `inetkit` fixture (the
container with the package installed), enables its sockets, and talks to them from the host.
Run with `python3 -m pytest tests/system` as root. Environment:

  INETKIT_DEB          use this .deb instead of building one with packaging/build-deb
  INETKIT_TEST_CACHE   where the debootstrapped root and run directories live
                       (default /var/cache/inetkit-test)
"""

from __future__ import annotations

import fnmatch
import os
import signal
import subprocess
from pathlib import Path

import pytest

from .container import (
    CACHE_DIR,
    Container,
    cached_root,
    check_host_tools,
    clean_stale_runs,
    locked,
    log,
)

REPO = Path(__file__).resolve().parents[2]


def _interrupt(signum, frame):
    # pytest tears fixtures down on KeyboardInterrupt, not on a bare SIGTERM.
    raise KeyboardInterrupt(f"signal {signum}")


@pytest.fixture(scope="session")
def deb() -> Path:
    """The package under test: $INETKIT_DEB, or built from the tree by packaging/build-deb."""
    if os.environ.get("INETKIT_DEB"):
        return Path(os.environ["INETKIT_DEB"]).resolve()
    result = subprocess.run(
        [str(REPO / "packaging" / "build-deb")], capture_output=True, text=True, cwd=REPO
    )
    if result.returncode != 0:
        pytest.fail(f"packaging/build-deb failed:\n{result.stdout}{result.stderr}")
    path = Path(result.stdout.strip().splitlines()[-1])
    assert path.is_file() and fnmatch.fnmatch(path.name, "inetkit_*_amd64.deb"), path
    return path


@pytest.fixture(scope="session")
def container():
    """A freshly booted Debian 12 container; halted and removed after the session.

    Only one system test runs at a time on a machine (they would fight over the ports).
    """
    check_host_tools()
    previous = signal.signal(signal.SIGTERM, _interrupt)
    try:
        with locked(CACHE_DIR / "run.lock", "another system test to finish"):
            clean_stale_runs()
            root = cached_root()
            c = Container(root)
            try:
                c.boot()
                yield c
            finally:
                c.shutdown()
                log(f"container halted, systemd-nspawn exit status {c.exit_status}")
            if c.exit_status != 0:
                pytest.fail(
                    f"the container did not halt cleanly (nspawn exit {c.exit_status}):\n"
                    f"{c.console()}"
                )
    finally:
        signal.signal(signal.SIGTERM, previous)


@pytest.fixture(scope="session")
def inetkit(container, deb):
    """The container with the inetkit package installed through apt.

    `container.after_install` records each packaged unit's (is-enabled, is-active) right after
    the installation, before any test enables anything.
    """
    log(f"installing {deb.name}")
    container.install_debs(deb)
    units = [
        Path(f).name
        for f in container.run("dpkg-query", "-L", "inetkit").stdout.split()
        if f.startswith("/usr/lib/systemd/system/")
    ]
    # What the package created, before any test adds users or mail.
    container.files_after_install = container.run(
        "stat", "-c", "%a %U %G %s", "/var/lib/inetkit", "/etc/inetkit/users"
    ).stdout.splitlines()
    container.after_install = {
        unit: (
            container.systemctl("is-enabled", unit, check=False),
            container.systemctl("is-active", unit, check=False),
        )
        for unit in units
    }
    return container


def pytest_configure(config):
    config.addinivalue_line("markers", "last: run after every other system test")


def pytest_collection_modifyitems(items):
    # Tests that remove or replace the package run once every daemon's tests are done.
    items.sort(key=lambda item: item.get_closest_marker("last") is not None)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item, call):
    """A failing system test reports the inetkit units' journal beside its traceback."""
    report = yield
    c = getattr(item, "funcargs", {}).get("container")
    if report.failed and c is not None and c.pid is not None:
        try:
            report.sections.append(("journal of inetkit units", c.journal("inetkit-*", lines=30)))
        except Exception as err:  # the container may be the thing that broke
            report.sections.append(("journal of inetkit units", f"unavailable: {err}"))
    return report
