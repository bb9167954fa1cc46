"""inetkit-rpcd's configured commands: JSON results and JSON on stdin, an environment that is an
allow-list, no inherited sockets, argument injection that stays inert, a hanging command killed
with its children, output cut at the cap, the concurrency limit."""

import json
import os
import threading
import time
import xmlrpc.client
from pathlib import Path

import pytest

from support.rpcd import config, curl, post, proxy
from support.rpcd import rpcd  # noqa: F401 (a fixture)


def test_json_result_and_stdin_json(rpcd):
    p = proxy(rpcd)
    assert p.disk() == {"free": 42, "mounts": ["/"], "ok": True}
    assert p.stdin("n", [1, "two", None, {"x": 2.5}]) == {
        "name": "n", "items": [1, "two", None, {"x": 2.5}]}


def test_environment_is_an_allow_list(rpcd):
    env = dict(line.split("=", 1) for line in proxy(rpcd).env().splitlines())
    assert env["INETKIT_TEST_PASSED"] == "yes"
    assert env["INETKIT_RPC_USER"] == "alice" and env["INETKIT_RPC_METHOD"] == "env"
    assert "INETKIT_TEST_HIDDEN" not in env and "PATH" not in env


def test_commands_inherit_no_sockets(daemons, tmp_path, cert):
    from support.inetkit import listening_socket
    rpc = listening_socket()
    conf = config(tmp_path, cert, extra='''
[[method]]
name = "fds"
help = "Lists its open files."
argv = ["/bin/ls", "-l", "/proc/self/fd/"]
public = true
''').replace('rpcs = ["127.0.0.1:0"]\n', "")
    d = daemons.activate("rpcd", [("rpc", rpc)], config=conf)
    port = rpc.getsockname()[1]
    fds = xmlrpc.client.ServerProxy(f"http://127.0.0.1:{port}/RPC2").fds()
    # stdin (/dev/null), the stdout and stderr pipes, and the directory ls is reading.
    assert "socket:" not in fds, fds
    assert d.proc.poll() is None


def test_argument_injection_is_inert(rpcd, tmp_path):
    marker = tmp_path / "pwned"
    p = proxy(rpcd)
    for hostile in ["; rm -rf /", f"$(touch {marker})", f"`touch {marker}`", "a\nb\r\nc",
                    "--help", "' \" \\ | & > < *", f"x; touch {marker}"]:
        assert p.argv(hostile, -1) == [hostile, "-1"]
        if not hostile.startswith("-"):
            assert p.echo(hostile) == hostile + "\n"
    assert not marker.exists()
    # A leading dash would be an option to /bin/echo: refused unless the method allows it.
    with pytest.raises(xmlrpc.client.Fault) as e:
        p.echo("--help")
    assert e.value.faultCode == -32602 and "option" in e.value.faultString
    # Nor may any other argument's text: a negative number, a date with dashes before it.
    assert p.typed(9, 1.5, xmlrpc.client.DateTime("20261125T17:02:11")) == [
        "9", "1.5", "20261125T17:02:11"]
    for n, x in [(-9, 1.5), (9, -1.5), (9, -0.0)]:
        with pytest.raises(xmlrpc.client.Fault) as e:
            p.typed(n, x, xmlrpc.client.DateTime("20261125T17:02:11"))
        assert e.value.faultCode == -32602 and "'-'" in e.value.faultString, (n, x)
    # Infinities, NaN and loosely written dates are not XML-RPC values at all.
    for x, when in [(float("-inf"), "20261125T17:02:11"), (float("nan"), "20261125T17:02:11"),
                    (1.5, "--20261125T17:02:11"), (1.5, "2026-11-25T17:02:11")]:
        with pytest.raises(xmlrpc.client.Fault) as e:
            p.typed(9, x, xmlrpc.client.DateTime(when))
        assert e.value.faultCode == -32600, (x, when)
    status, text = curl(rpcd, '{"jsonrpc":"2.0","method":"typed","params":'
                              '[1,2,"--20261125T17:02:11"],"id":1}')
    assert json.loads(text)["error"]["code"] == -32602
    assert not marker.exists()
    # NUL cannot be in an argv entry: refused before anything runs.
    status, text = curl(rpcd, '{"jsonrpc":"2.0","method":"echo","params":["a\\u0000b"],"id":1}')
    assert json.loads(text)["error"]["code"] == -32602
    # An XML character reference to NUL is not even XML.
    body = (b"<methodCall><methodName>echo</methodName><params><param><value>a&#0;b"
            b"</value></param></params></methodCall>")
    (_, reply) = post(rpcd, "/RPC2", body)
    with pytest.raises(xmlrpc.client.Fault) as e:
        xmlrpc.client.loads(reply)
    assert e.value.faultCode in (-32700, -32602)


def alive(pid: int) -> bool:
    """A process that still runs (a zombie waiting for its parent is dead)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


def test_hanging_command_is_killed_with_its_children(rpcd, tmp_path):
    pidfile = tmp_path / "pids"
    with pytest.raises(xmlrpc.client.Fault) as e:
        proxy(rpcd).hang(str(pidfile))
    assert e.value.faultCode == -32001
    assert "timed out after 1 s" in e.value.faultString
    pids = [int(x) for x in pidfile.read_text().split()]
    assert len(pids) == 2
    # SIGKILL to the group was sent before the fault; the kernel needs a moment to finish it.
    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not any(alive(pid) for pid in pids)
    rpcd.wait_log(r'call failed: timeout .*user="alice" method="hang"')


def test_output_past_the_cap_is_cut_and_reported(rpcd):
    with pytest.raises(xmlrpc.client.Fault) as e:
        proxy(rpcd).flood()
    assert e.value.faultCode == -32002
    assert "more than 1000 bytes" in e.value.faultString


def test_concurrency_limit(rpcd, tmp_path):
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    result = {}
    first = threading.Thread(target=lambda: result.update(first=proxy(rpcd).slow(str(fifo))))
    first.start()
    # The first call holds the only slot once its command has the FIFO open for reading.
    deadline = time.monotonic() + 30
    while True:
        try:
            writer = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
            break
        except OSError:
            assert time.monotonic() < deadline, "the first call never started"
            time.sleep(0.01)
    with pytest.raises(xmlrpc.client.Fault) as e:
        proxy(rpcd).slow(str(fifo))
    assert e.value.faultCode == -32005
    os.write(writer, b"released\n")
    os.close(writer)
    first.join(60)
    assert result == {"first": "released\n"}
