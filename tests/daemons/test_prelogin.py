"""Connection slots before login (issue 13.8): a session that has not logged in counts against
`[limits] max_unauthenticated_per_ip` and is closed with the protocol's farewell at
`[limits] login_timeout`; once logged in, it is an ordinary session.

Each daemon with a login (pop3d, imapd, smtp-submit, ftpd, rpcd) is driven by its real client.
Connections come from 127.0.0.1 and, for "another address", from 127.0.0.2 (loopback too)."""

import base64
import ftplib
import http.client
import imaplib
import poplib
import smtplib
import socket
import time
import xmlrpc.client

import pytest

from support.homes import PASSWORD, daemon_config, user_line, write_users

HERE = "127.0.0.1"
ELSEWHERE = "127.0.0.2"
CAP = 2


def limits(cap=CAP, login_timeout=60):
    return f"[limits]\nmax_unauthenticated_per_ip = {cap}\nlogin_timeout = {login_timeout}\n"


def mail_config(sockets, mailhome, extra):
    return daemon_config(sockets, mailhome.users, auth="failure_delay = 0\n",
                         rest=f'[mail]\nroot = "{mailhome.mail}"\n{extra}')


# --- clients, each able to connect from a given source address ---------------------------

class POP3From(poplib.POP3):
    def __init__(self, addr, source):
        self.source = source
        super().__init__(*addr, timeout=30)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))


class IMAP4From(imaplib.IMAP4):
    def __init__(self, addr, source):
        self.source = source
        super().__init__(*addr, timeout=30)

    def _create_socket(self, timeout):
        return socket.create_connection((self.host, self.port), timeout,
                                        source_address=(self.source, 0))


class Pop3:
    name, sockets, socket = "pop3d", ("pop3",), "pop3"
    busy = r"-ERR \[SYS/TEMP\] Too busy"
    farewell = "-ERR Disconnected: no login in the time allowed."

    @staticmethod
    def config(ctx, extra):
        return mail_config(Pop3.sockets, ctx["mailhome"], extra)

    @staticmethod
    def connect(d, source=HERE):
        return POP3From(d.addr("pop3"), source)

    @staticmethod
    def refused(d, source=HERE):
        with pytest.raises(poplib.error_proto) as refused:
            Pop3.connect(d, source)
        return refused.value.args[0].decode()

    @staticmethod
    def login(c, user="bob"):
        c.user(user)
        c.pass_(PASSWORD)

    @staticmethod
    def works(c):
        return c.stat() == (0, 0)

    @staticmethod
    def poke_until_closed(c):
        """Commands (USER: NOOP needs a login) until the server says goodbye; its last words."""
        while True:
            try:
                c.user("nobody")
            except poplib.error_proto as err:
                return err.args[0].decode()
            time.sleep(0.2)


class Imap:
    name, sockets, socket = "imapd", ("imap",), "imap"
    busy = r"\* BYE \[UNAVAILABLE\] Too busy"
    farewell = "No login in the time allowed."

    @staticmethod
    def config(ctx, extra):
        return mail_config(Imap.sockets, ctx["mailhome"], extra)

    @staticmethod
    def connect(d, source=HERE):
        return IMAP4From(d.addr("imap"), source)

    @staticmethod
    def refused(d, source=HERE):
        # A BYE greeting (RFC 3501 7.1.5): imaplib raises with the line.
        with pytest.raises(imaplib.IMAP4.error) as refused:
            Imap.connect(d, source)
        return refused.value.args[0].decode()

    @staticmethod
    def login(c, user="bob"):
        c.login(user, PASSWORD)

    @staticmethod
    def works(c):
        return c.select("INBOX")[0] == "OK"

    @staticmethod
    def poke_until_closed(c):
        while True:
            try:
                c.noop()
            except imaplib.IMAP4.abort as err:
                return str(err)
            time.sleep(0.2)


class Smtp:
    name, sockets, socket = "smtp-submit", ("submission",), "submission"
    busy = r"^421 4\.3\.2 Too busy"
    farewell = "421 4.4.2 No login in the time allowed; closing the connection."

    @staticmethod
    def config(ctx, extra):
        home = ctx["mailhome"].users.parent
        return daemon_config(Smtp.sockets, ctx["mailhome"].users, auth="failure_delay = 0\n",
                             rest=f"""[mail]
root = "{ctx['mailhome'].mail}"
[smtp]
hostname = "mx.test"
local_domains = ["localhost"]
spool = "{home / 'spool'}"
{extra}""")

    @staticmethod
    def connect(d, source=HERE):
        s = smtplib.SMTP(*d.addr("submission"), timeout=30, source_address=(source, 0))
        s.ehlo("client.test")
        return s

    @staticmethod
    def refused(d, source=HERE):
        with pytest.raises(smtplib.SMTPConnectError) as refused:
            smtplib.SMTP(*d.addr("submission"), timeout=30, source_address=(source, 0))
        code, text = refused.value.args
        return f"{code} {text.decode()}"

    @staticmethod
    def login(c, user="bob"):
        c.login(user, PASSWORD)

    @staticmethod
    def works(c):
        return c.noop()[0] == 250

    @staticmethod
    def poke_until_closed(c):
        while True:
            try:
                code, text = c.noop()
            except smtplib.SMTPServerDisconnected as err:
                return str(err)
            if code != 250:
                return f"{code} {text.decode()}"
            time.sleep(0.2)


class Ftp:
    name, sockets, socket = "ftpd", ("ftp",), "ftp"
    busy = r"^421 Too busy"
    farewell = "421 Login timed out."

    @staticmethod
    def config(ctx, extra):
        tmp = ctx["tmp"]
        return daemon_config(Ftp.sockets, ctx["mailhome"].users, auth="failure_delay = 0\n",
                             rest=f'[ftp]\nroot = "{tmp / "ftproot"}"\n{extra}')

    @staticmethod
    def connect(d, source=HERE):
        f = ftplib.FTP(source_address=(source, 0))
        f.connect(*d.addr("ftp"), timeout=30)
        return f

    @staticmethod
    def refused(d, source=HERE):
        with pytest.raises(ftplib.error_temp) as refused:
            Ftp.connect(d, source)
        return str(refused.value)

    @staticmethod
    def login(c, user="bob"):
        c.login(user, PASSWORD)

    @staticmethod
    def works(c):
        return c.pwd() == "/"

    @staticmethod
    def poke_until_closed(c):
        while True:
            try:
                c.voidcmd("NOOP")
            except ftplib.error_temp as err:
                return str(err)
            time.sleep(0.2)


class RpcConn:
    """An HTTP/1.1 keep-alive connection to rpcd that may log in with HTTP Basic."""

    def __init__(self, d, source):
        self.http = http.client.HTTPConnection(*d.addr("rpc"), timeout=30,
                                               source_address=(source, 0))
        self.http.connect()
        self.auth = None

    def call(self, method):
        headers = {"Content-Type": "text/xml"}
        if self.auth:
            headers["Authorization"] = self.auth
        self.http.request("POST", "/RPC2", xmlrpc.client.dumps((), method), headers)
        reply = self.http.getresponse()
        return reply.status, reply.read()


class Rpc:
    name, sockets, socket = "rpcd", ("rpc",), "rpc"
    busy = r"^HTTP/1\.1 503 Service Unavailable"

    @staticmethod
    def config(ctx, extra):
        return daemon_config(Rpc.sockets, ctx["mailhome"].users, auth="failure_delay = 0\n",
                             rest=f'[builtins]\npublic = ["host.uptime"]\n{extra}')

    @staticmethod
    def connect(d, source=HERE):
        return RpcConn(d, source)

    @staticmethod
    def refused(d, source=HERE):
        # The reply is written as the connection is taken; read it as it comes.
        with socket.create_connection(d.addr("rpc"), 30, source_address=(source, 0)) as s:
            return s.makefile("rb").readline().decode()

    @staticmethod
    def login(c, user="bob"):
        c.auth = "Basic " + base64.b64encode(f"{user}:{PASSWORD}".encode()).decode()
        assert c.call("host.hostname")[0] == 200

    @staticmethod
    def works(c):
        return c.call("host.hostname")[0] == 200


PROTOCOLS = [Pop3, Imap, Smtp, Ftp, Rpc]


@pytest.fixture
def ctx(mailhome, tmp_path):
    # A user per session that logs in (POP3 locks a maildrop to one session).
    write_users(mailhome.users, *(user_line(f"user{i}") for i in range(4)))
    return {"mailhome": mailhome, "tmp": tmp_path}


@pytest.mark.parametrize("proto", PROTOCOLS, ids=lambda p: p.name)
def test_connections_not_logged_in_are_capped_per_address(daemons, ctx, proto):
    d = daemons.start(proto.name, proto.config(ctx, limits()))
    logged_in = proto.connect(d)
    proto.login(logged_in, "user0")
    waiting = [proto.connect(d) for _ in range(CAP)]

    # One more from the same address is turned away with the busy reply...
    assert_matches(proto.busy, proto.refused(d))
    d.wait_log("limit of connections not logged in per address reached, refusing")
    # ...while the logged-in session from that address goes on,
    assert proto.works(logged_in)
    # another address is served,
    elsewhere = proto.connect(d, ELSEWHERE)
    # and a waiting session that logs in makes room for a new one.
    proto.login(waiting[0], "user1")
    assert proto.works(waiting[0])
    another = proto.connect(d)
    assert_matches(proto.busy, proto.refused(d))
    proto.login(another, "user2")
    proto.login(elsewhere, "user3")
    assert proto.works(another) and proto.works(elsewhere)


@pytest.mark.parametrize("proto", [Pop3, Imap, Smtp, Ftp], ids=lambda p: p.name)
def test_a_session_that_does_not_log_in_in_time_gets_the_farewell(daemons, ctx, proto):
    d = daemons.start(proto.name, proto.config(ctx, limits(login_timeout=1)))
    # Keeping busy without logging in does not help.
    talker = proto.connect(d)
    assert proto.farewell in proto.poke_until_closed(talker)
    # A session that logged in is not bound by it.
    logged_in = proto.connect(d)
    proto.login(logged_in, "user0")
    time.sleep(1.5)
    assert proto.works(logged_in)


def test_rpcd_lets_go_of_a_keep_alive_connection_that_does_not_log_in(daemons, ctx):
    d = daemons.start("rpcd", Rpc.config(ctx, limits(login_timeout=1)))
    anonymous = Rpc.connect(d)
    assert anonymous.call("host.uptime")[0] == 200
    # The server closes it: the client reads the end of the stream.
    assert anonymous.http.sock.recv(1) == b""

    logged_in = Rpc.connect(d)
    Rpc.login(logged_in, "user0")
    time.sleep(1.5)
    sock = logged_in.http.sock
    assert Rpc.works(logged_in)
    assert logged_in.http.sock is sock, "the same connection"


def test_a_login_timeout_of_zero_is_off(daemons, ctx):
    d = daemons.start("pop3d", Pop3.config(ctx, limits(login_timeout=0)))
    c = Pop3.connect(d)
    time.sleep(1.5)
    assert "USER" in c.capa()
    Pop3.login(c, "user0")
    assert Pop3.works(c)


def assert_matches(pattern, text):
    import re
    assert re.search(pattern, text), f"{text!r} does not match {pattern!r}"
