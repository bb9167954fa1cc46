"""The daemons' log lines as data: `session ended` lines and smtp-submit's `queued` lines parsed
into their fields, as a sysadmin's grep or a log shipper would take them."""

from __future__ import annotations

import re
import ssl

FIELD = re.compile(r'(\w+)=("(?:[^"\\]|\\.)*"|\S+)')


def fields(line: str, message: str) -> dict[str, str]:
    """The key=value fields after `message` in one formatted log line (quotes removed)."""
    _, _, rest = line.partition(f" {message} ")
    return {k: v[1:-1] if v.startswith('"') else v for k, v in FIELD.findall(rest)}


def session_end(d, socket: str | None = None, port: int | None = None,
                timeout: float = 10.0) -> dict[str, str]:
    """The end line of the session from client port `port`, else of the first session on
    `socket`, waiting for it."""
    if port is not None:
        pattern = rf"session ended peer=\S+:{port} "
    else:
        pattern = rf"session ended peer=\S+ socket={re.escape(socket)} "
    line = d.wait_log(pattern, timeout=timeout)
    assert " INFO " in line, line
    return fields(line, "session ended")


def negotiated(sock: ssl.SSLSocket) -> tuple[str, str]:
    """The TLS version `sock` negotiated and the suite's IANA name, which rustls logs (OpenSSL
    names TLS 1.3 suites `TLS_AES_256_GCM_SHA384`, IANA and rustls `TLS13_AES_256_GCM_SHA384`).
    Asked while the socket is open."""
    name, version, _ = sock.cipher()
    assert version == "TLSv1.3", "only TLS 1.3 suites map by name"
    return sock.version(), "TLS13_" + name.removeprefix("TLS_")


def assert_tls(end: dict[str, str], tls: tuple[str, str]):
    """`end` names the TLS version and suite the client negotiated (`negotiated`)."""
    assert (end["tls"], end.get("cipher")) == tls, end


def assert_plain(end: dict[str, str]):
    assert end["tls"] == "no", end
    assert "cipher" not in end, end
