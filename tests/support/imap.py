"""A raw IMAP session over a plain socket, for tests that check exact untagged responses."""

import re
import socket

from support.homes import PASSWORD


class RawImap:
    """Logged in as alice on the daemon's plaintext `imap` listener. Every wait is bounded by
    the socket's timeout: a missing response fails the test, never hangs it."""

    def __init__(self, d):
        host, port = d.addr("imap")
        self.s = socket.create_connection((host, port), timeout=30)
        self.f = self.s.makefile("rb")
        self.greeting = self.f.readline()
        self.n = 0
        self.command(f'LOGIN alice "{PASSWORD}"')

    def command(self, text: str, expect: bytes = b"OK") -> list[bytes]:
        """Sends `text` and returns every line up to its tagged reply, which must be `expect`."""
        self.n += 1
        tag = f"r{self.n}".encode()
        self.s.sendall(tag + b" " + text.encode() + b"\r\n")
        out = []
        while True:
            line = self.f.readline()
            assert line, out
            out.append(line)
            if line.startswith(tag + b" "):
                assert line.startswith(tag + b" " + expect), out
                return out

    def until(self, pattern: bytes) -> list[bytes]:
        """Lines read until one matches `pattern`."""
        out = []
        while True:
            line = self.f.readline()
            assert line, out
            out.append(line)
            if re.search(pattern, line):
                return out

    def close(self):
        self.s.close()
