"""inetkit-rpcd's HTTP edge with http.client and raw sockets: errors and keep-alive, a huge struct
parsed without holding up others, small answers to requests without credentials, huge bodies
refused, a slow body timed out, a client that stops reading let go, hostile XML."""

import base64
import http.client
import socket
import subprocess
import threading
import time
import xmlrpc.client

import pytest

from support.homes import PASSWORD
from support.rpcd import config, post, proxy
from support.rpcd import rpcd  # noqa: F401 (a fixture)


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
