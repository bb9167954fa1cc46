"""`--check-config` tells the truth: what it accepts the daemon starts with, what the daemon
would refuse it refuses, naming file, line and column; and every shipped config passes."""

import os
import socket
import subprocess
from pathlib import Path

import pytest

from support.inetkit import ROOT, binary

# Neither systemd's credentials nor the journal: the daemon as a sysadmin runs it by hand.
ENV = {k: v for k, v in os.environ.items() if k not in ("CREDENTIALS_DIRECTORY", "JOURNAL_STREAM")}


def run(daemon, *args):
    return subprocess.run([str(binary(f"inetkit-{daemon}")), *args],
                          capture_output=True, text=True, timeout=30, env=ENV)


def check(tmp_path, daemon, text):
    conf = tmp_path / f"{daemon}.toml"
    conf.write_text(text)
    return conf, run(daemon, "--check-config", "-c", str(conf))


# (daemon, config, line:column of the offending key, words the message must hold)
REFUSED = {
    "imap port out of range": (
        "imapd", '[listen]\nimap = ["127.0.0.1:99999"]\n', "2:9", ["listen.imap[0]", "99999"]),
    "imap socket imapx": (
        "imapd", '[listen]\nimapx = ["127.0.0.1:0"]\n', "2:1", ["imapx", "imap and imaps"]),
    "echo socket qotd": (
        "echo", '[listen]\nqotd = ["127.0.0.1:0"]\n', "2:1", ["qotd", "not a service name"]),
    "pop3s without certificate": (
        "pop3d", '[listen]\npop3 = ["127.0.0.1:0"]\npop3s = ["127.0.0.1:0"]\n', "3:1",
        ["pop3s", "needs TLS"]),
    "passive ports reversed": (
        "ftpd", "[ftp]\npassive_ports = [60000, 50000]\n", "2:1", ["ftp.passive_ports"]),
    "record value not an ip": (
        "dns-forwarder", '[[record]]\nname = "a.lan"\ntype = "A"\nvalue = "not-an-ip"\n', "4:1",
        ["record[0].value", "not-an-ip"]),
    "record type NAPTR": (
        "dns-forwarder", '[[record]]\nname = "a.lan"\ntype = "NAPTR"\nvalue = "x"\n', "3:1",
        ["record[0].type", "NAPTR", "MX", "SRV"]),
    "MX record without preference": (
        "dns-forwarder", '[[record]]\nname = "lan"\ntype = "MX"\nvalue = "mx.lan"\n', "4:1",
        ["record[0].value", "PREFERENCE HOST"]),
    "SRV record port out of range": (
        "dns-forwarder", '[[record]]\nname = "_x._tcp.lan"\ntype = "SRV"\nvalue = "0 0 70000 x.lan"\n',
        "4:1", ["record[0].value", "70000", "port"]),
    "domain upstream by name": (
        "dns-forwarder", '[[domain]]\nname = "corp.example"\nupstreams = ["10.0.0.1", "ns.corp"]\n',
        "3:26", ["domain[0].upstreams[1]", "ns.corp"]),
    "domain without upstreams key": (
        "dns-forwarder", '[[domain]]\nname = "corp.example"\n', "1:1", ["upstreams"]),
    "acl prefix 33": (
        "dns-forwarder", '[acl]\nallow = ["127.0.0.0/8", "10.0.0.0/33"]\n', "2:25",
        ["acl.allow[1]", "10.0.0.0/33"]),
    "upstream by name": (
        "dns-forwarder", '[[upstream]]\naddress = "dns.google"\n', "2:1",
        ["upstream[0].address", "dns.google"]),
    "tls upstream without tls_name": (
        "dns-forwarder", '[[upstream]]\naddress = "192.0.2.1"\nprotocol = "tls"\n', "3:1",
        ["upstream[0].protocol", "tls_name"]),
    "missing hosts_file": (
        "dns-forwarder", '[local]\nhosts_file = "/nonexistent/hosts"\n', "2:1",
        ["local.hosts_file", "/nonexistent/hosts"]),
    "no session before login": (
        "pop3d", "[limits]\nmax_unauthenticated_per_ip = 0\n", "2:1",
        ["limits.max_unauthenticated_per_ip", "at least 1"]),
    "rpcd method argv": (
        "rpcd", '[[method]]\nname = "x"\n\nargv = ["echo"]\n', "4:1",
        ["method[0].argv", "absolute program path"]),
    "rpcd second method": (
        "rpcd", '[[method]]\nname = "a"\nargv = ["/bin/true"]\n\n[[method]]\nname = "b"\n'
        'argv = ["/bin/true"]\ntimeout = 0\n', "8:1", ["method[1].timeout", "positive"]),
}


@pytest.mark.parametrize("case", REFUSED)
def test_check_config_refuses_what_start_would(tmp_path, case):
    daemon, text, position, words = REFUSED[case]
    conf, out = check(tmp_path, daemon, text)
    assert out.returncode != 0, out.stdout
    assert out.stdout == ""
    assert f"{conf}:{position}: " in out.stderr, out.stderr
    for word in words:
        assert word in out.stderr, (word, out.stderr)


@pytest.mark.parametrize("case", ["passive ports reversed", "echo socket qotd", "acl prefix 33"])
def test_start_refuses_with_the_same_words(tmp_path, case):
    """The start runs the same checks, before it binds anything."""
    daemon, text, position, words = REFUSED[case]
    conf = tmp_path / f"{daemon}.toml"
    conf.write_text(text)
    out = run(daemon, "-c", str(conf))
    assert out.returncode != 0
    assert f"{conf}:{position}: " in out.stderr, out.stderr


def test_a_config_file_that_is_not_there_is_not_ok(tmp_path):
    out = run("echo", "--check-config", "-c", str(tmp_path / "missing.toml"))
    assert out.returncode != 0 and out.stdout == ""
    assert f"{tmp_path}/missing.toml: No such file or directory" in out.stderr, out.stderr


@pytest.mark.skipif(Path("/etc/inetkit/echo.toml").exists(), reason="echo.toml is installed here")
def test_the_default_config_file_that_is_not_there_is_not_ok():
    out = run("echo", "--check-config")
    assert out.returncode != 0 and out.stdout == ""
    assert "/etc/inetkit/echo.toml: No such file or directory" in out.stderr, out.stderr
    assert "built-in defaults" in out.stderr


def test_unknown_keys_are_refused_in_every_part(tmp_path):
    for text, position in [('[auth]\nusers_file = "/x"\nuser_file = "/y"\n', "3:1"),
                           ("[limits]\nidle_exit = 0\n  idle_exti = 5\n", "3:3"),
                           ("[mail]\nroot = \"/x\"\n[bogus]\n", "3:2")]:
        conf, out = check(tmp_path, "pop3d", text)
        assert out.returncode != 0 and f"{conf}:{position}: " in out.stderr, (text, out.stderr)


def test_every_problem_is_reported(tmp_path):
    conf, out = check(tmp_path, "dns-forwarder",
                      '[acl]\nallow = ["10.0.0.0/33"]\n[[upstream]]\naddress = "dns.google"\n')
    assert out.returncode != 0
    assert f"{conf}:2:10: " in out.stderr and f"{conf}:4:1: " in out.stderr, out.stderr


SHIPPED = sorted((ROOT / "etc").glob("*.toml"))


@pytest.mark.parametrize("conf", SHIPPED, ids=[c.stem for c in SHIPPED])
def test_shipped_configs_pass(conf):
    out = run(conf.stem, "--check-config", "-c", str(conf))
    assert (out.returncode, out.stdout, out.stderr) == (0, f"{conf}: ok\n", "")


def test_a_bind_error_names_its_cause_once(tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        conf = tmp_path / "echo.toml"
        conf.write_text(f'[listen]\necho = ["127.0.0.1:{port}"]\n')
        out = run("echo", "-c", str(conf))
    assert out.returncode != 0
    assert f"cannot listen on 127.0.0.1:{port} for echo: Address already in use" in out.stderr
    assert out.stderr.count("Address already in use") == 1, out.stderr
