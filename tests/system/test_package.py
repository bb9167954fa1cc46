"""System test of the Debian package as a whole: what `apt install ./inetkit_*.deb` leaves on a
fresh Debian 12, for every daemon it ships, and that removing and purging it is clean."""

from __future__ import annotations

import socket
import subprocess

import pytest

from .container import busy_ports


def test_lintian_finds_nothing_not_even_info_tags(deb):
    # -I shows the info tags too: each is fixed or overridden, with the reason, in
    # packaging/lintian-overrides (an override that no longer matches is itself a tag).
    # Except spelling-error-in-binary: in compiled Rust it fires on runs of machine-code bytes
    # that happen to spell a misspelt word ("wTH", "thIk"), different ones with each build, so
    # an override for each went stale as soon as the code changed. Our own text (man pages,
    # docs, unit files) is still checked for spelling.
    result = subprocess.run(
        ["lintian", "-I", "--fail-on", "error", "--suppress-tags", "spelling-error-in-binary",
         str(deb)], capture_output=True, text=True)
    print(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert not [line for line in result.stdout.splitlines() if line[:2] in ("E:", "W:", "I:")], result.stdout


def test_md5sums_cover_every_file_but_the_conffiles(deb):
    md5sums = subprocess.run(["dpkg-deb", "-I", str(deb), "md5sums"], capture_output=True, text=True, check=True)
    summed = {line.split(None, 1)[1] for line in md5sums.stdout.splitlines()}
    contents = subprocess.run(["dpkg-deb", "-c", str(deb)], capture_output=True, text=True, check=True)
    files = {line.split()[-1].removeprefix("./") for line in contents.stdout.splitlines() if line.startswith("-")}
    conffiles = subprocess.run(["dpkg-deb", "-I", str(deb), "conffiles"], capture_output=True, text=True, check=True)
    conf = {line.strip().removeprefix("/") for line in conffiles.stdout.splitlines() if line.strip()}
    assert conf and conf <= files
    assert summed == files - conf


def test_installed_files_match_their_md5sums_and_the_docs_are_there(inetkit):
    c = inetkit
    listed = c.run("dpkg", "-L", "inetkit").stdout.split()
    doc = "/usr/share/doc/inetkit"
    for name in ("README.gz", "copyright", "changelog.gz"):
        assert f"{doc}/{name}" in listed
    assert c.sh(f"zcat {doc}/README.gz | head -n 1").stdout.strip() == "# inetkit"
    c.run("test", "-s", "/var/lib/dpkg/info/inetkit.md5sums")
    # dpkg --verify checks every installed file against md5sums: silent when all match.
    # Conffiles ("c") are left out: the daemons' system tests may have edited them.
    result = c.run("dpkg", "--verify", "inetkit", check=False)
    assert result.returncode in (0, 1) and result.stderr == "", result.stderr
    changed = [line for line in result.stdout.splitlines() if " c /" not in line]
    assert changed == [], result.stdout


def test_installed_with_its_dependencies_from_the_mirror(inetkit):
    status = inetkit.run("dpkg-query", "-W", "-f=${Status}\\n", "inetkit", "ssl-cert", "systemd").stdout
    assert status.split("\n")[:3] == ["install ok installed"] * 3
    # ssl-cert made the snakeoil pair the units hand over.
    inetkit.run("openssl", "x509", "-noout", "-in", "/etc/ssl/certs/ssl-cert-snakeoil.pem")


def test_every_unit_is_shipped_disabled_and_stopped(inetkit):
    units = inetkit.after_install
    assert "inetkit-echo.socket" in units and "inetkit-echo.service" in units
    for unit, (enabled, active) in units.items():
        # Sockets wait for the sysadmin; services and templates are started by their sockets.
        assert enabled in ("disabled", "static", "indirect"), f"{unit} is {enabled}"
        if "@." not in unit:  # a template has no state of its own
            assert active == "inactive", f"{unit} is {active} after installation"


def test_units_verify_clean(inetkit):
    # --man=no: the container has no man-db; the pages are checked below.
    result = inetkit.sh("systemd-analyze verify --man=no /usr/lib/systemd/system/inetkit-*", check=False)
    assert (result.returncode, result.stdout, result.stderr) == (0, "", ""), result.stdout + result.stderr


def test_system_user_and_files(inetkit):
    c = inetkit
    _, _, uid, gid, _, home, shell = c.run("getent", "passwd", "inetkit").stdout.strip().split(":")
    assert int(uid) < 1000 and home == "/var/lib/inetkit" and shell == "/usr/sbin/nologin"
    assert c.run("getent", "group", "inetkit").stdout.split(":")[2] == gid
    # As installed, before any daemon's system test added users.
    state_dir, users = c.files_after_install
    assert state_dir.split()[:3] == ["750", "inetkit", "inetkit"]
    assert users == "640 root inetkit 0"


def test_configs_are_conffiles_and_valid(inetkit):
    c = inetkit
    conffiles = [line.split()[0] for line in c.run("dpkg-query", "-W", "-f=${Conffiles}", "inetkit").stdout.splitlines() if line.strip()]
    shipped = c.sh("ls /etc/inetkit/*.toml").stdout.split()
    # Every daemon's config, and smtp-submit's aliases (postmaster: root and friends).
    assert sorted(conffiles) == sorted(
        shipped + ["/etc/inetkit/aliases", "/etc/logrotate.d/inetkit-ftpd"]) and shipped
    assert c.sh("grep -c '^postmaster: root$' /etc/inetkit/aliases").stdout.strip() == "1"
    for config in shipped:
        daemon = "inetkit-" + config.rsplit("/", 1)[1].removesuffix(".toml")
        assert c.run(daemon, "--check-config").stdout.strip() == f"{config}: ok"


def test_every_command_has_a_man_page(inetkit):
    c = inetkit
    for binary in c.sh("ls /usr/sbin/inetkit*").stdout.split():
        name = binary.rsplit("/", 1)[1]
        c.run("test", "-s", f"/usr/share/man/man8/{name}.8.gz")
    for config in c.sh("ls /etc/inetkit/*.toml").stdout.split():
        name = "inetkit-" + config.rsplit("/", 1)[1]
        c.run("test", "-s", f"/usr/share/man/man5/{name}.5.gz")


@pytest.mark.last
def test_remove_stops_everything_and_purge_cleans_up(inetkit, deb):
    c = inetkit
    c.systemctl("enable", "--now", "inetkit-echo.socket")
    with socket.create_connection(("127.0.0.1", 7), timeout=10) as s:
        s.sendall(b"x")
        assert s.recv(1) == b"x"
    assert c.systemctl("is-active", "inetkit-echo.service") == "active"
    c.run("apt-get", "remove", "-y", "-q", "inetkit")
    assert busy_ports([7]) == [], "the sockets are stopped on removal"
    assert c.systemctl("is-active", "inetkit-echo.service", check=False) == "inactive"
    assert c.run("test", "-e", "/usr/lib/systemd/system/inetkit-echo.socket", check=False).returncode == 1
    assert c.run("test", "-f", "/etc/inetkit/echo.toml").returncode == 0, "conffiles stay until purge"

    c.run("apt-get", "purge", "-y", "-q", "inetkit")
    assert c.run("test", "-e", "/etc/inetkit", check=False).returncode == 1
    # No enablement links or removal masks left behind.
    assert c.sh("ls -R /etc/systemd/system | grep inetkit", check=False).stdout == ""
    # Users' data and the user owning it stay.
    c.run("test", "-d", "/var/lib/inetkit")
    c.run("getent", "passwd", "inetkit")

    # Back to a fresh installation for whatever runs after.
    c.run("dpkg", "-i", f"/root/{deb.name}")
    assert c.systemctl("is-enabled", "inetkit-echo.socket", check=False) == "disabled"
    assert c.run("stat", "-c", "%a %U %G", "/etc/inetkit/users").stdout.strip() == "640 root inetkit"
