"""inetkit-imapd against the RFC 3501 points imaptest found (fetch-envelope, search-addresses,
subscribe, keywords announced before use) and the folder bugs a new user hit: subscriptions
after DELETE, names with the on-disk separator, INBOX's children, Dovecot's Maildir++ names,
uid lists and keywords, and the special-use folders at login."""

import imaplib
import os
import re
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest

from support.homes import PASSWORD, daemon_config, message, seed
from support.imap import RawImap, ok


def config(users, mail, folders=""):
    return daemon_config(("imap",), users, auth="failure_delay = 0\n",
                         rest=f'[mail]\nroot = "{mail}"\n{folders}[log]\nlevel = "debug"\n')


@pytest.fixture
def imap(daemons, mailhome):
    users, mail = mailhome
    seed(mail, "alice", message(1))
    d = daemons.start("imapd", config(users, mail))
    d.mail = mail
    return d


def client(d) -> imaplib.IMAP4:
    """Plaintext on loopback, which the default config allows."""
    host, port = d.addr("imap")
    c = imaplib.IMAP4(host, port, timeout=30)
    ok(c.login("alice", PASSWORD))
    return c


def append(c, folder, msg: bytes):
    ok(c.append(folder, None, None, msg))


class Raw(RawImap):
    """A raw session, for the order of untagged responses (imaplib sorts them by name)."""

    def __init__(self, d):
        super().__init__(d)
        assert self.greeting.startswith(b"* OK"), self.greeting


# -- RFC 3501 -----------------------------------------------------------------------------------

def test_envelope_groups_invent_no_address(imap):
    """§7.4.2: a group is its start marker, its members, its end marker; `(foo)` alone in a
    group is a comment, not a member (imaptest fetch-envelope)."""
    c = client(imap)
    append(c, "INBOX", b"From: a@example.org\r\nCc: group:;, group2: (foo) ;\r\n"
                       b"Subject: groups\r\n\r\nbody\r\n")
    ok(c.select("INBOX"))
    data = ok(c.fetch("2", "(ENVELOPE)"))[0].decode()
    assert ('((NIL NIL "group" NIL)(NIL NIL NIL NIL)(NIL NIL "group2" NIL)(NIL NIL NIL NIL))'
            in data), data
    assert '"foo"' not in data
    # An obsolete source route is the address's adl, not part of its mailbox.
    append(c, "INBOX", b"From: <@route:user@domain>\r\nSubject: route\r\n\r\nbody\r\n")
    ok(c.noop())
    data = ok(c.fetch("3", "(ENVELOPE)"))[0].decode()
    assert '((NIL "@route" "user" "domain"))' in data, data


def test_search_from_matches_the_parsed_address(imap):
    """SEARCH FROM/TO/CC/BCC compare with the addresses, comments and all stripped (imaptest
    search-addresses)."""
    c = client(imap)
    for header in [b"From: <user-from (comment)@ (comment) domain.org>\r\n",
                   b"From: user-from@domain.org (RealFrom)\r\n",
                   b"To: groupname: groupuser1@domain.org;\r\n"]:
        append(c, "INBOX", header + b"Subject: s\r\n\r\nbody\r\n")
    ok(c.select("INBOX"))
    assert ok(c.search(None, "FROM", "user-from@domain.org")) == [b"2 3"]
    assert ok(c.search(None, "FROM", "realfrom")) == [b"3"]
    assert ok(c.search(None, "TO", "groupname")) == [b"4"]
    # The raw field is still there for HEADER.
    assert ok(c.search(None, "HEADER", "FROM", "comment")) == [b"2"]


def test_lsub_shows_a_subscribed_childs_parent_as_noselect(imap):
    """§6.3.9, as imaptest's subscribe group runs it (under INBOX, its default mailbox)."""
    c1, c2 = client(imap), client(imap)
    # imaptest starts with UNSUBSCRIBEs: the folders there before are subscribed, not these.
    c1.unsubscribe("INBOX/test")
    for name in ["INBOX/test", "INBOX/test2/", "INBOX/test3/", "INBOX/test2/test",
                 "INBOX/test3/test3", "INBOX/test2"]:
        c1.create(name)
    for name in ["INBOX/test", "INBOX/test2/test", "INBOX/test3/test3"]:
        ok(c1.subscribe(name))
    lines = sorted(l.decode() for l in ok(c2.lsub('""', "INBOX/%")))
    assert lines == ['() "/" "INBOX/test"', '(\\Noselect) "/" "INBOX/test2"',
                     '(\\Noselect) "/" "INBOX/test3"'], lines
    lines = sorted(l.decode() for l in ok(c2.lsub('""', "*test")))
    assert lines == ['() "/" "INBOX/test"', '() "/" "INBOX/test2/test"'], lines
    ok(c1.unsubscribe("INBOX/test2/test"))
    lines = sorted(l.decode() for l in ok(c2.lsub('""', "INBOX/*")))
    assert lines == ['() "/" "INBOX/test"', '() "/" "INBOX/test3/test3"'], lines


def test_a_new_keyword_is_announced_before_a_fetch_carries_it(imap):
    """§7.2.6: FLAGS and PERMANENTFLAGS with the keyword come before the FETCH, in the session
    that set it and in another one that sees the change."""
    a, b = Raw(imap), Raw(imap)
    for r in (a, b):
        r.command("SELECT INBOX")
    out = a.command("STORE 1 +FLAGS ($Urgent)")
    flags = next(i for i, l in enumerate(out) if l.startswith(b"* FLAGS"))
    perm = next(i for i, l in enumerate(out) if b"[PERMANENTFLAGS" in l)
    fetch = next(i for i, l in enumerate(out) if b"FETCH" in l)
    assert flags < fetch and perm < fetch, out
    assert b"$Urgent" in out[flags] and b"$Urgent" in out[perm], out
    # Told once: the next STORE with it says nothing more.
    out = a.command("STORE 1 -FLAGS ($Urgent)")
    assert not any(l.startswith(b"* FLAGS") for l in out), out
    a.command("STORE 1 +FLAGS ($Urgent)")
    out = b.command("NOOP")
    flags = next(i for i, l in enumerate(out) if l.startswith(b"* FLAGS"))
    fetch = next(i for i, l in enumerate(out) if b"FETCH" in l)
    assert flags < fetch and b"$Urgent" in out[fetch], out


# -- folders ------------------------------------------------------------------------------------

def lsub_names(c, pattern="*"):
    return {l.decode().rsplit(" ", 1)[1].strip('"') for l in ok(c.lsub('""', pattern)) if l}


def test_delete_before_any_subscribe_keeps_the_other_subscriptions(imap):
    """Thunderbird shows subscribed folders only: one DELETE must not unsubscribe the rest."""
    c = client(imap)
    ok(c.create("Projects"))
    ok(c.rename("Projects", "Archive"))
    ok(c.delete("Archive"))
    names = lsub_names(c)
    assert {"INBOX", "Sent", "Drafts", "Trash", "Junk"} <= names, names
    ok(c.create("Later"))
    ok(c.subscribe("Later"))
    assert {"Sent", "Later"} <= lsub_names(c)


def test_a_name_with_a_dot_is_refused_and_inbox_children_leave_inbox_alone(imap):
    c = client(imap)
    typ, data = c.create("a.b")
    assert typ == "NO", data
    assert c.create("inbox.sub")[0] == "NO"
    lines = [l.decode() for l in ok(c.list('""', "*"))]
    assert not any('"a"' in l or '"a/b"' in l or "sub" in l for l in lines), lines
    ok(c.create("inbox/sub"))
    lines = [l.decode() for l in ok(c.list('""', "*"))]
    inbox = [l for l in lines if l.endswith(" INBOX")]
    assert inbox == ['(\\HasChildren) "/" INBOX'], lines
    assert '(\\HasNoChildren) "/" "INBOX/sub"' in lines, lines
    assert [l.decode() for l in ok(c.list('""', "%"))].count('(\\HasChildren) "/" INBOX') == 1
    ok(c.select("INBOX/sub"))
    ok(c.select("inbox/SUB".replace("SUB", "sub")))


def test_dovecot_maildir_names_are_decoded(imap):
    """Dovecot names Maildir++ folders in modified UTF-7; ours are written the same way."""
    box = imap.mail / "alice"
    for sub in ("cur", "new", "tmp"):
        (box / ".Entw&APw-rfe" / sub).mkdir(parents=True)
    c = client(imap)
    lines = [l.decode() for l in ok(c.list('""', "*"))]
    assert '(\\HasNoChildren) "/" "Entw&APw-rfe"' in lines, lines
    ok(c.select("Entw&APw-rfe"))
    ok(c.create("Gr&APw-n/Sp&AOQ-ter"))
    assert (box / ".Gr&APw-n.Sp&AOQ-ter" / "cur").is_dir()
    ok(c.create("R&-D"))
    assert (box / ".R&-D" / "cur").is_dir()
    assert any(l.endswith('"R&-D"') for l in (x.decode() for x in ok(c.list('""', "R*"))))


def test_an_older_utf8_folder_directory_is_still_found(imap):
    box = imap.mail / "alice"
    for sub in ("cur", "new", "tmp"):
        (box / ".Entwürfe" / sub).mkdir(parents=True)
    c = client(imap)
    assert any("Entw&APw-rfe" in l.decode() for l in ok(c.list('""', "*")))
    ok(c.select("Entw&APw-rfe"))
    assert c.create("Entw&APw-rfe")[0] == "NO"
    ok(c.delete("Entw&APw-rfe"))
    assert not (box / ".Entwürfe").exists()


def test_special_use_folders_are_made_at_login(daemons, mailhome):
    """A Maildir another program made (procmail: INBOX only) gets Sent, Drafts, Trash and Junk
    at login, with their SPECIAL-USE attributes; `[folders] special_use = false` keeps it bare."""
    users, mail = mailhome
    for sub in ("cur", "new", "tmp"):
        (mail / "alice" / sub).mkdir(parents=True)
        (mail / "bob" / sub).mkdir(parents=True)
    (mail / "alice" / "new" / "1700000000.1.host").write_bytes(message(1))
    d = daemons.start("imapd", config(users, mail))
    d.mail = mail
    c = client(d)
    lines = [l.decode() for l in ok(c.list('""', "*"))]
    for flag, name in [("\\Sent", "Sent"), ("\\Drafts", "Drafts"), ("\\Trash", "Trash"),
                       ("\\Junk", "Junk")]:
        assert f'(\\HasNoChildren {flag}) "/" "{name}"' in lines, lines
    assert ok(c.select("INBOX")) == [b"1"]
    bare = daemons.start("imapd", config(users, mail, "[folders]\nspecial_use = false\n"))
    host, port = bare.addr("imap")
    c = imaplib.IMAP4(host, port, timeout=30)
    ok(c.login("bob", PASSWORD))
    assert [l.decode() for l in ok(c.list('""', "*"))] == ['(\\HasNoChildren) "/" INBOX']


# -- a Maildir Dovecot kept ---------------------------------------------------------------------

DOVECOT_CONF = """\
mail_location = maildir:{home}
ssl = no
base_dir = {base}
log_path = {base}/dovecot.log
"""


@pytest.mark.skipif(shutil.which("doveadm") is None, reason="Dovecot (dovecot-imapd) not installed")
def test_a_dovecot_maildir_keeps_its_uids_uidvalidity_and_keywords(daemons, mailhome):
    """A Maildir Dovecot made (doveadm, as a user Dovecot lets at mail: not root), copied in
    as a migration would: its folder names, UIDs, UIDVALIDITY and keywords stay."""
    users, mail = mailhome
    work = Path(tempfile.mkdtemp(prefix="inetkit-dovecot-"))
    try:
        as_user = []
        if os.geteuid() == 0:
            as_user = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
            os.chown(work, 65534, 65534)
        home = work / "alice"
        conf = work / "dovecot.conf"
        conf.write_text(DOVECOT_CONF.format(home=home, base=work))

        def doveadm(*args, input=None):
            return subprocess.run(
                [*as_user, "env", "USER=alice", f"HOME={home}", "doveadm", "-c", str(conf),
                 *args], input=input, check=True, capture_output=True, timeout=60).stdout.decode()

        doveadm("mailbox", "create", "Entwürfe")
        for n in range(1, 4):
            doveadm("save", "-m", "Entwürfe", input=message(n))
        # UIDs no longer 1..n, and a keyword on one message.
        doveadm("expunge", "mailbox", "Entwürfe", "uid", "1")
        doveadm("flags", "add", "$Work", "mailbox", "Entwürfe", "uid", "3")
        status = doveadm("-f", "flow", "mailbox", "status", "uidvalidity", "Entwürfe")
        validity = re.search(r"uidvalidity=(\d+)", status).group(1)
        folder = home / ".Entw&APw-rfe"
        assert (folder / "dovecot-uidlist").exists() and (folder / "dovecot-keywords").exists()
        shutil.copytree(home, mail / "alice")
    finally:
        shutil.rmtree(work, ignore_errors=True)

    d = daemons.start("imapd", config(users, mail))
    c = client(d)
    assert any("Entw&APw-rfe" in l.decode() for l in ok(c.list('""', "*")))
    assert ok(c.select("Entw&APw-rfe")) == [b"2"]
    assert c.untagged_responses["UIDVALIDITY"] == [validity.encode()]
    data = b" ".join(x for x in ok(c.fetch("1:*", "(UID FLAGS)")) if x)
    assert re.search(rb"UID 2 FLAGS \(\\Recent\)", data), data
    assert re.search(rb"UID 3 FLAGS \([^)]*\$Work", data), data
    assert b"$Work" in c.untagged_responses["FLAGS"][-1]
    # A keyword added now keeps Dovecot's letter for $Work.
    ok(c.store("1", "+FLAGS", "(Later)"))
    data = b" ".join(x for x in ok(c.fetch("1:*", "(UID FLAGS)")) if x)
    assert re.search(rb"UID 2 FLAGS \([^)]*Later", data), data
    assert re.search(rb"UID 3 FLAGS \([^)]*\$Work", data), data
    assert not re.search(rb"UID 3 FLAGS \([^)]*Later", data), data
