"""The Maildir store driven through `inetkit deliver` and `inetkit mail`, several processes at once.

Every test uses its own mail root under tmp_path; nothing touches /var/lib/inetkit.
"""

import os
import random
import resource
import signal
import subprocess
import threading
from pathlib import Path

import pytest

from support.homes import user_line, write_users
from support.inetkit import binary

USER = "alice"


def inetkit(root, *args, stdin=None, check=True, **kw):
    """Runs `inetkit ARGS... --mail-root ROOT --users ROOT/../users` and returns the completed
    process. That users file (alice and bob) is written on first use: the store's users must
    exist, or deliver and mail refuse them."""
    users = root.parent / "users"
    if not users.exists():
        root.parent.mkdir(parents=True, exist_ok=True)
        write_users(users, user_line(USER), user_line("bob"))
    proc = subprocess.run(
        [binary("inetkit"), *args, "--mail-root", str(root), "--users", str(users)],
        input=stdin, capture_output=True, timeout=60, **kw,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"inetkit {' '.join(args)}: {proc.returncode}: {proc.stderr.decode()}")
    return proc


def deliver(root, text: bytes, user=USER) -> str:
    """Delivers a message; returns its base name (the printed path's file name)."""
    path = Path(inetkit(root, "deliver", user, stdin=text).stdout.decode().strip())
    assert path.parent == root / user / "new"
    return path.name


def listing(root, user=USER, folder="INBOX"):
    """(uidvalidity, uidnext, [(uid, size, vsize, flags, base)]) from `inetkit mail list`."""
    lines = inetkit(root, "mail", "list", user, "--folder", folder).stdout.decode().splitlines()
    head = lines[0].split()
    assert head[0] == "UIDVALIDITY" and head[2] == "UIDNEXT", lines[0]
    messages = []
    for line in lines[1:]:
        uid, size, vsize, flags, base = line.split(" ", 4)
        messages.append((int(uid), int(size), int(vsize), "" if flags == "-" else flags, base))
    return int(head[1]), int(head[3]), messages


def files(directory: Path):
    return sorted(p.name for p in directory.iterdir())


def test_deliver_list_flag_delete(tmp_path):
    root = tmp_path / "mail"
    a = deliver(root, b"Subject: one\n\nbody\n")
    msg = tmp_path / "msg.eml"
    msg.write_bytes(b"Subject: two\r\n\r\nbody\r\n")
    out = inetkit(root, "deliver", USER, str(msg)).stdout.decode().strip()
    b = Path(out).name
    assert a.endswith(",S=19,W=22") and b.endswith(",S=22,W=22")
    assert (root / USER / "new" / b).read_bytes() == msg.read_bytes()
    assert inetkit(root, "mail", "folders", USER).stdout.decode().split() == [
        "INBOX", "Drafts", "Junk", "Sent", "Trash"]

    validity, uidnext, messages = listing(root)
    assert uidnext == 3
    assert messages == [(1, 19, 22, "", a), (2, 22, 22, "", b)]

    assert inetkit(root, "mail", "flag", USER, "1", "+SF").stdout.decode().split() == ["1", "FS"]
    inetkit(root, "mail", "flag", USER, "1", "-F")
    assert (root / USER / "cur" / f"{a}:2,S").exists()
    inetkit(root, "mail", "delete", USER, "2")
    assert listing(root) == (validity, 3, [(1, 19, 22, "S", a)])
    assert files(root / USER / "new") == []

    bad = inetkit(root, "deliver", "../etc", stdin=b"x", check=False)
    assert bad.returncode == 1 and b"invalid user name" in bad.stderr
    missing = inetkit(root, "mail", "flag", USER, "7", "S", check=False)
    assert missing.returncode == 1 and b"no message with UID 7" in missing.stderr


def test_concurrent_deliver_flag_delete_and_list(tmp_path):
    """Four processes deliver at a time while others flag, delete and list: no message lost or
    doubled, no UID changed or reused, UIDVALIDITY constant."""
    root = tmp_path / "mail"
    writers, per_writer = 4, 100
    doomed = {deliver(root, f"Subject: doomed {i}\n\n".encode()) for i in range(40)}
    # A larger directory, as another program would leave it: a scan then takes several
    # getdents calls, and a rename between two of them could hide a file from it (the store
    # locks against that). Processes rename too slowly to hit that window often; the
    # in-process test in common/maildir/src/tests.rs is the one that provokes it reliably.
    preseeded = [f"{1600000000 + i}.P1Q{i}.otherhost" for i in range(2000)]
    for i, base in enumerate(preseeded):
        (root / USER / "cur" / f"{base}:2,S").write_text(f"Subject: old\nX-Token: old-{i}\n\n")
    validity, _, _ = listing(root)

    delivered = []          # base names, from the writers
    observed = []           # every listing the watchers saw
    flags_set = {}          # base -> the flags the flagger set last
    errors = []
    writing = threading.Event()
    writing.set()

    def guard(fn):
        def run(*args):
            try:
                fn(*args)
            except BaseException as err:  # noqa: BLE001 - reported by the main thread
                errors.append(err)
        return run

    @guard
    def writer(w):
        for i in range(per_writer):
            delivered.append(deliver(root, f"Subject: {w}/{i}\nX-Token: {w}-{i}\n\nbody\n".encode()))

    @guard
    def watcher():
        while writing.is_set():
            observed.append(listing(root))

    @guard
    def flagger(n):
        # Each flagger owns the messages whose UID % 2 is n, so the last flags set must stick.
        rng = random.Random(n)
        while writing.is_set():
            seen = listing(root)
            observed.append(seen)
            live = [(uid, base) for uid, _, _, _, base in seen[2]
                    if base not in doomed and uid % 2 == n]
            for uid, base in rng.sample(live, min(30, len(live))):
                flags = rng.choice(["S", "F", "RS", "DFT", ""])
                out = inetkit(root, "mail", "flag", USER, str(uid), f"={flags}").stdout.decode()
                assert out.split() == ([str(uid), flags] if flags else [str(uid)])
                flags_set[base] = flags

    @guard
    def deleter():
        pending = set(doomed)
        while pending:
            _, _, messages = listing(root)
            for uid, _, _, _, base in messages:
                if base in pending:
                    inetkit(root, "mail", "delete", USER, str(uid))
                    pending.discard(base)
                    break

    threads = [threading.Thread(target=writer, args=(w,)) for w in range(writers)]
    helpers = [threading.Thread(target=f) for f in (watcher, watcher, deleter)]
    helpers += [threading.Thread(target=flagger, args=(n,)) for n in (0, 1)]
    for t in threads + helpers:
        t.start()
    for t in threads:
        t.join()
    writing.clear()
    for t in helpers:
        t.join()
    assert not errors, errors

    final_validity, uidnext, messages = listing(root)
    bases = [m[4] for m in messages]
    assert len(delivered) == writers * per_writer
    assert sorted(bases) == sorted(delivered + preseeded), "each message once, the doomed gone"
    uids = [m[0] for m in messages]
    assert uids == sorted(set(uids)) and uidnext > uids[-1]

    # One UID per message for good, and no UID ever used for two messages.
    uid_of, base_of = {}, {}
    for v, _, seen in observed + [(final_validity, uidnext, messages)]:
        assert v == validity
        for uid, _, _, _, base in seen:
            assert uid_of.setdefault(base, uid) == uid, f"{base} changed UID"
            assert base_of.setdefault(uid, base) == base, f"UID {uid} reused"
    assert len(observed) > 10 and len(flags_set) > 10, (len(observed), len(flags_set))
    print(f"{len(observed)} listings, {len(flags_set)} messages flagged")

    # The last flags set stuck, and the files hold what was delivered.
    final = {m[4]: m[3] for m in messages}
    for base, flags in flags_set.items():
        assert final[base] == flags, base
    tokens = set()
    for sub in ("new", "cur"):
        for path in (root / USER / sub).iterdir():
            text = path.read_text()
            token = next(line for line in text.splitlines() if line.startswith("X-Token:"))
            tokens.add(token)
    assert len(tokens) == writers * per_writer + len(preseeded)
    assert files(root / USER / "tmp") == []


def test_lost_uid_list_is_survivable(tmp_path):
    root = tmp_path / "mail"
    for i in range(3):
        deliver(root, f"Subject: {i}\n\n".encode())
    first = inetkit(root, "mail", "list", USER)
    assert "uid list" not in first.stderr.decode(), "indexing a new folder is no loss"
    validity, _, before = listing(root)
    (root / USER / "inetkit-uidlist").unlink()
    warning = inetkit(root, "mail", "folders", USER).stderr.decode()
    assert "uid list missing" not in warning  # only a snapshot looks at the uid list
    new_validity, uidnext, after = listing(root)
    assert new_validity > validity
    assert sorted(m[4] for m in after) == sorted(m[4] for m in before)
    assert [m[0] for m in after] == [1, 2, 3] and uidnext == 4
    (root / USER / "inetkit-uidlist").write_text("not a uid list\n")
    proc = inetkit(root, "mail", "list", USER)
    assert "uid list corrupt" in proc.stderr.decode(), proc.stderr
    assert int(proc.stdout.split()[1]) > new_validity
    (root / USER / "inetkit-uidlist").unlink()
    assert "uid list missing" in inetkit(root, "mail", "list", USER).stderr.decode()


def test_outside_delivery_is_picked_up(tmp_path):
    """A Maildir made and filled by another program (procmail, a script) is used as it is."""
    root = tmp_path / "mail"
    for sub in ("tmp", "new", "cur"):
        (root / "bob" / sub).mkdir(parents=True)
    (root / "bob" / "new" / "1700000000.1234_0.otherhost").write_bytes(b"Subject: a\n\nx\n")
    (root / "bob" / "cur" / "1700000001.99.otherhost:2,RS").write_bytes(b"Subject: b\r\n\r\n")
    _, _, messages = listing(root, "bob")
    assert [m[1:] for m in messages] == [
        (14, 17, "", "1700000000.1234_0.otherhost"),
        (14, 14, "RS", "1700000001.99.otherhost"),
    ]
    assert inetkit(root, "mail", "folders", "bob").stdout.decode().split() == ["INBOX"]


def _no_partial_message(mailbox: Path, expected_new):
    assert files(mailbox / "new") == expected_new
    assert files(mailbox / "cur") == []
    assert files(mailbox / "tmp") == []


def test_full_disk_leaves_no_partial_message(tmp_path):
    """A real full file system: a 256 KiB tmpfs (needs root and mount)."""
    if os.geteuid() != 0:
        pytest.skip("mounting a small tmpfs needs root")
    small = tmp_path / "small"
    small.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(small)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here")
    try:
        root = small / "mail"
        first = deliver(root, b"Subject: fits\n\nsmall\n")
        big = b"Subject: too big\n\n" + b"x" * 999 + b"\n"
        proc = inetkit(root, "deliver", USER, stdin=big * 1024, check=False)
        assert proc.returncode == 1
        assert b"No space left on device" in proc.stderr, proc.stderr
        _no_partial_message(root / USER, [first])
        # Space is back once the failed message is gone: the next delivery works.
        second = deliver(root, b"Subject: fits too\n\n")
        _no_partial_message(root / USER, sorted([first, second]))
    finally:
        subprocess.run(["umount", str(small)], check=True)


def test_file_size_limit_leaves_no_partial_message(tmp_path):
    """The same without root: RLIMIT_FSIZE makes write() fail (EFBIG) as a full disk would.
    SIGXFSZ is ignored in the child, as it must be for write() to return the error."""
    root = tmp_path / "mail"
    first = deliver(root, b"Subject: fits\n\n")

    def limit():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))

    proc = inetkit(root, "deliver", USER, stdin=b"x" * 200_000, check=False, preexec_fn=limit)
    assert proc.returncode == 1
    assert b"File too large" in proc.stderr, proc.stderr
    _no_partial_message(root / USER, [first])


def test_root_gives_new_files_to_the_owner(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("needs root to chown")
    import pwd
    nobody = pwd.getpwnam("nobody")
    root = tmp_path / "mail"
    delivered = inetkit(root, "deliver", "--owner", "nobody", USER,
                        stdin=b"Subject: x\n\n").stdout.decode().strip()
    inetkit(root, "mail", "list", "--owner", "nobody", USER)
    mailbox = root / USER
    paths = [root, mailbox, mailbox / "new", mailbox / ".Sent" / "cur", Path(delivered),
             mailbox / "inetkit-uidlist", mailbox / "inetkit-uidlist.lock"]
    for path in paths:
        st = path.stat()
        assert (st.st_uid, st.st_gid) == (nobody.pw_uid, nobody.pw_gid), path
