"""kill -9 at random moments, many times over, against the real binaries: imapd during APPEND,
COPY, MOVE and EXPUNGE, smtp-submit during submissions, `inetkit deliver` during a delivery.

After every kill, whatever the moment: no message lost, none in two places (twice in a folder,
or in both folders of a MOVE), no UID given to a second message, UIDVALIDITY unchanged and
every surviving message under the UID it had: the restarted process rebuilds its view of the
folder from disk without a client seeing a change. An operation whose tagged OK (SMTP 250,
exit status 0) reached the client before the kill must be complete.

The kill moment is drawn uniformly from [0, 1.5 x a guess of the operation's duration] that
adapts until about half the runs finish before their kill, so kills land before, inside and
after the operation. Tallies are printed (run with -s to read them); INETKIT_CRASH_SEED
replays a run.
"""

import imaplib
import os
import random
import re
import signal
import smtplib
import socket
import statistics
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import pytest

from support.homes import PASSWORD, user_line, write_users
from support.inetkit import Daemon, binary, listening_socket

ITERATIONS = 30
FOLDERS = ("INBOX", "Archive")
SEED = int(os.environ.get("INETKIT_CRASH_SEED") or random.randrange(1 << 32))
TOKEN = re.compile(rb"X-Token: (\S+)")
END = "-- end of message --"


@pytest.fixture
def rng():
    print(f"\nINETKIT_CRASH_SEED={SEED}")
    return random.Random(SEED)


@pytest.fixture
def home(tmp_path):
    write_users(tmp_path / "users", user_line("alice"), user_line("bob"))
    (tmp_path / "mail").mkdir()
    return tmp_path


def common_config(home, cert):
    return f"""
[tls]
cert = "{cert[0]}"
key = "{cert[1]}"
[auth]
users_file = "{home / 'users'}"
failure_delay = 0
[mail]
root = "{home / 'mail'}"
"""


def message(token: str, body_lines: int = 20) -> bytes:
    body = "".join(f"line {i} of message {token}\r\n" for i in range(body_lines))
    return (f"From: alice@example.org\r\nTo: bob@example.org\r\nSubject: {token}\r\n"
            f"X-Token: {token}\r\n\r\n{body}{END}\r\n").encode()


class Service:
    """A daemon behind a listening socket that outlives it, as systemd keeps a .socket's: a
    client connecting while the daemon is dead waits in the backlog for the next one.

    Started through `sh` (LISTEN_PID=$$, the socket moved to fd 3) rather than the support
    module's Python wrapper: a restart then costs milliseconds, not an interpreter start."""

    def __init__(self, workdir, name, socket_name, config):
        self.name, self.socket_name = name, socket_name
        self.conf = workdir / f"{name}.toml"
        self.conf.write_text(config)
        self.workdir = workdir
        self.sock = listening_socket()
        self.addr = self.sock.getsockname()
        self.daemon = None
        self.started = []
        self.kills = 0
        self.start()

    def start(self):
        fd = self.sock.fileno()
        to_fd3 = f"exec 3<&{fd} {fd}<&-; " if fd != 3 else ""
        # bash, not sh: dash takes only one-digit descriptors in redirections.
        argv = ["bash", "-c", to_fd3 + 'LISTEN_PID=$$ exec "$@"', "bash",
                str(binary(f"inetkit-{self.name}")), "-c", str(self.conf)]
        env = {"LISTEN_FDS": "1", "LISTEN_FDNAMES": self.socket_name}
        self.daemon = Daemon._spawn(argv, self.workdir, env, pass_fds=(fd,))
        self.started.append(self.daemon)

    def kill(self):
        os.kill(self.daemon.pid, signal.SIGKILL)
        self.daemon.wait()
        self.kills += 1

    def stop(self):
        for daemon in self.started:
            daemon.stop()
        self.sock.close()


@pytest.fixture
def services(tmp_path):
    """Starts Services for one test and stops them afterwards."""
    made = []

    def start(name, socket_name, config):
        made.append(Service(tmp_path, name, socket_name, config))
        return made[-1]

    yield start
    for service in made:
        service.stop()


class Timing:
    """When to kill: uniformly in [0, 1.5 x a guess of the operation's duration]. The guess
    grows by a quarter after each run cut short and shrinks by a fifth after each run that
    finished, so it settles where about half the runs finish before their kill: kills land
    before, inside and after the operation, however fast it is on this machine."""

    def __init__(self, rng, first_guess):
        self.rng, self.guess, self.samples = rng, first_guess, []

    def delay(self) -> float:
        return self.rng.uniform(0, 1.5 * self.guess)

    def finished_in(self, seconds: float):
        self.samples.append(seconds)
        self.guess *= 0.8

    def cut_short(self):
        self.guess *= 1.25


# -- imapd -------------------------------------------------------------------------------------

class RawImap:
    """Just enough IMAP on a plain socket to send a command and be killed in the middle."""

    def __init__(self, addr):
        self.sock = socket.create_connection(addr, timeout=30)
        self.buf = b""
        self.line()

    def line(self) -> bytes:
        while b"\r\n" not in self.buf:
            data = self.sock.recv(65536)
            if not data:
                raise EOFError
            self.buf += data
        line, self.buf = self.buf.split(b"\r\n", 1)
        return line

    def command(self, tag: str, text: bytes) -> bytes:
        self.sock.sendall(tag.encode() + b" " + text + b"\r\n")
        while True:
            line = self.line()
            if line.startswith(tag.encode() + b" "):
                assert line.split()[1] == b"OK", line
                return line

    def until(self, tag: str, deadline: float):
        """Reads until the tagged reply or the deadline: the reply's line and when it came."""
        prefix = tag.encode() + b" "
        while True:
            if b"\r\n" in self.buf:
                line, self.buf = self.buf.split(b"\r\n", 1)
                if line.startswith(prefix):
                    return line, time.monotonic()
                continue
            left = deadline - time.monotonic()
            if left <= 0:
                return None, None
            self.sock.settimeout(left)
            try:
                data = self.sock.recv(65536)
            except (socket.timeout, ConnectionError):
                return None, None
            if not data:
                return None, None
            self.buf += data

    def rest(self, tag: str):
        """After the kill: the tagged reply if it was sent before the daemon died."""
        self.sock.settimeout(10)
        line, _ = self.until(tag, time.monotonic() + 10)
        self.sock.close()
        return line


# Flags the kill tests give their messages, so that a restart keeping UIDs but losing flags
# (or a COPY or MOVE dropping keywords) shows.
FLAG_SETS = ("", "\\Seen", "\\Flagged $Label1", "\\Answered \\Seen NonJunk")
IGNORED_FLAGS = {"\\Recent", "\\Deleted"}


def flags_of(text: str) -> frozenset:
    return frozenset(text.split()) - IGNORED_FLAGS


def imap_view(addr):
    """{folder: (UIDVALIDITY, {uid: token}, {uid: flags})}, as a client sees it (flags without
    \\Recent and \\Deleted); clears \\Deleted flags."""
    c = imaplib.IMAP4(*addr, timeout=30)
    c.login("alice", PASSWORD)
    view = {}
    for folder in FOLDERS:
        typ, data = c.select(folder)
        assert typ == "OK", (folder, data)
        validity = int(c.response("UIDVALIDITY")[1][0])
        messages, flags = {}, {}
        if int(data[0]):
            typ, data = c.uid("FETCH", "1:*", "(FLAGS BODY.PEEK[HEADER.FIELDS (X-TOKEN)])")
            assert typ == "OK", data
            for item in data:
                if isinstance(item, tuple):
                    uid = int(re.search(rb"UID (\d+)", item[0]).group(1))
                    token = TOKEN.search(item[1]).group(1).decode()
                    assert uid not in messages, f"{folder}: UID {uid} listed twice"
                    messages[uid] = token
                    found = re.search(rb"FLAGS \(([^)]*)\)", item[0])
                    flags[uid] = flags_of(found.group(1).decode())
            c.uid("STORE", "1:*", "-FLAGS.SILENT", "(\\Deleted)")
        view[folder] = (validity, messages, flags)
    c.logout()
    return view


def give_flags(addr, tokens):
    """Sets FLAG_SETS in turn on the INBOX messages with these tokens."""
    c = imaplib.IMAP4(*addr, timeout=30)
    c.login("alice", PASSWORD)
    c.select("INBOX")
    typ, data = c.uid("FETCH", "1:*", "(BODY.PEEK[HEADER.FIELDS (X-TOKEN)])")
    assert typ == "OK", data
    uids = {TOKEN.search(item[1]).group(1).decode(): re.search(rb"UID (\d+)", item[0]).group(1)
            for item in data if isinstance(item, tuple)}
    for n, token in enumerate(tokens):
        flags = FLAG_SETS[n % len(FLAG_SETS)]
        if flags:
            typ, data = c.uid("STORE", uids[token], "+FLAGS.SILENT", f"({flags})")
            assert typ == "OK", data
    c.logout()


def seed(mailbox: Path, tokens):
    """Drops messages into INBOX as an outside delivery agent would (tmp/, then a rename into
    new/): much quicker than APPEND's fsyncs, and the next SELECT numbers them."""
    for token in tokens:
        name = f"{time.time_ns() // 1000}.P{os.getpid()}Q{token}.crashtest"
        (mailbox / "tmp" / name).write_bytes(message(token))
        os.rename(mailbox / "tmp" / name, mailbox / "new" / name)


class Tally(Counter):
    # Shown even when 0: the figures the crash tests exist for.
    ALWAYS = ("lost", "duplicated")

    def show(self, what, *always):
        for key in self.ALWAYS + always:
            self[key] += 0
        print(f"{what}: " + ", ".join(f"{k} {v}" for k, v in sorted(self.items())))


def check_imap(op, before, after, touched, ok, max_uid, tally, appended_flags=frozenset()):
    """Compares the client's view after a kill with the one before; counts what went wrong.

    `touched`: the tokens the operation worked on. Every other message must be where it was,
    under its UID and with its flags; the touched ones may have been moved, copied, expunged
    or added, once, and keep their flags (an APPENDed one has `appended_flags`)."""
    problems = []
    # (folder, token) -> (least, most) copies; for MOVE also the sum over both folders.
    expect = {}
    for folder in FOLDERS:
        counts = Counter(before[folder][1].values())
        for token, n in counts.items():
            expect[(folder, token)] = (n, n)
    for token in touched:
        if op == "APPEND":
            expect[("INBOX", token)] = (1, 1) if ok else (0, 1)
        elif op == "EXPUNGE":
            expect[("INBOX", token)] = (0, 0) if ok else (0, 1)
        elif op == "COPY":
            expect[("Archive", token)] = (1, 1) if ok else (0, 1)
        elif op == "MOVE":
            expect[("INBOX", token)] = (0, 0) if ok else (0, 1)
            expect[("Archive", token)] = (1, 1) if ok else (0, 1)
    seen = {folder: Counter(after[folder][1].values()) for folder in FOLDERS}
    for (folder, token), (least, most) in expect.items():
        n = seen[folder][token]
        if n < least:
            tally["lost"] += least - n
            problems.append(f"{folder}: {token} lost")
        if n > most:
            tally["duplicated"] += n - most
            problems.append(f"{folder}: {token} {n} times")
    for folder in FOLDERS:
        for token in seen[folder]:
            if (folder, token) not in expect:
                tally["duplicated"] += seen[folder][token]
                problems.append(f"{folder}: {token} appeared from nowhere")
    if op == "MOVE":
        for token in touched:
            total = seen["INBOX"][token] + seen["Archive"][token]
            if total != 1:
                tally["lost" if total == 0 else "in two folders"] += 1
                problems.append(f"{token} is in {total} folders after MOVE")
    # The flags every touched message must have wherever it is now.
    source = before["INBOX"]
    wanted = {token: source[2][uid] for uid, token in source[1].items() if token in touched}
    wanted.update({token: appended_flags for token in touched if op == "APPEND"})
    for folder in FOLDERS:
        (v0, old, old_flags), (v1, new, new_flags) = before[folder], after[folder]
        for uid, token in new.items():
            had = old_flags[uid] if old.get(uid) == token else wanted.get(token)
            if had is not None and new_flags[uid] != had:
                tally["flags changed"] += 1
                problems.append(f"{folder}: {token} (UID {uid}) has flags "
                                f"{sorted(new_flags[uid])}, not {sorted(had)}")
        if v0 != v1:
            tally["UIDVALIDITY changed"] += 1
            problems.append(f"{folder}: UIDVALIDITY {v0} -> {v1}")
        where = {token: uid for uid, token in new.items()}
        for uid, token in old.items():
            if token in where and where[token] != uid:
                tally["renumbered"] += 1
                problems.append(f"{folder}: {token} moved from UID {uid} to {where[token]}")
        for uid, token in new.items():
            if uid not in old and uid <= max_uid[folder]:
                tally["UID reused"] += 1
                problems.append(f"{folder}: UID {uid} given again, to {token}")
    return problems


@pytest.mark.parametrize("op", ["APPEND", "COPY", "EXPUNGE", "MOVE"])
def test_kill_9_of_imapd(services, home, cert, rng, op):
    svc = services("imapd", "imap", common_config(home, cert))
    c = imaplib.IMAP4(*svc.addr, timeout=30)
    c.login("alice", PASSWORD)
    assert c.create("Archive")[0] == "OK"
    c.logout()
    timing = Timing(rng, first_guess=0.02)
    tally = Tally()
    max_uid = dict.fromkeys(FOLDERS, 0)
    append_flags = FLAG_SETS[2]
    problems = []
    for i in range(ITERATIONS):
        touched = [f"{op.lower()}-{i}-{n}" for n in range(1 if op == "APPEND" else 12)]
        if op != "APPEND":
            seed(home / "mail" / "alice", touched)
            give_flags(svc.addr, touched)
        before = imap_view(svc.addr)
        for folder in FOLDERS:
            max_uid[folder] = max([max_uid[folder], *before[folder][1]])
        uids = ",".join(str(u) for u, t in before["INBOX"][1].items() if t in touched)

        s = RawImap(svc.addr)
        s.command("a", f'LOGIN alice "{PASSWORD}"'.encode())
        s.command("b", b"SELECT INBOX")
        if op == "EXPUNGE":
            s.command("c", b"UID STORE " + uids.encode() + b" +FLAGS.SILENT (\\Deleted)")
            command = b"EXPUNGE"
        elif op == "APPEND":
            data = message(touched[0], body_lines=20000)  # ~0.6 MB
            command = b"APPEND INBOX (%s) {%d+}\r\n" % (append_flags.encode(), len(data)) + data
        else:
            command = f"UID {op} {uids} Archive".encode()
        s.sock.sendall(b"x " + command + b"\r\n")
        sent = time.monotonic()
        reply, at = s.until("x", sent + timing.delay())
        svc.kill()
        if reply is None:
            timing.cut_short()
            reply = s.rest("x")
        elif at is not None:
            timing.finished_in(at - sent)
        ok = reply is not None and reply.split()[1] == b"OK"
        assert reply is None or ok, reply
        svc.start()

        after = imap_view(svc.addr)
        found = check_imap(op, before, after, touched, ok, max_uid, tally,
                           flags_of(append_flags))
        problems += [f"iteration {i}: {p}" for p in found]
        if ok:
            tally["killed after OK"] += 1
        elif after != before and not (op == "EXPUNGE" and not uids):
            tally["killed mid-operation (partly or wholly done)"] += 1
        else:
            tally["killed before any effect"] += 1
    tally["iterations"] = ITERATIONS
    tally["kills"] = svc.kills
    # Copies and appends cut off while being written: in tmp/, which no client sees.
    mailbox = home / "mail" / "alice"
    tally["files left in tmp/"] = sum(len(list((mailbox / d / "tmp").iterdir()))
                                      for d in (".", ".Archive"))
    tally.show(f"imapd {op}", "in two folders", "UID reused", "flags changed")
    if timing.samples:
        print(f"median duration {statistics.median(timing.samples) * 1000:.1f} ms "
              f"({len(timing.samples)} runs finished before their kill)")
    assert not problems, "\n".join(problems)
    for key in ("lost", "duplicated", "in two folders", "UID reused", "renumbered",
                "flags changed"):
        assert tally[key] == 0, key


# -- smtp-submit -------------------------------------------------------------------------------

def smtp_config(home, cert):
    return common_config(home, cert) + f"""
[smtp]
hostname = "mx.test"
local_domains = ["localhost", "example.org"]
spool = "{home / 'spool'}"
"""


def maildir_tokens(home, user):
    """Every message file of the user's INBOX a client could see: token -> count. Each file
    must be whole."""
    counts = Counter()
    for sub in ("new", "cur"):
        directory = home / "mail" / user / sub
        for path in directory.iterdir() if directory.is_dir() else ():
            data = path.read_bytes()
            assert data.endswith(f"{END}\r\n".encode()), f"{path} is not whole"
            counts[TOKEN.search(data).group(1).decode()] += 1
    return counts


def test_kill_9_of_smtp_submit_during_submissions(services, home, cert, rng):
    svc = services("smtp-submit", "submission", smtp_config(home, cert))
    accepted, sent = set(), []
    stop = threading.Event()
    errors = []

    def submitter():
        n = 0
        while not stop.is_set():
            try:
                s = smtplib.SMTP(*svc.addr, timeout=30)
                s.ehlo("client.test")
                s.login("alice", PASSWORD)
                while not stop.is_set():
                    token = f"smtp-{n}"
                    n += 1
                    sent.append(token)
                    s.sendmail("alice@example.org", ["bob@example.org"], message(token))
                    accepted.add(token)
            except (smtplib.SMTPServerDisconnected, ConnectionError):
                continue  # killed: the next connection waits for the restarted daemon
            except Exception as err:  # noqa: BLE001 - reported below
                errors.append(err)
                return

    thread = threading.Thread(target=submitter, daemon=True)
    thread.start()
    for _ in range(ITERATIONS):
        time.sleep(rng.uniform(0, 0.1))
        svc.kill()
        svc.start()
    time.sleep(0.2)
    stop.set()
    thread.join(timeout=30)
    assert not errors, errors

    # The last daemon delivers whatever the killed ones left in the spool.
    spool = home / "spool"
    deadline = time.monotonic() + 30
    while any(p.is_file() for p in spool.rglob("*")) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not [p for p in spool.rglob("*") if p.is_file()], "the spool was drained"
    counts = maildir_tokens(home, "bob")
    lost = [t for t in accepted if counts[t] == 0]
    duplicated = [t for t, n in counts.items() if n > 1]
    unknown = [t for t in counts if t not in sent]
    tally = Tally(iterations=ITERATIONS, kills=svc.kills, submissions=len(sent),
                  accepted=len(accepted), delivered=sum(counts.values()),
                  **{"cut off before 250, delivered": len(set(counts) - accepted),
                     "lost": len(lost), "duplicated": len(duplicated)})
    tally.show("smtp-submit")
    assert len(accepted) > ITERATIONS, "the kills left room for submissions"
    assert not lost and not duplicated and not unknown, (lost, duplicated, unknown)


# -- inetkit deliver ---------------------------------------------------------------------------

def store_listing(root, user="alice"):
    """(UIDVALIDITY, {uid: token}) through `inetkit mail list`, which indexes the folder."""
    out = subprocess.run([str(binary("inetkit")), "mail", "list", user, "--mail-root", str(root),
                          "--users", str(root.parent / "users")],
                         capture_output=True, check=True, timeout=60).stdout.decode().splitlines()
    validity = int(out[0].split()[1])
    messages = {}
    for line in out[1:]:
        uid, _size, _vsize, flags, base = line.split(" ", 4)
        sub, name = ("new", base) if flags == "-" and (root / user / "new" / base).exists() \
            else ("cur", f"{base}:2,{'' if flags == '-' else flags}")
        data = (root / user / sub / name).read_bytes()
        assert data.endswith(f"{END}\r\n".encode()), f"UID {uid} is not whole"
        messages[int(uid)] = TOKEN.search(data).group(1).decode()
    return validity, messages


def test_kill_9_of_inetkit_deliver(home, rng):
    root = home / "mail"
    deliver = [str(binary("inetkit")), "deliver", "--mail-root", str(root),
               "--users", str(home / "users"), "alice"]
    subprocess.run(deliver, input=message("seed"), check=True, capture_output=True)
    validity, known = store_listing(root)
    timing = Timing(rng, first_guess=0.02)
    tally = Tally()
    problems = []
    i = 0
    # Runs that finish before their kill moment are not kills: go on until there were enough.
    while tally["kills"] < ITERATIONS and i < 3 * ITERATIONS:
        i += 1
        token = f"deliver-{i}"
        data = message(token, body_lines=8000)  # ~0.25 MB: the kill can land mid-write
        proc = subprocess.Popen(deliver, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE)
        started = time.monotonic()

        def feed(proc=proc, data=data):
            try:
                proc.stdin.write(data)
                proc.stdin.close()
            except (BrokenPipeError, ValueError):
                pass

        feeder = threading.Thread(target=feed)
        feeder.start()
        try:
            proc.wait(timeout=timing.delay())
            timing.finished_in(time.monotonic() - started)
        except subprocess.TimeoutExpired:
            timing.cut_short()
            proc.send_signal(signal.SIGKILL)
            tally["kills"] += 1
        proc.wait()
        feeder.join()
        proc.stdout.close()
        proc.stderr.close()
        done = proc.returncode == 0

        new_validity, messages = store_listing(root)
        count = Counter(messages.values())
        if new_validity != validity:
            problems.append(f"iteration {i}: UIDVALIDITY {validity} -> {new_validity}")
        for uid, old in known.items():
            if messages.get(uid) != old:
                tally["lost"] += 1
                problems.append(f"iteration {i}: UID {uid} ({old}) now {messages.get(uid)}")
        for uid in set(messages) - set(known):
            if uid <= max(known, default=0):
                tally["UID reused"] += 1
                problems.append(f"iteration {i}: UID {uid} reused")
        if done and count[token] == 0:
            tally["lost"] += 1
            problems.append(f"iteration {i}: {token} lost after its exit status 0")
        for twice in [t for t, n in count.items() if n > 1]:
            tally["duplicated"] += 1
            problems.append(f"iteration {i}: {twice} is there {count[twice]} times")
        if done:
            tally["finished before the kill"] += 1
        else:
            tally["killed mid-delivery, " + ("kept" if count[token] else "nothing kept")] += 1
        known = messages
    tally["iterations"] = i
    tally.show("inetkit deliver", "UID reused")
    assert tally["kills"] == ITERATIONS
    assert not problems, "\n".join(problems)
    # What killed writers left in tmp/ is not a message: no client sees it, and the store's
    # cleaner removes it once it is old.
    print(f"files left in tmp/: {len(list((root / 'alice' / 'tmp').iterdir()))}")
