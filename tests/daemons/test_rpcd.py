"""inetkit-rpcd with real clients: Python's xmlrpc.client.ServerProxy for XML-RPC, curl for
JSON-RPC, http.client and raw sockets for the HTTP edge cases and hostile input."""

import base64
import http.client
import json
import os
import re
import socket
import ssl
import subprocess
import threading
import time
import xmlrpc.client
from pathlib import Path

import pytest

from support.homes import PASSWORD, daemon_config, user_line, write_users

# Prints its arguments as a JSON array: what the program really got in argv.
ARGV_JSON = "import json, sys; print(json.dumps(sys.argv[1:]))"


def users_file(tmp_path: Path) -> Path:
    alice = user_line("alice", "SHA512-CRYPT", extra=" groups=ops,web")
    return write_users(tmp_path / "users", alice, user_line("bob"))


def config(tmp_path, cert, auth_extra="", extra=""):
    python = subprocess.run(["sh", "-c", "command -v python3"], capture_output=True,
                            text=True, check=True).stdout.strip()
    return daemon_config(("rpc", "rpcs"), users_file(tmp_path), cert, auth=auth_extra, rest=f"""
[http]
max_body = 1048576
[builtins]
public = ["host.uptime", "host.time"]

[[method]]
name = "echo"
help = "Runs /bin/echo with the text."
params = [{{ name = "text", type = "string" }}]
argv = ["/bin/echo"]

[[method]]
name = "argv"
help = "Shows the argv the program got."
params = [{{ name = "a", type = "string" }}, {{ name = "n", type = "int" }}]
argv = ["{python}", "-c", "{ARGV_JSON}"]
allow_options = true
result = "json"
returns = "array"

[[method]]
name = "typed"
help = "Shows the argv the program got for an int, a double and a date."
params = [{{ name = "n", type = "int" }}, {{ name = "x", type = "double" }},
          {{ name = "when", type = "dateTime.iso8601" }}]
argv = ["{python}", "-c", "{ARGV_JSON}"]
result = "json"
returns = "array"

[[method]]
name = "disk"
help = "Returns JSON."
argv = ["/bin/sh", "-c", "printf '{{\\"free\\": 42, \\"mounts\\": [\\"/\\"], \\"ok\\": true}}'"]
result = "json"

[[method]]
name = "stdin"
help = "Echoes the JSON it reads."
params = [{{ name = "name", type = "string" }}, {{ name = "items", type = "array" }}]
args = "stdin-json"
argv = ["/bin/cat"]
result = "json"

[[method]]
name = "hang"
help = "Leaves a child behind and never ends."
params = [{{ name = "pidfile", type = "string" }}]
argv = ["/bin/sh", "-c", "sleep 300 & echo $! > \\"$1\\"; echo $$ >> \\"$1\\"; wait", "sh"]
timeout = 1

[[method]]
name = "slow"
help = "Waits for a line on a FIFO."
params = [{{ name = "fifo", type = "string" }}]
argv = ["/bin/sh", "-c", "read line < \\"$1\\"; echo \\"$line\\"", "sh"]
concurrency = 1
queue_timeout = 0.2
timeout = 60

[[method]]
name = "flood"
help = "Writes without end."
argv = ["/usr/bin/yes"]
max_stdout = 1000

[[method]]
name = "fail"
help = "Exits 3 with a message on stderr."
argv = ["/bin/sh", "-c", "echo 'it broke' >&2; exit 3"]

[[method]]
name = "env"
help = "Shows its environment."
argv = ["/usr/bin/env"]
env = ["INETKIT_TEST_PASSED"]

[[method]]
name = "ops.only"
help = "For the ops group."
argv = ["/bin/echo", "ops"]
groups = ["ops"]

[[method]]
name = "bob.only"
help = "For bob."
argv = ["/bin/echo", "bob"]
users = ["bob"]

[[method]]
name = "open"
help = "Anyone."
argv = ["/bin/echo", "open"]
public = true
{extra}
""")


@pytest.fixture
def rpcd(daemons, tmp_path, cert):
    return daemons.start("rpcd", config(tmp_path, cert),
                         env={"INETKIT_TEST_PASSED": "yes", "INETKIT_TEST_HIDDEN": "no"})


def url(d, user="alice", password=PASSWORD, path="/RPC2", scheme="http"):
    host, port = d.addr("rpcs" if scheme == "https" else "rpc")
    auth = f"{user}:{password}@" if user else ""
    return f"{scheme}://{auth}{host}:{port}{path}"


def proxy(d, **kw):
    return xmlrpc.client.ServerProxy(url(d, **kw), allow_none=True)


def curl(d, body, user="alice", content_type="application/json", path="/jsonrpc"):
    """POSTs with curl; returns (status, body)."""
    host, port = d.addr("rpc")
    args = ["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-H",
            f"Content-Type: {content_type}", "--data-binary", "@-",
            f"http://{host}:{port}{path}"]
    if user:
        args[1:1] = ["-u", f"{user}:{PASSWORD}"]
    out = subprocess.run(args, input=body if isinstance(body, bytes) else body.encode(),
                         capture_output=True, check=True, timeout=60).stdout.decode()
    text, _, status = out.rpartition("\n")
    return int(status), text


def post(d, path, body: bytes, content_type="text/xml", headers=None, user="alice"):
    host, port = d.addr("rpc")
    c = http.client.HTTPConnection(host, port, timeout=60)
    h = {"Content-Type": content_type}
    if user:
        h["Authorization"] = "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
    h.update(headers or {})
    c.request("POST", path, body=body, headers=h)
    r = c.getresponse()
    return r.status, r.read()


# -- XML-RPC with ServerProxy --------------------------------------------------------------------

def test_introspection(rpcd):
    p = proxy(rpcd)
    methods = p.system.listMethods()
    for name in ["system.listMethods", "system.methodHelp", "system.methodSignature",
                 "system.multicall", "host.uptime", "host.loadavg", "host.hostname",
                 "host.time", "echo", "disk", "ops.only", "open"]:
        assert name in methods
    assert "bob.only" not in methods  # alice may not call it, so she does not see it
    assert p.system.methodHelp("echo") == "Runs /bin/echo with the text."
    assert p.system.methodSignature("echo") == [["string", "string"]]
    assert p.system.methodSignature("argv") == [["array", "string", "int"]]
    assert p.system.methodSignature("host.uptime") == [["double"]]
    # Anonymous callers see the public methods and introspection only.
    anon = proxy(rpcd, user=None).system.listMethods()
    assert sorted(anon) == ["host.time", "host.uptime", "open", "system.listMethods",
                            "system.methodHelp", "system.methodSignature", "system.multicall"]


def test_every_type_round_trips(rpcd):
    p = proxy(rpcd)
    when = xmlrpc.client.DateTime("20261125T17:02:11")
    blob = xmlrpc.client.Binary(bytes(range(256)))
    values = [0, -2**31, 2**31 - 1, True, False, "", "plain <&> ünïcödé \t\n", 2.5, -1e300,
              when, blob, {"a": 1, "nested": {"b": [1, "x"]}}, [], [1, [2, [3]]], None]
    got = p.rpc.echo(*values)
    assert got == values
    # i8 (the common extension): Python cannot send one, so the XML is written by hand.
    body = (b"<?xml version='1.0'?><methodCall><methodName>rpc.echo</methodName><params>"
            b"<param><value><i8>9000000000</i8></value></param>"
            b"<param><value>untyped string</value></param>"
            b"<param><value><ex:nil/></value></param></params></methodCall>")
    status, reply = post(rpcd, "/RPC2", body)
    assert status == 200
    (result,), _ = xmlrpc.client.loads(reply, use_builtin_types=True)
    assert result == [9000000000, "untyped string", None]
    assert b"<i8>9000000000</i8>" in reply


def test_host_facts(rpcd):
    p = proxy(rpcd)
    assert p.host.uptime() > 0
    loads = p.host.loadavg()
    assert len(loads) == 3 and all(isinstance(x, float) for x in loads)
    assert p.host.hostname() == socket.gethostname()
    assert isinstance(p.host.time(), xmlrpc.client.DateTime)
    # Public built-ins need no login.
    assert proxy(rpcd, user=None).host.uptime() > 0


def test_uptime_is_the_seconds_proc_uptime_shows(rpcd):
    # /proc/uptime, to the hundredth, as Python's xmlrpc.server examples read it: not whole
    # seconds. Ten calls, so one landing on a whole second by chance does not pass.
    def proc():
        return float(Path("/proc/uptime").read_text().split()[0])

    p = proxy(rpcd, user=None)
    fractions = set()
    for _ in range(10):
        before = proc()
        uptime = p.host.uptime()
        after = proc()
        assert before <= uptime <= after + 0.01, (before, uptime, after)
        fractions.add(uptime % 1)
        time.sleep(0.013)
    assert len(fractions) > 1


def test_multicall(rpcd):
    p = proxy(rpcd)
    m = xmlrpc.client.MultiCall(p)
    m.echo("one")
    m.no.such.method()
    m.echo(2)
    m.system.methodHelp("open")
    results = m()
    assert results[0] == "one\n"
    with pytest.raises(xmlrpc.client.Fault) as e:
        results[1]
    assert e.value.faultCode == -32601
    with pytest.raises(xmlrpc.client.Fault) as e:
        results[2]
    assert e.value.faultCode == -32602
    assert results[3] == "Anyone."
    # An anonymous multicall that reaches a protected method needs a login.
    anon = xmlrpc.client.MultiCall(proxy(rpcd, user=None))
    anon.open()
    anon.echo("x")
    with pytest.raises(xmlrpc.client.ProtocolError) as e:
        anon()
    assert e.value.errcode == 401


def test_faults(rpcd):
    p = proxy(rpcd)
    for call, code in [(lambda: p.nothing.here(), -32601),
                       (lambda: p.echo(), -32602),
                       (lambda: p.echo("a", "b"), -32602),
                       (lambda: p.echo(5), -32602),
                       (lambda: p.argv("x", 2**31 - 1 + 0.5), -32602),
                       (lambda: p.system.methodHelp("bob.only"), -32601),
                       (lambda: p.bob.only(), -32004),
                       (lambda: p.fail(), -32000)]:
        with pytest.raises(xmlrpc.client.Fault) as e:
            call()
        assert e.value.faultCode == code, e.value
    with pytest.raises(xmlrpc.client.Fault) as e:
        p.fail()
    assert e.value.faultString == "exit status 3: it broke"


# -- JSON-RPC with curl ----------------------------------------------------------------------------

def test_jsonrpc_single_named_and_positional(rpcd):
    status, text = curl(rpcd, '{"jsonrpc":"2.0","method":"echo","params":["hi"],"id":1}')
    assert status == 200
    assert json.loads(text) == {"jsonrpc": "2.0", "result": "hi\n", "id": 1}
    status, text = curl(rpcd, '{"jsonrpc":"2.0","method":"argv","params":{"n":7,"a":"x"},'
                              '"id":"s"}')
    assert json.loads(text) == {"jsonrpc": "2.0", "result": ["x", "7"], "id": "s"}
    status, text = curl(rpcd, '{"jsonrpc":"2.0","method":"system.listMethods","id":null}')
    reply = json.loads(text)
    assert reply["id"] is None and "echo" in reply["result"]
    status, text = curl(rpcd, '{"jsonrpc":"2.0","method":"system.multicall","params":'
                              '[[{"methodName":"echo","params":["a"]},'
                              '{"methodName":"nope","params":[]}]],"id":3}')
    assert json.loads(text)["result"] == [
        ["a\n"], {"faultCode": -32601, "faultString": "method not found: nope"}]


def test_jsonrpc_batch_and_notifications(rpcd):
    batch = [
        {"jsonrpc": "2.0", "method": "echo", "params": ["1"], "id": 1},
        {"jsonrpc": "2.0", "method": "echo", "params": ["notified"]},
        {"jsonrpc": "2.0", "method": "nope", "id": 2},
        {"foo": "bar"},
        {"jsonrpc": "2.0", "method": "host.uptime", "id": 3},
    ]
    status, text = curl(rpcd, json.dumps(batch))
    assert status == 200
    replies = json.loads(text)
    assert len(replies) == 4
    assert replies[0] == {"jsonrpc": "2.0", "result": "1\n", "id": 1}
    assert replies[1]["id"] == 2 and replies[1]["error"]["code"] == -32601
    assert replies[2]["id"] is None and replies[2]["error"]["code"] == -32600
    assert replies[3]["id"] == 3 and replies[3]["result"] > 0
    # One log line for the whole batch.
    rpcd.wait_log(r'call failed: method not found .*user="alice" '
                  r'method="echo,nope,host.uptime" calls=5 failed=2')
    assert rpcd.log().count("call ") == 1
    # Notifications alone: no content at all.
    assert curl(rpcd, '{"jsonrpc":"2.0","method":"echo","params":["n"]}') == (204, "")
    assert curl(rpcd, '[{"jsonrpc":"2.0","method":"echo","params":["n"]},'
                      '{"jsonrpc":"2.0","method":"open"}]') == (204, "")


def test_jsonrpc_errors(rpcd):
    def error(body):
        status, text = curl(rpcd, body)
        assert status == 200, text
        reply = json.loads(text)
        assert reply["jsonrpc"] == "2.0" and "result" not in reply
        return reply["error"]["code"], reply["id"]

    assert error('{"jsonrpc":"2.0","method":') == (-32700, None)
    assert error(b'{"jsonrpc":"2.0","method":"echo","params":["\xff"],"id":1}') == (-32700, None)
    assert error("[]") == (-32600, None)
    assert error('{"jsonrpc":"1.0","method":"echo","id":1}') == (-32600, None)
    assert error('{"jsonrpc":"2.0","method":5,"id":1}') == (-32600, None)
    assert error('{"jsonrpc":"2.0","method":"echo","params":"x","id":1}') == (-32600, None)
    assert error('{"jsonrpc":"2.0","method":"nope","id":7}') == (-32601, 7)
    assert error('{"jsonrpc":"2.0","method":"echo","params":[1],"id":8}') == (-32602, 8)
    assert error('{"jsonrpc":"2.0","method":"echo","params":{"txt":"a"},"id":9}') == (-32602, 9)
    assert error('{"jsonrpc":"2.0","method":"fail","id":10}') == (-32000, 10)
    assert error("[" * 10_000 + "]" * 10_000) == (-32700, None)
    # The cause of an error is in its log line once.
    rpcd.wait_log("request refused: parse error: invalid JSON: EOF while parsing")
    rpcd.wait_log('request refused: invalid request: "jsonrpc" must be "2.0"')
    assert "parse error: parse error" not in rpcd.log()
    assert "invalid request: invalid request" not in rpcd.log()


def test_multicall_and_batches_are_bounded_and_logged_once(rpcd):
    """[http] max_batch (100) bounds the calls of one request, multicall entries included;
    one request is one log line, however many calls it made."""
    p = proxy(rpcd)
    m = xmlrpc.client.MultiCall(p)
    for _ in range(101):
        m.host.uptime()
    with pytest.raises(xmlrpc.client.Fault) as e:
        m()
    assert e.value.faultCode == -32600 and "at most 100 calls" in e.value.faultString
    m = xmlrpc.client.MultiCall(p)
    for i in range(100):
        m.rpc.echo(i)
    assert list(m()) == [[i] for i in range(100)]
    rpcd.wait_log(r'call ok .*user="alice" method="system.multicall,rpc.echo" calls=100 ')
    assert rpcd.log().count("rpc.echo") == 1
    # JSON-RPC: a batch of multicalls counts every call inside them.
    uptime = {"methodName": "host.uptime", "params": []}
    batch = [{"jsonrpc": "2.0", "method": "system.multicall", "params": [[uptime] * 60],
              "id": n} for n in range(2)]
    status, text = curl(rpcd, json.dumps(batch))
    reply = json.loads(text)
    assert reply["id"] is None and reply["error"]["code"] == -32600, reply
    assert "at most 100 calls" in reply["error"]["message"]
    batch = [{"jsonrpc": "2.0", "method": "system.multicall", "params": [[uptime] * 50],
              "id": n} for n in range(2)]
    status, text = curl(rpcd, json.dumps(batch))
    assert [len(r["result"]) for r in json.loads(text)] == [50, 50]
    rpcd.wait_log(r'call ok .*method="system.multicall,host.uptime" calls=100 ')
    assert rpcd.log().count("host.uptime") == 1


# -- configured commands ------------------------------------------------------------------------

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


# -- HTTP ---------------------------------------------------------------------------------------

def test_http_errors_and_keep_alive(rpcd):
    host, port = rpcd.addr("rpc")
    c = http.client.HTTPConnection(host, port, timeout=30)
    c.request("GET", "/RPC2")
    r = c.getresponse()
    r.read()
    assert r.status == 405 and r.getheader("Allow") == "POST"
    sock = c.sock
    c.request("POST", "/elsewhere", body=b"x", headers={"Content-Type": "text/xml"})
    r = c.getresponse()
    r.read()
    assert r.status == 404
    c.request("POST", "/RPC2", body=b"x", headers={"Content-Type": "text/plain"})
    r = c.getresponse()
    r.read()
    assert r.status == 415
    c.request("POST", "/jsonrpc", body=b"{}", headers={"Content-Type": "text/xml"})
    r = c.getresponse()
    r.read()
    assert r.status == 415
    body = xmlrpc.client.dumps((), "host.uptime").encode()
    for _ in range(3):
        c.request("POST", "/RPC2", body=body, headers={"Content-Type": "text/xml"})
        r = c.getresponse()
        assert r.status == 200 and xmlrpc.client.loads(r.read())[0][0] > 0
    assert c.sock is sock  # all on one connection
    c.close()


def test_a_huge_struct_is_parsed_without_holding_up_others(rpcd):
    """A 1 MiB struct of 24,500 members: parsed in linear time on the blocking pool; the
    answer is right and other requests are served meanwhile."""
    digits = "0123456789abcdefghijklmnopqrstuvwxyz"
    names = [a + b + c for a in digits for b in digits for c in digits][:24_500]
    body = (b"<?xml version='1.0'?><methodCall><methodName>rpc.echo</methodName><params>"
            b"<param><value><struct>"
            + b"".join(b"<member><name>%s</name><value/></member>" % n.encode() for n in names)
            + b"</struct></value></param></params></methodCall>")
    assert 1_000_000 < len(body) <= 1048576
    results = {}

    def big(n):
        results[n] = post(rpcd, "/RPC2", body)
    threads = [threading.Thread(target=big, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    assert "host.uptime" in proxy(rpcd).system.listMethods()
    for t in threads:
        t.join(60)
    for status, reply in results.values():
        assert status == 200
        ((echoed,),), _ = xmlrpc.client.loads(reply)
        assert echoed == {n: "" for n in names}


def test_requests_without_credentials_are_small(rpcd):
    host, port = rpcd.addr("rpc")
    body = xmlrpc.client.dumps(("x" * 9000,), "rpc.echo").encode()
    status, reply = post(rpcd, "/RPC2", body, user=None)
    assert status == 413 and b"without credentials may be at most 8192 bytes" in reply
    # Chunked, so the size shows only while reading.
    proc = subprocess.run(["curl", "-sS", "-o", "-", "-w", "\n%{http_code}", "-H",
                           "Content-Type: text/xml", "-H", "Transfer-Encoding: chunked",
                           "--data-binary", "@-", f"http://{host}:{port}/RPC2"],
                          input=body, capture_output=True, timeout=60)
    assert proc.stdout.decode().rsplit("\n", 1)[-1] == "413", proc
    # Logged in, the same request is fine; small anonymous ones too.
    assert proxy(rpcd).rpc.echo("x" * 9000) == ["x" * 9000]
    assert proxy(rpcd, user=None).host.uptime() > 0


def test_huge_bodies_are_refused(rpcd):
    host, port = rpcd.addr("rpc")
    # 100 MiB announced: refused from the headers, long before it could arrive.
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                  b"Content-Length: 104857600\r\n\r\n")
        chunk = b"<" * 65536
        reply = b""
        try:
            for _ in range(1600):
                s.sendall(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        try:
            while True:
                data = s.recv(65536)
                if not data:
                    break
                reply += data
        except ConnectionResetError:
            pass
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:100]
    # The same without a length (chunked): cut at the limit while reading.
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(b"POST /jsonrpc HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                  b"Transfer-Encoding: chunked\r\n\r\n")
        try:
            for _ in range(100):
                s.sendall(b"4000\r\n" + b" " * 0x4000 + b"\r\n")
        except (BrokenPipeError, ConnectionResetError):
            pass
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 413 "), reply[:100]
    assert proxy(rpcd).host.uptime() > 0


def test_a_slow_body_times_out(daemons, tmp_path, cert):
    d = daemons.start("rpcd", config(tmp_path, cert) + "\n[limits]\nidle_timeout = 1\n")
    host, port = d.addr("rpc")
    with socket.create_connection((host, port), timeout=30) as s:
        s.sendall(b"POST /RPC2 HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                  b"Content-Length: 100\r\n\r\n<methodCall>")
        reply = s.recv(65536)
    assert reply.startswith(b"HTTP/1.1 408 "), reply


def test_a_client_that_stops_reading_is_let_go(daemons, tmp_path, cert):
    """Replies that wait longer than [limits] write_timeout for the client to read them end
    the connection; other clients are served all along."""
    d = daemons.start("rpcd", config(tmp_path, cert) + "\n[limits]\nwrite_timeout = 1\n")
    host, port = d.addr("rpc")
    auth = base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    text = "x" * 100_000  # one argument of /bin/echo: under the kernel's 128 KiB
    body = xmlrpc.client.dumps((text,), "echo").encode()
    request = (f"POST /RPC2 HTTP/1.1\r\nHost: x\r\nAuthorization: Basic {auth}\r\n"
               f"Content-Type: text/xml\r\nContent-Length: {len(body)}\r\n\r\n").encode() + body
    s = socket.socket()
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    s.connect((host, port))
    local_port = s.getsockname()[1]

    def send():  # 100 pipelined calls, 10 MB of replies; never read
        try:
            for _ in range(100):
                s.sendall(request)
        except OSError:
            pass
    threading.Thread(target=send, daemon=True).start()

    def server_side_established():
        out = subprocess.run(["ss", "-Htn", "state", "established", f"( sport = :{port} and "
                              f"dport = :{local_port} )"], capture_output=True, text=True).stdout
        return bool(out.strip())
    deadline = time.monotonic() + 60
    while server_side_established() and time.monotonic() < deadline:
        assert proxy(d).echo("still serving") == "still serving\n"
        time.sleep(0.2)
    assert not server_side_established(), "the stalled connection was kept"
    # What the client gets is cut short: fewer than the 100 replies, then the end.
    s.settimeout(30)
    received = 0
    try:
        while chunk := s.recv(1 << 20):
            received += len(chunk)
    except ConnectionResetError:
        pass
    s.close()
    assert received < 100 * len(text)


def test_hostile_xml(rpcd):
    def fault(body: bytes) -> int:
        status, reply = post(rpcd, "/RPC2", body)
        assert status == 200
        with pytest.raises(xmlrpc.client.Fault) as e:
            xmlrpc.client.loads(reply)
        return e.value.faultCode

    assert fault(b"<methodCall><methodName>echo</methodName><params>") == -32700
    assert fault(b"not xml at all") == -32700
    laughs = (b'<?xml version="1.0"?>\n<!DOCTYPE lolz [\n <!ENTITY lol "lol">\n'
              + b"".join(b' <!ENTITY lol%d "%s">\n' % (i, (b"&lol%d;" % (i - 1) if i > 1
                                                          else b"&lol;") * 10)
                         for i in range(1, 10))
              + b"]>\n<methodCall><methodName>echo</methodName><params><param><value>"
                b"&lol9;</value></param></params></methodCall>")
    assert fault(laughs) == -32700
    external = (b'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "file:///etc/passwd">]>'
                b"<methodCall><methodName>echo</methodName><params><param><value>&e;"
                b"</value></param></params></methodCall>")
    assert fault(external) == -32700
    deep = (b"<methodCall><methodName>rpc.echo</methodName><params><param>"
            + b"<value><array><data>" * 10_000 + b"</data></array></value>" * 10_000
            + b"</param></params></methodCall>")
    assert len(deep) < 1048576
    assert fault(deep) == -32700
    assert fault(b"<methodCall><methodName>echo\xff\xfe</methodName></methodCall>") == -32700
    assert fault(b"<?xml version='1.0' encoding='ISO-8859-1'?><methodCall><methodName>e"
                 b"</methodName></methodCall>") == -32700
    assert fault(b"<methodCall><methodName>echo</methodName></params>") == -32700
    rpcd.wait_log(r"request refused: parse error: malformed XML at byte \d+: ill-formed "
                  r"document: expected `</methodCall>`, but `</params>` was found peer=")
    assert "parse error: parse error" not in rpcd.log()
    # Still serving.
    assert proxy(rpcd).echo("alive") == "alive\n"


# -- security -----------------------------------------------------------------------------------

def test_authentication_and_authorization(rpcd):
    # Anonymous: public methods only; anything else asks for credentials.
    assert proxy(rpcd, user=None).open() == "open\n"
    with pytest.raises(xmlrpc.client.ProtocolError) as e:
        proxy(rpcd, user=None).echo("x")
    assert e.value.errcode == 401
    assert "Basic" in e.value.headers["www-authenticate"]
    with pytest.raises(xmlrpc.client.ProtocolError) as e:
        proxy(rpcd, user=None).does.not_exist()
    assert e.value.errcode == 401
    assert curl(rpcd, '{"jsonrpc":"2.0","method":"echo","params":["x"],"id":1}',
                user=None)[0] == 401
    # Users and groups.
    assert proxy(rpcd).ops.only() == "ops\n"
    with pytest.raises(xmlrpc.client.Fault) as e:
        proxy(rpcd, user="bob").ops.only()
    assert e.value.faultCode == -32004
    assert proxy(rpcd, user="bob").bob.only() == "bob\n"
    rpcd.wait_log(r'call failed: forbidden .*user="bob" method="ops.only"')
    # A wrong password is 401.
    with pytest.raises(xmlrpc.client.ProtocolError) as e:
        proxy(rpcd, password="wrong").echo("x")
    assert e.value.errcode == 401


def test_audit_lines_at_info_builtin_reads_at_debug(rpcd):
    # A successful call of read-only builtins is not worth an INFO line each, logged in or not
    # (a monitor polls them by the thousand, and under systemd each line is a journal entry
    # costing more than the call); configured commands and failures are, and so is who logged
    # in (the connection's end line).
    assert proxy(rpcd, user=None).host.uptime() > 0
    rpcd.wait_log(r'DEBUG .*call ok peer=\S+ user="-" method="host.uptime"')
    assert proxy(rpcd, user=None).open() == "open\n"
    rpcd.wait_log(r'INFO .*call ok peer=\S+ user="-" method="open"')
    assert proxy(rpcd).host.uptime() > 0
    rpcd.wait_log(r'DEBUG .*call ok peer=\S+ user="alice" method="host.uptime"')
    rpcd.wait_log(r'INFO .*session ended .*user=alice')
    assert proxy(rpcd).echo("x") == "x\n"
    rpcd.wait_log(r'INFO .*call ok peer=\S+ user="alice" method="echo"')
    with pytest.raises(xmlrpc.client.Fault):
        proxy(rpcd, user=None).host.uptime("unexpected")
    rpcd.wait_log(r'INFO .*call failed: .*user="-" method="host.uptime"')
    with pytest.raises(xmlrpc.client.Fault):
        proxy(rpcd).host.uptime("unexpected")
    rpcd.wait_log(r'INFO .*call failed: .*user="alice" method="host.uptime"')
    assert not re.search(r'INFO .*call ok peer=\S+ user="[^"]*" method="host.uptime"',
                         rpcd.log())


def test_one_password_check_per_connection(rpcd, tmp_path):
    host, port = rpcd.addr("rpc")
    c = http.client.HTTPConnection(host, port, timeout=30)
    auth = "Basic " + base64.b64encode(f"alice:{PASSWORD}".encode()).decode()
    body = xmlrpc.client.dumps(("x",), "echo").encode()
    for _ in range(3):
        c.request("POST", "/RPC2", body=body,
                  headers={"Content-Type": "text/xml", "Authorization": auth})
        assert xmlrpc.client.loads(c.getresponse().read())[0] == ("x\n",)
    rpcd.wait_log(r'call ok .*user="alice" method="echo"')
    assert rpcd.log().count("login ok") == 1
    # alice removed from the users file: refused on the same connection once the daemon has
    # looked at the file again.
    users = tmp_path / "users"
    users.write_text("".join(l for l in users.read_text().splitlines(keepends=True)
                             if not l.startswith("alice:")))
    users_file_looked_at_again()
    c.request("POST", "/RPC2", body=body,
              headers={"Content-Type": "text/xml", "Authorization": auth})
    r = c.getresponse()
    r.read()
    assert r.status == 401


# How long a connection's login may be taken on trust after the users file changed: the
# daemon looks at the file at most once a second (login.rs, RECHECK_EVERY). New connections
# see a change at once.
USERS_FILE_RECHECK = 1.0


def users_file_looked_at_again():
    time.sleep(USERS_FILE_RECHECK + 0.2)


def call_on_new_connection(d, user, password, method="echo"):
    """One XML-RPC call over a connection of its own; the HTTP status."""
    host, port = d.addr("rpc")
    c = http.client.HTTPConnection(host, port, timeout=30)
    auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
    c.request("POST", "/RPC2", body=xmlrpc.client.dumps(("x",), method).encode(),
              headers={"Content-Type": "text/xml", "Authorization": auth})
    r = c.getresponse()
    r.read()
    c.close()
    return r.status


def wait_count(d, text, n, timeout=10.0):
    """Waits until the log shows `text` n times (it is read as it comes); the log."""
    deadline = time.monotonic() + timeout
    while d.log().count(text) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    return d.log()


def test_one_password_check_for_many_connections(rpcd, tmp_path):
    # The same credentials on new connections: the password is checked once.
    assert [call_on_new_connection(rpcd, "alice", PASSWORD) for _ in range(3)] == [200] * 3
    assert wait_count(rpcd, "login remembered", 2).count("login ok") == 1
    # Another password is checked (and fails), and does not replace the one remembered.
    assert call_on_new_connection(rpcd, "alice", "guess") == 401
    assert call_on_new_connection(rpcd, "alice", PASSWORD) == 200
    assert wait_count(rpcd, "login remembered", 3).count("login ok") == 1
    # The users file changed: checked again, and a password changed there is refused.
    users = tmp_path / "users"
    users.write_text(users.read_text() + "carol:{PLAIN}other::::::\n")
    assert call_on_new_connection(rpcd, "alice", PASSWORD) == 200
    assert wait_count(rpcd, "login ok", 2).count("login ok") == 2
    bob = users.read_text().replace(f"bob:{{PLAIN}}{PASSWORD}:", "bob:{PLAIN}new password:")
    assert call_on_new_connection(rpcd, "bob", PASSWORD) == 200
    users.write_text(bob)
    assert call_on_new_connection(rpcd, "bob", PASSWORD) == 401
    assert call_on_new_connection(rpcd, "bob", "new password") == 200
    # A removed user is refused at once.
    users.write_text("".join(l for l in users.read_text().splitlines(keepends=True)
                             if not l.startswith("alice:")))
    assert call_on_new_connection(rpcd, "alice", PASSWORD) == 401


def test_a_remembered_login_is_refused_while_its_address_is_locked_out(daemons, tmp_path, cert):
    d = daemons.start("rpcd", config(tmp_path, cert, auth_extra=(
        "failure_delay = 0.01\nmax_failure_delay = 0.02\nmax_failures = 3\nlockout = 600")))
    assert call_on_new_connection(d, "alice", PASSWORD) == 200
    assert [call_on_new_connection(d, "alice", "guess") for _ in range(4)] == [401] * 3 + [429]
    # The right password, remembered from before the lockout: refused all the same.
    assert call_on_new_connection(d, "alice", PASSWORD) == 429
    assert d.log().count("login ok") == 1


def test_a_changed_users_file_is_checked_again_on_a_kept_connection(rpcd, tmp_path):
    host, port = rpcd.addr("rpc")
    users = tmp_path / "users"
    c = http.client.HTTPConnection(host, port, timeout=30)
    body = xmlrpc.client.dumps(("x",), "echo").encode()

    def call(user, password):
        auth = "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()
        c.request("POST", "/RPC2", body=body,
                  headers={"Content-Type": "text/xml", "Authorization": auth})
        r = c.getresponse()
        r.read()
        return r.status

    assert [call("bob", PASSWORD) for _ in range(2)] == [200, 200]
    assert rpcd.log().count("login ok") == 1
    sock = c.sock
    # Another line added: the file changed, so the password is checked again (and passes).
    users.write_text(users.read_text() + "carol:{PLAIN}other::::::\n")
    users_file_looked_at_again()
    assert call("bob", PASSWORD) == 200
    assert rpcd.log().count("login ok") == 2
    # bob's password changed: the old one is refused on the same connection.
    users.write_text(users.read_text().replace(f"bob:{{PLAIN}}{PASSWORD}:",
                                               "bob:{PLAIN}new password:"))
    users_file_looked_at_again()
    assert call("bob", PASSWORD) == 401
    assert call("bob", "new password") == 200
    assert c.sock is sock, "all on one connection"


def test_wrong_passwords_are_throttled(daemons, tmp_path, cert):
    d = daemons.start("rpcd", config(tmp_path, cert, auth_extra=(
        "failure_delay = 0.01\nmax_failure_delay = 0.02\nmax_failures = 3\nlockout = 600")))
    codes = []
    for _ in range(5):
        with pytest.raises(xmlrpc.client.ProtocolError) as e:
            proxy(d, password="guess").echo("x")
        codes.append(e.value.errcode)
    assert codes[:3] == [401, 401, 401]
    assert codes[3:] == [429, 429]
    # Locked out: even the right password is refused now.
    with pytest.raises(xmlrpc.client.ProtocolError) as e:
        proxy(d).echo("x")
    assert e.value.errcode == 429
    d.wait_log("too many failed logins")


def test_credentials_need_tls_unless_allowed(daemons, tmp_path, cert):
    d = daemons.start("rpcd", config(tmp_path, cert, auth_extra='plaintext = "never"'))
    with pytest.raises(xmlrpc.client.ProtocolError) as e:
        proxy(d).echo("x")
    assert e.value.errcode == 403
    # Public methods still work without credentials on plain HTTP.
    assert proxy(d, user=None).open() == "open\n"
    ctx = ssl.create_default_context(cafile=str(cert[0]))
    p = xmlrpc.client.ServerProxy(url(d, scheme="https").replace("127.0.0.1", "localhost"),
                                  context=ctx, allow_none=True)
    assert p.echo("over tls") == "over tls\n"
    assert "echo" in p.system.listMethods()


def test_bad_config_is_refused(tmp_path, cert):
    from support.inetkit import binary
    conf = tmp_path / "bad.toml"
    conf.write_text('[[method]]\nname = "x"\nargv = ["/bin/echo"]\nfrobnicate = 1\n')
    r = subprocess.run([str(binary("inetkit-rpcd")), "-c", str(conf), "--check-config"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "frobnicate" in r.stderr
    for bad, why in [('argv = ["echo"]', "absolute program path"),
                     ('argv = ["/bin/echo"]\nparams = [{ name = "b", type = "base64" }]',
                      "cannot be a command argument"),
                     ('argv = ["/bin/echo"]\ntimeout = 0', "timeout"),
                     ('argv = ["/bin/echo"]\n[[method]]\nname = "x"\nargv = ["/bin/echo"]',
                      "defined twice")]:
        conf.write_text(f'[[method]]\nname = "x"\n{bad}\n')
        r = subprocess.run([str(binary("inetkit-rpcd")), "-c", str(conf), "--check-config"],
                           capture_output=True, text=True)
        assert r.returncode != 0 and why in r.stderr, (bad, r.stderr)
    conf.write_text('[builtins]\npublic = ["host.nope"]\n')
    r = subprocess.run([str(binary("inetkit-rpcd")), "-c", str(conf), "--check-config"],
                       capture_output=True, text=True)
    assert r.returncode != 0 and "host.nope" in r.stderr
