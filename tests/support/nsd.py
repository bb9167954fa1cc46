"""A real authoritative DNS server for the forwarder's tests and benchmark: NSD on a loopback
port, unprivileged, with a zone the test writes."""

from __future__ import annotations

import socket
import subprocess
import time
from pathlib import Path

ZONE = "example.test"

# TTLs chosen for the tests: `short` expires in 2 seconds, negative answers (SOA minimum) in 2.
ZONE_TEXT = """$ORIGIN example.test.
$TTL 300
@       3600 IN SOA ns.example.test. hostmaster.example.test. 1 3600 600 86400 2
@            IN NS  ns
; Fake DNSSEC data (never validated): NSD hands out RRSIGs to DO queries once the apex has a
; DNSKEY; the forwarder must pass them back byte for byte.
@            IN DNSKEY 257 3 13 mdsswUyr3DPW132mOi8V9xESWE8jTo0dxCjjnopKl+GqJxpVXckHAeF+KkxLbxILfDLUT0rAK9iUzy1L53eKGQ==
@            IN RRSIG SOA 13 2 3600 20300101000000 20200101000000 12345 example.test. c29hIHNpZ25hdHVyZSwgbm90IHJlYWwgYnV0IGJhc2U2NCBlbmNvZGVkIGFueXdheQ==
ns           IN A   127.0.0.1
www          IN A   192.0.2.10
www          IN AAAA 2001:db8::10
www          IN RRSIG A 13 3 300 20300101000000 20200101000000 12345 example.test. dGhpcyBpcyBub3QgYSByZWFsIHNpZ25hdHVyZSBidXQgaXQgaXMgYmFzZTY0IGVuY29kZWQ=
short    2   IN A   192.0.2.11
alias        IN CNAME www
mixed        IN A   192.0.2.12
{big}
{extra}
"""


def big_txt(count: int = 40) -> str:
    """Enough TXT records that the answer needs more than 1232 bytes: NSD sets TC over UDP."""
    return "\n".join(f'big IN TXT "{i:02d} {"x" * 60}"' for i in range(count))


def free_port() -> int:
    """A port free for both UDP and TCP on 127.0.0.1."""
    for _ in range(100):
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as t:
            t.bind(("127.0.0.1", 0))
            port = t.getsockname()[1]
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as u:
                try:
                    u.bind(("127.0.0.1", port))
                except OSError:
                    continue
                return port
    raise RuntimeError("no free port")


class Nsd:
    def __init__(self, workdir: Path, extra: str = "", port: int | None = None):
        self.dir = workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.port = port or free_port()
        self.extra = extra
        self.proc: subprocess.Popen | None = None

    def __enter__(self) -> "Nsd":
        (self.dir / f"{ZONE}.zone").write_text(ZONE_TEXT.format(big=big_txt(), extra=self.extra))
        conf = self.dir / "nsd.conf"
        conf.write_text(f"""
server:
    ip-address: 127.0.0.1@{self.port}
    port: {self.port}
    username: ""
    chroot: ""
    zonesdir: "{self.dir}"
    database: ""
    pidfile: "{self.dir}/nsd.pid"
    xfrdfile: "{self.dir}/xfrd.state"
    zonelistfile: "{self.dir}/zone.list"
    logfile: "{self.dir}/nsd.log"
    server-count: 1
    tcp-count: 200
    verbosity: 1
    rrl-ratelimit: 0
    rrl-whitelist-ratelimit: 0
remote-control:
    control-enable: no
zone:
    name: {ZONE}
    zonefile: "{self.dir}/{ZONE}.zone"
""")
        subprocess.run(["nsd-checkconf", str(conf)], check=True, capture_output=True)
        self.proc = subprocess.Popen(["nsd", "-d", "-c", str(conf)], stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL)
        # Ready when it answers over UDP.
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                log = (self.dir / "nsd.log").read_text() if (self.dir / "nsd.log").exists() else ""
                raise RuntimeError(f"nsd exited: {log}")
            r = subprocess.run(["dig", "+short", "+time=1", "+tries=1", "-p", str(self.port),
                                "@127.0.0.1", f"www.{ZONE}", "A"], capture_output=True, text=True)
            if "192.0.2.10" in r.stdout:
                return self
            time.sleep(0.1)
        self.stop()
        raise RuntimeError("nsd never answered")

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def __exit__(self, *exc):
        self.stop()
