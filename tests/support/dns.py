"""What the dns-forwarder tests share: the daemon's config and start, dig and its output read
back, DNS packets made and parsed by hand, a scripted UDP upstream, and NSD as the real
authoritative upstream (the `nsd` fixture)."""

import re
import socket
import struct
import subprocess
import threading

import pytest

from support.inetkit import close_serving
from support.nsd import Nsd, free_port


def config(upstreams, extra="", listen=None):
    if listen is None:
        # One port for UDP and TCP, as on 53: dig retries a truncated answer on the same port.
        port = free_port()
        listen = f'"udp://127.0.0.1:{port}", "tcp://127.0.0.1:{port}"'
    ups = "".join(u if u.startswith("\n[[") else f'\n[[upstream]]\naddress = "{u}"\n'
                  for u in upstreams)
    return f"""
[listen]
dns = [{listen}]
[forward]
timeout = 0.7
{ups}
{extra}
"""

def dig(port, *args, tool="dig", host="127.0.0.1"):
    tries = "+tries=1" if tool == "dig" else "+retry=0"
    argv = [tool, "-p", str(port), f"@{host}", "+time=5", tries, *args]
    return subprocess.run(argv, capture_output=True, text=True, timeout=30).stdout


def answers(output):
    """The answer section's records as (name, ttl, type, data)."""
    out = []
    section = False
    for line in output.splitlines():
        if line.startswith(";; ANSWER SECTION"):
            section = True
            continue
        if not line.strip() or line.startswith(";;"):
            section = False
        if not section or line.startswith(";"):
            continue
        parts = line.split(None, 4)
        if len(parts) == 5 and parts[2] == "IN":
            out.append((parts[0].lower(), int(parts[1]), parts[3], parts[4]))
    return out


def status_of(output):
    m = re.search(r"status: (\w+)", output)
    return m.group(1) if m else None


def flags_of(output):
    m = re.search(r";; flags: ([^;]*);", output)
    return m.group(1).split() if m else []


def encode_name(name):
    out = b""
    for label in name.rstrip(".").split("."):
        out += bytes([len(label)]) + label.encode()
    return out + b"\0"


def query_packet(name, qtype=1, qid=0x4242, flags=0x0100, qdcount=None, edns=None):
    """A query in wire format; `edns` is (payload, do)."""
    q = encode_name(name) + struct.pack(">HH", qtype, 1)
    ar = 0
    tail = b""
    if edns:
        ar = 1
        tail = b"\0" + struct.pack(">HHIH", 41, edns[0], 0x8000 if edns[1] else 0, 0)
    header = struct.pack(">HHHHHH", qid, flags, 1 if qdcount is None else qdcount, 0, 0, ar)
    return header + q + tail


def decode_name(data, off):
    labels = []
    jumped = False
    end = off
    for _ in range(128):
        n = data[off]
        if n & 0xC0 == 0xC0:
            if not jumped:
                end = off + 2
            off = ((n & 0x3F) << 8) | data[off + 1]
            jumped = True
            continue
        off += 1
        if n == 0:
            break
        labels.append(data[off:off + n].decode())
        off += n
    return ".".join(labels) + ".", (end if jumped else off)


def parse_query(data):
    """(id, flags, name, qtype, do) of a query, as the scripted upstream sees it."""
    qid, flags, qd, an, ns, ar = struct.unpack(">HHHHHH", data[:12])
    name, off = decode_name(data, 12)
    qtype, qclass = struct.unpack(">HH", data[off:off + 4])
    off += 4
    do = False
    if ar:
        # The OPT record: root name, type 41, class = payload, ttl carries DO.
        if data[off] == 0 and struct.unpack(">H", data[off + 1:off + 3])[0] == 41:
            ttl = struct.unpack(">I", data[off + 5:off + 9])[0]
            do = bool(ttl & 0x8000)
    return qid, flags, name, qtype, do, data[12:off]


def a_answer(qid, question, ip, ttl=60, flags=0x8180):
    """A response with one A record for the question (name by pointer)."""
    header = struct.pack(">HHHHHH", qid, flags, 1, 1, 0, 0)
    rr = b"\xc0\x0c" + struct.pack(">HHIH", 1, 1, ttl, 4) + socket.inet_aton(ip)
    return header + question + rr


def udp_exchange(port, packet, timeout=3.0, host="127.0.0.1"):
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    with socket.socket(family, socket.SOCK_DGRAM) as s:
        s.settimeout(timeout)
        s.sendto(packet, (host, port))
        try:
            return s.recv(65535)
        except socket.timeout:
            return None


def rcode(reply):
    return reply[3] & 0x0F


class ScriptedUpstream:
    """A UDP upstream run by the test: records each query and answers as `respond` says."""

    def __init__(self, respond):
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]
        self.respond = respond
        self.queries = []
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while True:
            try:
                data, addr = self.sock.recvfrom(65535)
            except OSError:
                return
            if not data:  # woken by close()
                return
            q = parse_query(data)
            self.queries.append((addr, q))
            threading.Thread(target=self.respond, args=(self.sock, addr, q), daemon=True).start()

    def close(self):
        close_serving(self.sock, self.thread)


@pytest.fixture
def nsd(tmp_path):
    with Nsd(tmp_path / "nsd") as server:
        yield server


def start(daemons, upstreams, extra=""):
    d = daemons.start("dns-forwarder", config(upstreams, extra))
    return d, d.addr("dns", "udp")[1], d.addr("dns", "tcp")[1]
