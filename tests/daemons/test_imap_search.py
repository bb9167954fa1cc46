"""inetkit-imapd's search and ordering extensions: ESEARCH (RFC 4731), SEARCHRES (RFC 5182),
WITHIN (RFC 5032), SORT and SORT=DISPLAY (RFC 5256, RFC 5957), ESORT (RFC 5267), THREAD
(ORDEREDSUBJECT, REFERENCES, REFS), CONTEXT=SEARCH and CONTEXT=SORT (RFC 5267 §4), and BAD
for what is not implemented, in every state."""

import imaplib
import re
import socket
import time

import pytest

from support.homes import PASSWORD, daemon_config

CAPABILITIES = ["ESEARCH", "SEARCHRES", "WITHIN", "SORT", "SORT=DISPLAY", "ESORT",
                "THREAD=ORDEREDSUBJECT", "THREAD=REFERENCES", "THREAD=REFS", "CONTEXT=SEARCH",
                "CONTEXT=SORT"]


@pytest.fixture
def imap(daemons, mailhome):
    users, mail = mailhome
    config = daemon_config(("imap",), users, auth="failure_delay = 0\n",
                           rest=f'[mail]\nroot = "{mail}"\n')
    d = daemons.start("imapd", config)
    d.mail = mail
    return d


class Raw:
    """A raw session: each command's untagged lines and its tagged line."""

    def __init__(self, d, login=True):
        host, port = d.addr("imap")
        self.s = socket.create_connection((host, port), timeout=30)
        self.f = self.s.makefile("rb")
        self.greeting = self.f.readline()
        assert self.greeting.startswith(b"* OK"), self.greeting
        self.n = 0
        if login:
            self.ok(f'LOGIN alice "{PASSWORD}"')

    def command(self, text: str, literal: bytes | None = None):
        self.n += 1
        tag = f"t{self.n}"
        line = f"{tag} {text}".encode()
        if literal is not None:
            line += b" {%d+}\r\n" % len(literal) + literal
        self.s.sendall(line + b"\r\n")
        untagged = []
        while True:
            got = self.f.readline()
            assert got, untagged
            text_line = got.decode().rstrip("\r\n")
            if text_line.startswith(tag + " "):
                return untagged, text_line.split(" ", 1)[1]
            untagged.append(text_line)

    def ok(self, text: str, literal: bytes | None = None) -> list[str]:
        untagged, status = self.command(text, literal)
        assert status.startswith("OK"), (text, status, untagged)
        return untagged

    def bad(self, text: str) -> str:
        untagged, status = self.command(text)
        assert status.startswith("BAD"), (text, status, untagged)
        return status

    def one(self, text: str, prefix: str) -> str:
        """The one untagged line starting with `prefix` that `text` answers."""
        lines = [l for l in self.ok(text) if l.startswith(prefix)]
        assert len(lines) == 1, (text, lines)
        return lines[0]


def msg(subject="s", date="Mon, 2 Mar 2026 10:00:00 +0000", sender="a@example.org",
        message_id=None, references=None, to="alice@localhost") -> bytes:
    head = f"From: {sender}\r\nTo: {to}\r\nSubject: {subject}\r\nDate: {date}\r\n"
    if message_id:
        head += f"Message-ID: <{message_id}>\r\n"
    if references:
        head += f"References: {' '.join(f'<{r}>' for r in references)}\r\n"
    return (head + "\r\nbody\r\n").encode()


def append(r: Raw, message: bytes, folder="INBOX", when=None):
    date = f' "{when}"' if when else ""
    r.ok(f"APPEND {folder}{date}", message)


def uids(r: Raw) -> list[int]:
    line = r.one("UID SEARCH ALL", "* SEARCH")
    return [int(n) for n in line.split()[2:]]


def test_the_extensions_are_advertised(imap):
    r = Raw(imap, login=False)
    for cap in CAPABILITIES:
        assert f" {cap} " in r.greeting.decode(), r.greeting
    r.ok(f'LOGIN alice "{PASSWORD}"')
    caps = r.one("CAPABILITY", "* CAPABILITY").split()
    assert set(CAPABILITIES) <= set(caps), caps


# -- ESEARCH ------------------------------------------------------------------------------------

def test_esearch_returns_min_max_count_and_all(imap):
    r = Raw(imap)
    for n in range(6):
        append(r, msg(f"m{n}"))
    r.ok("SELECT INBOX")
    r.ok("STORE 2,4:5 +FLAGS (\\Seen)")
    t = f"t{r.n + 1}"
    assert (r.one("SEARCH RETURN (MIN MAX COUNT ALL) SEEN", "* ESEARCH")
            == f'* ESEARCH (TAG "{t}") MIN 2 MAX 5 COUNT 3 ALL 2,4:5')
    # RETURN () is ALL.
    assert r.one("SEARCH RETURN () ALL", "* ESEARCH").endswith(") ALL 1:6")
    u = uids(r)
    line = r.one("UID SEARCH RETURN (min count) SEEN", "* ESEARCH")
    assert line.endswith(f") UID MIN {u[1]} COUNT 3"), line
    # Nothing found: no MIN, MAX or ALL; COUNT 0.
    t = f"t{r.n + 1}"
    assert r.one("SEARCH RETURN (MIN MAX ALL COUNT) 100", "* ESEARCH") == \
        f'* ESEARCH (TAG "{t}") COUNT 0'
    # Without RETURN: the plain SEARCH response.
    assert r.one("SEARCH SEEN", "* SEARCH") == "* SEARCH 2 4 5"
    # An option we do not know is BAD.
    r.bad("SEARCH RETURN (FIRST) ALL")
    r.bad("SEARCH RETURN (MIN ALL")


# -- SEARCHRES ----------------------------------------------------------------------------------

def test_saved_results_feed_later_commands(imap):
    r = Raw(imap)
    r.ok("CREATE Keep")
    for n in range(5):
        append(r, msg(f"m{n}"))
    r.ok("SELECT INBOX")
    u = uids(r)
    # `$` before any SAVE is empty: FETCH on it succeeds with nothing.
    assert r.ok("FETCH $ (FLAGS)") == []
    assert r.one("SEARCH $", "* SEARCH") == "* SEARCH"
    # SAVE alone sends no ESEARCH.
    assert r.ok("SEARCH RETURN (SAVE) 2:3") == []
    fetched = [l for l in r.ok("FETCH $ (UID)") if "FETCH" in l]
    assert fetched == [f"* 2 FETCH (UID {u[1]})", f"* 3 FETCH (UID {u[2]})"], fetched
    fetched = [l for l in r.ok("UID FETCH $ (FLAGS)") if "FETCH" in l]
    assert len(fetched) == 2, fetched
    r.ok("STORE $ +FLAGS (\\Flagged)")
    assert r.one("SEARCH FLAGGED", "* SEARCH") == "* SEARCH 2 3"
    # `$` as a search key, beside others and under UID.
    assert r.one("SEARCH OR $ 5", "* SEARCH") == "* SEARCH 2 3 5"
    assert r.one("UID SEARCH UID $", "* SEARCH") == f"* SEARCH {u[1]} {u[2]}"
    # A `$` inside a string is just text.
    assert r.one("SEARCH SUBJECT $", "* SEARCH") == "* SEARCH"
    r.ok("COPY $ Keep")
    assert r.one("STATUS Keep (MESSAGES)", "* STATUS").endswith("(MESSAGES 2)")
    # SAVE with MIN only keeps the first; after an expunge, `$` follows the sequence numbers.
    r.ok("SEARCH RETURN (SAVE MIN) 3:5")
    r.ok("STORE 1 +FLAGS (\\Deleted)")
    r.ok("EXPUNGE")
    fetched = [l for l in r.ok("FETCH $ (UID)") if "FETCH" in l]
    assert fetched == [f"* 2 FETCH (UID {u[2]})"], fetched
    r.ok("UID MOVE $ Keep")
    assert r.one("STATUS Keep (MESSAGES)", "* STATUS").endswith("(MESSAGES 3)")
    # SAVE with the ESEARCH options answers and saves; SORT can save too.
    r.ok("SEARCH RETURN (SAVE ALL) ALL")
    assert len([l for l in r.ok("FETCH $ (UID)") if "FETCH" in l]) == 3
    # A SAVE that fails, even as BAD, leaves `$` empty.
    r.bad("SEARCH RETURN (SAVE) NOSUCHKEY")
    assert r.ok("FETCH $ (UID)") == []
    # SELECT forgets `$`.
    r.ok("SEARCH RETURN (SAVE) ALL")
    r.ok("SELECT INBOX")
    assert r.ok("FETCH $ (UID)") == []
    assert r.ok("UID STORE $ +FLAGS (\\Seen)") == []


# -- WITHIN -------------------------------------------------------------------------------------

def test_older_and_younger_compare_the_internal_date(imap):
    r = Raw(imap)
    append(r, msg("old"), when="01-Jan-2020 10:00:00 +0000")
    append(r, msg("new"))
    r.ok("SELECT INBOX")
    assert r.one("SEARCH YOUNGER 3600", "* SEARCH") == "* SEARCH 2"
    assert r.one("SEARCH OLDER 3600", "* SEARCH") == "* SEARCH 1"
    assert r.one("SEARCH OLDER 600 YOUNGER 4000000000", "* SEARCH") == "* SEARCH 1"
    r.bad("SEARCH OLDER 0")
    r.bad("SEARCH YOUNGER x")


# -- SORT, ESORT --------------------------------------------------------------------------------

def test_sort_by_base_subject_date_and_display_name(imap):
    r = Raw(imap)
    messages = [
        msg("Re: beta", "Mon, 2 Mar 2026 12:00:00 +0000", '"Zoe" <a@example.org>'),
        msg("alpha", "Mon, 2 Mar 2026 10:00:00 +0200", "c@example.org"),
        msg("[list] Fwd: ALPHA (fwd)", "Mon, 2 Mar 2026 09:00:00 +0000", '"Bob" <z@x.org>'),
        msg("beta", "bad date", "b@example.org"),
    ]
    for m in messages:
        append(r, m, when="02-Mar-2026 11:00:00 +0000")
    r.ok("SELECT INBOX")
    # Base subjects alpha, alpha, beta, beta: ties in sequence order.
    assert r.one("SORT (SUBJECT) UTF-8 ALL", "* SORT") == "* SORT 2 3 1 4"
    assert r.one("SORT (REVERSE SUBJECT) UTF-8 ALL", "* SORT") == "* SORT 1 4 2 3"
    # Dates in UTC (08:00, 09:00, 12:00); no valid Date: the internal date (11:00).
    assert r.one("SORT (DATE) UTF-8 ALL", "* SORT") == "* SORT 2 3 4 1"
    # FROM is the mailbox (a, b, c, z); DISPLAYFROM the name, else the address.
    assert r.one("SORT (FROM) UTF-8 ALL", "* SORT") == "* SORT 1 4 2 3"
    assert r.one("SORT (DISPLAYFROM) UTF-8 ALL", "* SORT") == "* SORT 4 3 2 1"
    # Search keys narrow it; UID SORT answers UIDs.
    assert r.one("SORT (SUBJECT) UTF-8 NOT 3", "* SORT") == "* SORT 2 1 4"
    u = uids(r)
    assert r.one("UID SORT (DATE) US-ASCII ALL", "* SORT") == \
        f"* SORT {u[1]} {u[2]} {u[3]} {u[0]}"
    # ESORT: ALL in sort order, MIN and MAX the first and last of it.
    t = f"t{r.n + 1}"
    assert r.one("SORT RETURN (MIN MAX COUNT ALL) (DATE) UTF-8 ALL", "* ESEARCH") == \
        f'* ESEARCH (TAG "{t}") MIN 2 MAX 1 COUNT 4 ALL 2:4,1'
    _, status = r.command("SORT (SUBJECT) KOI8-R ALL")
    assert status.startswith("NO [BADCHARSET"), status
    r.bad("SORT (NOSUCHKEY) UTF-8 ALL")


# -- THREAD -------------------------------------------------------------------------------------

def test_thread_algorithms(imap):
    r = Raw(imap)
    day = "Mon, 2 Mar 2026 {}:00:00 +0000"
    messages = [
        msg("party", day.format(10), message_id="1@x"),
        msg("Re: party", day.format(11), message_id="2@x", references=["1@x"]),
        msg("other", day.format(12), message_id="3@x"),
        msg("Re: party", day.format(13), message_id="4@x", references=["1@x", "2@x"]),
        msg("Re: party", day.format(14), message_id="5@x", references=["1@x"]),
        msg("party", day.format(9), message_id="6@x", references=["gone@x"]),
    ]
    for m in messages:
        append(r, m)
    r.ok("SELECT INBOX")
    # 6 is first by date; its parent is missing, and the subject joins it to 1's thread.
    assert r.one("THREAD REFERENCES UTF-8 ALL", "* THREAD") == \
        "* THREAD ((6)(1 (2 4)(5)))(3)"
    assert r.one("THREAD ORDEREDSUBJECT UTF-8 ALL", "* THREAD") == \
        "* THREAD (6 (1)(2)(4)(5))(3)"
    # REFS: no subject merging; threads by their newest message.
    assert r.one("THREAD REFS UTF-8 ALL", "* THREAD") == "* THREAD (6)(3)(1 (2 4)(5))"
    assert r.one("THREAD REFERENCES UTF-8 3", "* THREAD") == "* THREAD (3)"
    assert r.one("THREAD REFERENCES UTF-8 100", "* THREAD") == "* THREAD"
    u = uids(r)
    assert r.one("UID THREAD REFERENCES UTF-8 1:2", "* THREAD") == f"* THREAD ({u[0]} {u[1]})"
    r.bad("THREAD NOSUCH UTF-8 ALL")


# -- CONTEXT=SEARCH ----------------------------------------------------------------------------

def noop_until(r: Raw, word: str) -> list[str]:
    """NOOPs until one tells of another session's change (the folder watch may lag)."""
    for _ in range(50):
        out = r.ok("NOOP")
        if any(word in l for l in out):
            return out
        time.sleep(0.1)
    raise AssertionError(f"no {word} seen")


def test_context_search_partial_update_and_cancel(imap):
    r, other = Raw(imap), Raw(imap)
    for n in range(5):
        append(r, msg(f"m{n}"))
    r.ok("SELECT INBOX")
    other.ok("SELECT INBOX")
    t = f"t{r.n + 1}"
    assert r.one("SEARCH RETURN (PARTIAL 4:2) ALL", "* ESEARCH") == \
        f'* ESEARCH (TAG "{t}") PARTIAL (2:4 2:4)'
    assert r.one("SEARCH RETURN (PARTIAL 5:9) 1:3", "* ESEARCH").endswith("PARTIAL (5:9 NIL)")
    for bad in ["PARTIAL 1", "PARTIAL 1:*", "PARTIAL 0:2", "ALL PARTIAL 1:2"]:
        r.bad(f"SEARCH RETURN ({bad}) ALL")
    # UPDATE: the result now (ALL), then what joins and leaves it, whoever changed it.
    tag = f"t{r.n + 1}"
    assert r.one("SEARCH RETURN (UPDATE) SEEN", "* ESEARCH") == f'* ESEARCH (TAG "{tag}")'
    out = r.ok("STORE 1,2,4 +FLAGS (\\Seen)")
    assert f'* ESEARCH (TAG "{tag}") ADDTO (0 1:2,4)' in out, out
    # (The other session first sees the change: a STORE on a stale view is another matter.)
    noop_until(other, "FETCH")
    other.ok("STORE 2 -FLAGS (\\Seen)")
    out = noop_until(r, "FETCH")
    assert f'* ESEARCH (TAG "{tag}") REMOVEFROM (0 2)' in out, out
    # An expunged message leaves the result before its EXPUNGE, under its old number.
    r.ok("STORE 4 +FLAGS (\\Deleted)")
    out = r.ok("EXPUNGE")
    assert out.index(f'* ESEARCH (TAG "{tag}") REMOVEFROM (0 4)') < out.index("* 4 EXPUNGE"), out
    # A message arriving with \Seen joins it.
    other.ok("APPEND INBOX (\\Seen)", msg("new"))
    out = noop_until(r, "EXISTS")
    assert f'* ESEARCH (TAG "{tag}") ADDTO (0 5)' in out, out
    # CANCELUPDATE ends it; SELECT ends them all.
    r.ok(f'CANCELUPDATE "{tag}"')
    assert not any("ESEARCH" in l for l in r.ok("STORE 3 +FLAGS (\\Seen)"))
    u = f"t{r.n + 1}"
    r.ok("UID SEARCH RETURN (UPDATE COUNT) UNSEEN")
    out = r.ok("STORE 3 -FLAGS (\\Seen)")
    uid3 = uids(r)[2]
    assert f'* ESEARCH (TAG "{u}") UID ADDTO (0 {uid3})' in out, out
    r.ok("SELECT INBOX")
    assert not any("ESEARCH" in l for l in r.ok("STORE 3 +FLAGS (\\Seen)"))
    # At most four are kept; the fifth is told NOUPDATE.
    for _ in range(4):
        r.ok("SEARCH RETURN (UPDATE) SEEN")
    out = r.ok("SEARCH RETURN (UPDATE) SEEN")
    assert any(l.startswith(f'* NO [NOUPDATE "t{r.n}"]') for l in out), out


def test_a_kept_search_by_size_measures_what_another_program_delivers(imap):
    """A message another program files (no sizes in its name, bare LFs) joins a kept LARGER
    search by its size as IMAP counts it (CRLF), not by its size on disk."""
    r = Raw(imap)
    append(r, msg("small"))
    r.ok("SELECT INBOX")
    tag = f"t{r.n + 1}"
    assert r.one("UID SEARCH RETURN (UPDATE) LARGER 1100", "* ESEARCH") == \
        f'* ESEARCH (TAG "{tag}") UID'
    body = b"Subject: lf only\n\n" + b"x\n" * 540  # 1,098 bytes on disk, 1,640 as CRLF
    assert len(body) < 1100 < len(body.replace(b"\n", b"\r\n"))
    (imap.mail / "alice" / "cur" / "1700000000.outside.host:2,").write_bytes(body)
    out = noop_until(r, "EXISTS")
    assert f'* ESEARCH (TAG "{tag}") UID ADDTO (0 2)' in out, out


def test_context_sort_partial_and_update(imap):
    r, other = Raw(imap), Raw(imap)
    for n in (1, 3, 5, 7):
        append(r, msg(f"m{n}"))
    r.ok("SELECT INBOX")
    other.ok("SELECT INBOX")
    u = uids(r)
    # PARTIAL takes positions in the sorted result (RFC 5267 §4.4).
    t = f"t{r.n + 1}"
    assert r.one("SORT RETURN (PARTIAL 3:2) (REVERSE SUBJECT) UTF-8 ALL", "* ESEARCH") == \
        f'* ESEARCH (TAG "{t}") PARTIAL (2:3 3,2)'
    assert r.one("UID SORT RETURN (PARTIAL 4:9) (SUBJECT) UTF-8 ALL", "* ESEARCH").endswith(
        f"UID PARTIAL (4:9 {u[3]})")
    assert r.one("SORT RETURN (PARTIAL 5:9) (SUBJECT) UTF-8 ALL", "* ESEARCH").endswith(
        "PARTIAL (5:9 NIL)")
    for bad in ["PARTIAL 1", "PARTIAL 1:*", "PARTIAL *:1", "ALL PARTIAL 1:2"]:
        r.bad(f"SORT RETURN ({bad}) (SUBJECT) UTF-8 ALL")
    # UPDATE: each message joins at its position in the sorted result, and leaves from the
    # position it had (the last first).
    tag = f"t{r.n + 1}"
    assert r.one("UID SORT RETURN (UPDATE) (SUBJECT) UTF-8 ALL", "* ESEARCH") == \
        f'* ESEARCH (TAG "{tag}") UID ALL {u[0]}:{u[3]}'
    other.ok("APPEND INBOX", msg("m4"))
    other.ok("APPEND INBOX", msg("m0"))
    out = noop_until(r, "EXISTS")
    new = uids(r)[4:]
    assert f'* ESEARCH (TAG "{tag}") UID ADDTO (1 {new[1]} 4 {new[0]})' in out, out
    # Now m0 m1 m3 m4 m5 m7: m3 and m7 go, m7 (6th) first, then m3 (3rd).
    other.ok(f"UID STORE {u[1]},{u[3]} +FLAGS (\\Deleted)")
    other.ok("EXPUNGE")
    out = noop_until(r, "EXPUNGE")
    line = f'* ESEARCH (TAG "{tag}") UID REMOVEFROM (6 {u[3]} 3 {u[1]})'
    assert line in out and out.index(line) < out.index("* 4 EXPUNGE"), out
    # By sequence number: a message that is expunged leaves under the number it had.
    seq = f"t{r.n + 1}"
    assert r.one("SORT RETURN (UPDATE COUNT) (REVERSE SUBJECT) UTF-8 ALL", "* ESEARCH") == \
        f'* ESEARCH (TAG "{seq}") COUNT 4'
    r.ok("STORE 1 +FLAGS (\\Deleted)")
    out = r.ok("EXPUNGE")
    assert f'* ESEARCH (TAG "{seq}") REMOVEFROM (3 1)' in out, out
    r.ok(f'CANCELUPDATE "{seq}" "{tag}"')
    other.ok("APPEND INBOX", msg("m9"))
    assert not any("ESEARCH" in l for l in noop_until(r, "EXISTS"))


# -- unknown commands ---------------------------------------------------------------------------

def test_what_is_not_implemented_is_bad_in_every_state(imap):
    before = Raw(imap, login=False)
    authenticated = Raw(imap)
    selected = Raw(imap)
    selected.ok("SELECT INBOX")
    for r in (before, authenticated, selected):
        for command in ["FROB", "XSORT (DATE) UTF-8 ALL", "SEARCH RETURN (FROB) ALL",
                        "THREAD NOSUCH UTF-8 ALL"]:
            r.bad(command)
    before.bad("SORT (DATE) UTF-8 ALL")
    before.bad('SETQUOTA "" (STORAGE 512)')
    # A command of the selected state without a mailbox says why.
    assert "No mailbox selected" in authenticated.bad("SORT (DATE) UTF-8 ALL")
    assert "No mailbox selected" in authenticated.bad("THREAD REFS UTF-8 ALL")


def test_digits_in_braces_before_login_are_no_literal_size(imap):
    """Found by the imap_search_args fuzz target: the RETURN/$ pre-parser took the digits
    between `{` and `}` as a literal's size even with other bytes among them (so the command
    reader had not taken it as a literal); this size made its position wrap around to the
    brace, and it tokenized the line for ever, growing without bound, from one line sent
    before login."""
    host, port = imap.addr("imap")
    with socket.create_connection((host, port), timeout=30) as s:
        f = s.makefile("rb")
        f.readline()
        s.sendall(b"a SEARCH {1844674407370955159x1}\r\n")
        assert f.readline().startswith(b"a BAD "), "answered, not stuck"
        s.sendall(b"b CAPABILITY\r\n")
        assert f.readline().startswith(b"* CAPABILITY ")
