"""inetkit-smtp-submit relaying through a smarthost: Postfix's smtp-sink down then back, a 550
bounced to the sender, `inetkit queue` listing, flushing and deleting, and STARTTLS with AUTH
to another inetkit."""

import email
import re
import subprocess
import time

from support.homes import PASSWORD
from support.inetkit import free_port
from support.smtp import (Sink, client, config, inbox, needs_sink, relay_config, send, spool_files,
                          wait_delivered)
from support.smtp import home  # noqa: F401 (fixtures)


# -- relay through a smarthost -----------------------------------------------------------------

@needs_sink
def test_relay_to_smarthost_that_is_down_then_back(daemons, home, cert, tmp_path):
    port = free_port()
    d = daemons.start("smtp-submit", config(home, cert, relay=relay_config(port)))
    s = client(d, cert)
    queue_id = send(s, rcpts=["carol@far.example", "bob@example.org"])
    s.quit()
    d.wait_log("relay deferred", timeout=30)
    assert f"{queue_id}.env" in spool_files(home), "kept for a retry"
    assert len(inbox(home, "bob")) == 1, "the local copy does not wait for the relay"
    sink = Sink(tmp_path, port)
    try:
        wait_delivered(d, queue_id, timeout=60)
        [msg] = sink.messages()
        assert b"MAIL FROM:<alice@example.org>" in msg or b"alice@example.org" in msg
        assert b"carol@far.example" in msg
        assert b"Subject: hello" in msg
        assert b"Bcc:" not in msg
    finally:
        sink.stop()
    assert len(inbox(home, "bob")) == 1
    assert spool_files(home) == []


@needs_sink
def test_relay_refused_550_bounces_to_sender(daemons, home, cert, tmp_path):
    port = free_port()
    sink = Sink(tmp_path, port, reject="RCPT")
    try:
        d = daemons.start("smtp-submit", config(home, cert, relay=relay_config(port)))
        s = client(d, cert)
        queue_id = send(s, rcpts=["carol@far.example"])
        s.quit()
        wait_delivered(d, queue_id, timeout=60)
    finally:
        sink.stop()
    [bounce] = inbox(home, "alice")
    msg = email.message_from_bytes(bounce)
    assert msg.get_content_type() == "multipart/report"
    assert msg.get_param("report-type") == "delivery-status"
    parts = [p.get_content_type() for p in msg.walk()]
    assert "message/delivery-status" in parts and "text/rfc822-headers" in parts
    assert b"Final-Recipient: rfc822; carol@far.example" in bounce
    assert b"Action: failed" in bounce and b"Status: 5." in bounce
    assert b"Subject: hello" in bounce
    assert spool_files(home) == []


# -- inetkit queue -----------------------------------------------------------------------------

def queue_cmd(home, *args):
    from support.inetkit import binary
    return subprocess.run([str(binary("inetkit")), "queue", "--spool", str(home / "spool"), *args],
                          capture_output=True, text=True, timeout=30)


@needs_sink
def test_queue_list_flush_delete(daemons, home, cert, tmp_path):
    port = free_port()
    relay = relay_config(port).replace("retry_initial = 1\nretry_max = 1",
                                       "retry_initial = 3600\nretry_max = 3600")
    d = daemons.start("smtp-submit", config(home, cert, relay=relay))
    s = client(d, cert)
    first = send(s, rcpts=["carol@far.example", "bob@example.org"])
    second = send(s, rcpts=["dave@far.example"])
    s.quit()
    d.wait_log(f'relay deferred id="{re.escape(second)}"', timeout=30)
    d.wait_log(f'relay deferred id="{re.escape(first)}"', timeout=30)
    out = queue_cmd(home, "list")
    assert out.returncode == 0, out.stderr
    assert first in out.stdout and second in out.stdout
    assert "<carol@far.example>  pending (smarthost)" in out.stdout
    assert "<bob@example.org>  delivered" in out.stdout
    assert "1 attempts deferred" in out.stdout and re.search(r"next in (59|60)m", out.stdout)
    out = queue_cmd(home, "delete", second)
    assert out.returncode == 0 and f"{second}: deleted" in out.stdout
    assert queue_cmd(home, "delete", "../etc").returncode != 0
    # The smarthost is back; a flush retries now rather than in an hour.
    sink = Sink(tmp_path, port)
    try:
        out = queue_cmd(home, "flush")
        assert out.returncode == 0 and f"{first}: will be retried now" in out.stdout
        wait_delivered(d, first, timeout=60)
        [msg] = sink.messages()
        assert b"carol@far.example" in msg
    finally:
        sink.stop()
    assert queue_cmd(home, "list").stdout.strip() == "The queue is empty."
    assert len(inbox(home, "bob")) == 1


def ca_and_leaf(directory):
    """A CA and a server certificate for localhost it signed (webpki refuses a self-signed CA
    certificate as a server's)."""
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True)
    ca_key, ca = directory / "ca.key", directory / "ca.pem"
    key, csr, leaf = directory / "leaf.key", directory / "leaf.csr", directory / "leaf.pem"
    openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-days", "30", "-subj", "/CN=inetkit test CA", "-keyout", str(ca_key), "-out", str(ca))
    openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
            "-subj", "/CN=localhost", "-keyout", str(key), "-out", str(csr))
    ext = directory / "leaf.ext"
    ext.write_text("basicConstraints=critical,CA:FALSE\nsubjectAltName=DNS:localhost\n"
                   "extendedKeyUsage=serverAuth\n")
    openssl("x509", "-req", "-in", str(csr), "-CA", str(ca), "-CAkey", str(ca_key),
            "-CAcreateserial", "-days", "30", "-extfile", str(ext), "-out", str(leaf))
    return ca, (leaf, key)


def test_relay_over_starttls_with_auth_to_another_inetkit(daemons, home, cert, tmp_path):
    """The smarthost is a second inetkit-smtp-submit that owns far.example: lettre must do
    STARTTLS (verifying the certificate against ca_file) and AUTH before it may send."""
    far = tmp_path / "far"
    far.mkdir()
    ca, leaf = ca_and_leaf(tmp_path)
    (far / "mail").mkdir()
    (far / "users").write_text(f"relay:{{PLAIN}}{PASSWORD}::::::\ncarol:{{PLAIN}}x::::::\n")
    smarthost = daemons.start("smtp-submit", config(far, leaf, auth='plaintext = "never"')
                              .replace('local_domains = ["localhost", "example.org"]',
                                       'local_domains = ["far.example"]')
                              + '[smtp.senders]\nrelay = ["alice@example.org"]\n')
    host, port = smarthost.addr("submission")
    relay = f"""host = "localhost"
port = {port}
tls = "starttls"
ca_file = "{ca}"
username = "relay"
password = "{PASSWORD}"
retry_initial = 1
retry_max = 1
"""
    d = daemons.start("smtp-submit", config(home, cert, relay=relay))
    s = client(d, cert)
    queue_id = send(s, rcpts=["carol@far.example"])
    s.quit()
    wait_delivered(d, queue_id, timeout=60)
    smarthost.wait_log('user="relay".*queued id=', timeout=30)
    deadline = time.monotonic() + 30
    while not inbox(far, "carol") and time.monotonic() < deadline:
        time.sleep(0.1)
    [msg] = inbox(far, "carol")
    # Our Received line, then the smarthost's on top of it.
    assert msg.startswith(b"Received: from mx.test ([127.0.0.1]) by mx.test")
    assert b"with ESMTPSA id " + queue_id.encode() in msg
    assert b"Subject: hello" in msg and b"Bcc:" not in msg
