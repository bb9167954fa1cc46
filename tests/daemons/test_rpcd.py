"""inetkit-rpcd's protocols with real clients: Python's xmlrpc.client.ServerProxy for XML-RPC
(introspection, every type, the host facts, multicall, faults) and curl for JSON-RPC (named
and positional parameters, batches, notifications, errors), and the bounds on multicalls and
batches. Configured commands are in test_rpcd_commands.py, the HTTP edge cases and hostile
input in test_rpcd_http.py, authentication in test_rpcd_security.py."""

import json
import socket
import time
import xmlrpc.client
from pathlib import Path

import pytest

from support.rpcd import curl, post, proxy
from support.rpcd import rpcd  # noqa: F401 (a fixture)


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
