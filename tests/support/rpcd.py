"""What the rpcd tests share: the daemon's config with its users and configured commands, the
daemon started with two test variables in its environment (the `rpcd` fixture), and the ways
in: an XML-RPC ServerProxy, curl for JSON-RPC, and a raw http.client POST."""

import base64
import http.client
import subprocess
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
