"""What .ci/install (run by .ci/run before the tests) leaves on the host: the peers the tests and
benchmarks start themselves are installed but none is enabled for the next boot, and the host's
resolver is untouched (unbound's resolvconf hook masked, resolvconf not pulled in)."""

from __future__ import annotations

import subprocess

import pytest

PEERS = {
    "dovecot-core": "dovecot.service",
    "postfix": "postfix.service",
    "vsftpd": "vsftpd.service",
    "nsd": "nsd.service",
    "unbound": "unbound.service",
    "xinetd": "xinetd.service",
    "slapd": "slapd.service",
    "postgresql": "postgresql.service",
}


def _installed(package: str) -> bool:
    status = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True
    ).stdout
    return status.endswith("ok installed")


def _is_enabled(unit: str) -> str:
    # Works without a running systemd: it reads the enablement links (xinetd's through
    # systemd-sysv-install, which also says "enabled"/"disabled").
    return subprocess.run(["systemctl", "is-enabled", unit], capture_output=True, text=True).stdout.strip()


@pytest.mark.parametrize("package", sorted(PEERS))
def test_peer_is_installed_but_not_enabled(package):
    if not _installed(package):
        pytest.skip(f"{package} is not installed here (run .ci/install)")
    state = _is_enabled(PEERS[package])
    assert state in ("disabled", "masked"), f"{PEERS[package]} is {state}: run .ci/install"


def test_unbound_does_not_take_over_the_resolver():
    if not _installed("unbound"):
        pytest.skip("unbound is not installed here (run .ci/install)")
    assert _is_enabled("unbound-resolvconf.service") == "masked", "run .ci/install"
    for package in ("resolvconf", "openresolv"):
        assert not _installed(package), f"{package} manages /etc/resolv.conf; .ci/install must not pull it in"
    with open("/etc/resolv.conf") as f:
        servers = [line.split()[1] for line in f if line.startswith("nameserver ") and len(line.split()) > 1]
    # unbound's hook registers exactly "nameserver 127.0.0.1"; a host whose own resolver is a
    # local one (systemd-resolved's 127.0.0.53) is left as it is.
    assert servers != ["127.0.0.1"], "/etc/resolv.conf points at a local unbound"
