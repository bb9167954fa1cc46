"""The `inetkit` admin command refuses what it cannot mean (issue #15, item 2): mail for a user
who does not exist, an empty message, a flag Maildir does not have; `user del --purge` takes the
mailbox along and says so; `inetkit --help` and each daemon's `--help` say what there is.

Each test runs the built binary on its own users file and mail root under tmp_path.
"""

import re
import subprocess
from pathlib import Path

import pytest

from support.homes import PASSWORD, user_line, write_users
from support.inetkit import binary

DAEMONS = ("echo", "dns-forwarder", "smtp-submit", "pop3d", "imapd", "ftpd", "rpcd")
MESSAGE = b"From: bob@localhost\nSubject: hello\n\nhi\n"


class Home:
    """A users file with alice and bob, and a mail root (not created yet)."""

    def __init__(self, tmp_path: Path):
        self.users = write_users(tmp_path / "users", user_line("alice"), user_line("bob"))
        self.mail = tmp_path / "mail"

    def run(self, *args, stdin=b"", check=False):
        """`inetkit ARGS`, with --users (and --mail-root for the mail commands)."""
        paths = ["--users", str(self.users)]
        if args[0] in ("deliver", "mail") or "--purge" in args:
            paths += ["--mail-root", str(self.mail)]
        proc = subprocess.run([str(binary("inetkit")), *args, *paths], input=stdin,
                              capture_output=True, timeout=60)
        if check and proc.returncode != 0:
            raise AssertionError(f"inetkit {' '.join(args)}: rc={proc.returncode}\n"
                                 f"{proc.stderr.decode()}")
        return proc

    def deliver(self, user="alice", message=MESSAGE) -> Path:
        return Path(self.run("deliver", user, stdin=message, check=True).stdout.decode().strip())

    def listing(self, user="alice"):
        """[(uid, flags)] of the user's INBOX."""
        lines = self.run("mail", "list", user, check=True).stdout.decode().splitlines()[1:]
        return [(int(line.split()[0]), line.split()[3]) for line in lines]


@pytest.fixture
def home(tmp_path):
    return Home(tmp_path)


def refused(proc, *words):
    """The command failed (exit status 1), saying all of `words` on stderr, nothing on stdout."""
    err = proc.stderr.decode()
    assert proc.returncode == 1, (proc.returncode, err)
    assert proc.stdout == b"", proc.stdout
    for word in words:
        assert word in err, err
    return err


def tree(root: Path):
    return sorted(str(p.relative_to(root)) for p in root.rglob("*")) if root.exists() else []


# -- users who do not exist ---------------------------------------------------------------------

@pytest.mark.parametrize("args", [
    ("deliver", "nosuchuser"),
    ("mail", "list", "nosuchuser"),
    ("mail", "folders", "nosuchuser"),
    ("mail", "flag", "nosuchuser", "1", "+S"),
    ("mail", "delete", "nosuchuser", "1"),
])
def test_no_mailbox_for_a_user_who_does_not_exist(home, args):
    home.deliver("alice")
    before = tree(home.mail)
    err = refused(home.run(*args, stdin=MESSAGE), "no user nosuchuser in", str(home.users),
                  "inetkit user add nosuchuser")
    assert "nothing delivered" in err if args[0] == "deliver" else "no mailbox made" in err
    assert tree(home.mail) == before, "nothing created"


def test_no_mail_root_is_made_for_a_stranger(home):
    refused(home.run("deliver", "nosuchuser", stdin=MESSAGE), "no user nosuchuser")
    refused(home.run("mail", "list", "nosuchuser"), "no user nosuchuser")
    assert not home.mail.exists()


def test_names_no_users_file_could_hold_are_refused_as_such(home):
    for name in ("../etc", "Zed", ".hidden"):
        refused(home.run("deliver", name, stdin=MESSAGE), "invalid user name")
        refused(home.run("mail", "list", name), "invalid user name")
    assert not home.mail.exists()


def test_a_user_is_found_as_a_login_finds_them(home):
    """Any case, and user@localhost: deliver and mail take the name as a login does and use
    the users file's spelling for the mailbox."""
    for given in ("Alice", "ALICE@localhost"):
        path = home.deliver(given)
        assert path.is_relative_to(home.mail / "alice"), path
    assert home.listing("Alice") == [(1, "-"), (2, "-")]
    assert sorted(p.name for p in home.mail.iterdir()) == ["alice"]


def test_a_missing_users_file_is_named(home, tmp_path):
    proc = subprocess.run([str(binary("inetkit")), "deliver", "alice", "--users",
                           str(tmp_path / "nope"), "--mail-root", str(home.mail)],
                          input=MESSAGE, capture_output=True, timeout=60)
    refused(proc, f"reading the users file {tmp_path / 'nope'}", "No such file")
    assert not home.mail.exists()


def test_a_removed_users_leftover_mailbox_can_still_be_read_but_gets_no_mail(home):
    home.deliver("bob")
    home.run("user", "del", "bob", check=True)
    assert home.listing("bob") == [(1, "-")]
    refused(home.run("deliver", "bob", stdin=MESSAGE), "no user bob", "nothing delivered")
    assert home.listing("bob") == [(1, "-")]


# -- empty messages -----------------------------------------------------------------------------

@pytest.mark.parametrize("message, why", [
    (b"", "the message is empty"),
    (b"\n", "only white space"),
    (b"\r\n\r\n \t\r\n", "only white space"),
])
def test_an_empty_message_is_not_delivered(home, tmp_path, message, why):
    home.deliver("alice")
    before = tree(home.mail)
    refused(home.run("deliver", "alice", stdin=message), why, "nothing delivered")
    empty = tmp_path / "empty.eml"
    empty.write_bytes(message)
    refused(home.run("deliver", "alice", str(empty)), why)
    assert tree(home.mail) == before
    assert home.listing() == [(1, "-")]


def test_a_message_is_stored_whole_after_the_emptiness_check(home):
    message = b"\n\nSubject: leading blank lines\n\n" + b"x" * 200_000 + b"\n"
    assert home.deliver("alice", message).read_bytes() == message


# -- flags --------------------------------------------------------------------------------------

@pytest.mark.parametrize("flags", ["+Z", "Z", "=SZ", "+S1", "+\\Seen", "-S!", "+\u00e9"])
def test_a_flag_maildir_does_not_have_is_refused(home, flags):
    path = home.deliver("alice")
    home.run("mail", "flag", "alice", "1", "+S", check=True)
    before = tree(home.mail)
    refused(home.run("mail", "flag", "alice", "1", flags), "is not a Maildir flag",
            "D (draft)", "T (trashed)")
    assert tree(home.mail) == before
    assert (path.parent.parent / "cur" / f"{path.name}:2,S").exists()


def test_maildir_flags_and_keyword_letters_are_set(home):
    home.deliver("alice")
    out = home.run("mail", "flag", "alice", "1", "=DFPRST", check=True)
    assert out.stdout.decode().split() == ["1", "DFPRST"]
    # A keyword letter names a keyword only through the folder's keyword file (imapd's).
    out = home.run("mail", "flag", "alice", "1", "+b", check=True)
    assert out.stdout.decode().split() == ["1", "DFPRSTb"]
    assert "keyword letter b names no keyword" in out.stderr.decode()
    (home.mail / "alice" / "inetkit-keywords").write_text("0 $Forwarded\n1 Work\n")
    out = home.run("mail", "flag", "alice", "1", "+a", check=True)
    assert out.stdout.decode().split() == ["1", "DFPRSTab"]
    assert "keyword" not in out.stderr.decode()
    assert home.listing() == [(1, "DFPRSTab")]


def test_a_stray_letter_can_be_removed(home):
    """Another program (or an older inetkit) may have written a letter that is no flag: `-`
    takes it off, and the letters around it stay."""
    path = home.deliver("alice")
    stray = path.parent.parent / "cur" / f"{path.name}:2,SZ"
    path.rename(stray)
    assert home.listing() == [(1, "SZ")]
    out = home.run("mail", "flag", "alice", "1", "-Z", check=True)
    assert out.stdout.decode().split() == ["1", "S"]
    assert home.listing() == [(1, "S")]


# -- user del --purge ---------------------------------------------------------------------------

def test_user_del_purge_removes_the_mailbox_and_says_so(home):
    for _ in range(3):
        home.deliver("alice")
    home.deliver("bob")
    home.run("mail", "delete", "alice", "3", check=True)
    out = home.run("user", "del", "alice", "--purge", check=True).stdout.decode()
    assert out.splitlines() == [
        "removed user alice",
        f"removed mailbox {home.mail / 'alice'} (2 messages in 5 folders)",
    ]
    assert not (home.mail / "alice").exists()
    assert home.listing("bob") == [(1, "-")], "other mailboxes untouched"
    names = [line.split(":")[0] for line in home.users.read_text().splitlines()]
    assert names == ["bob"]
    assert home.run("user", "check", "alice", stdin=PASSWORD.encode()).returncode == 1


def test_user_del_without_purge_keeps_the_mailbox(home):
    home.deliver("alice")
    out = home.run("user", "del", "alice", check=True).stdout.decode()
    assert out == "removed user alice\n"
    assert (home.mail / "alice" / "new").is_dir()


def test_user_del_purge_of_a_user_without_mail(home):
    out = home.run("user", "del", "bob", "--purge", check=True).stdout.decode()
    assert out.splitlines() == ["removed user bob", f"no mailbox at {home.mail / 'bob'}"]


def test_user_del_purge_removes_nothing_when_it_cannot_remove_all(home, tmp_path):
    home.deliver("bob")
    # No such user: the mailbox of that name stays.
    home.run("user", "del", "bob", check=True)
    refused(home.run("user", "del", "bob", "--purge"), "no user bob")
    assert (home.mail / "bob" / "new").is_dir()
    # Something other than a directory where the mailbox would be: refused before the user is
    # removed, and a symlink is never followed.
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    (elsewhere / "keep").write_text("x")
    home.mail.mkdir(exist_ok=True)
    (home.mail / "alice").symlink_to(elsewhere)
    refused(home.run("user", "del", "alice", "--purge"), "is not a directory", "nothing removed")
    assert (elsewhere / "keep").exists()
    assert home.users.read_text().startswith("alice:")
    # A name a users file cannot hold is never made into a path.
    refused(home.run("user", "del", "../mail", "--purge"), "invalid user name")
    assert home.mail.is_dir()


def test_purge_and_mail_root_only_go_with_del(home):
    refused(home.run("user", "list", "--purge"), "only go with `del`")
    refused(home.run("user", "del", "alice", "--mail-root", str(home.mail)),
            "--mail-root goes with `del --purge`")
    assert home.users.read_text().startswith("alice:")


# -- help ---------------------------------------------------------------------------------------

def inetkit_help(*command) -> str:
    proc = subprocess.run([str(binary("inetkit")), *command, "--help"], capture_output=True,
                          timeout=60)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode()


def test_inetkit_help_lists_every_command_and_option():
    top = inetkit_help()
    commands = ["user add", "user passwd", "user del", "user list", "user check",
                "deliver", "mail list", "mail flag", "mail delete", "mail folders",
                "queue list", "queue flush", "queue delete"]
    for command in commands:
        assert re.search(rf"^  {command} ", top, re.M), command
    # Every option a command's own help names is in the summary too.
    for command in ("user", "deliver", "mail", "queue"):
        for option in set(re.findall(r"--[a-z][a-z-]*", inetkit_help(command))) - {"--help"}:
            assert re.search(rf"^  {option} ", top, re.M), f"{option} (from inetkit {command})"
    assert "inetkit(8)" in top


@pytest.mark.parametrize("daemon", DAEMONS)
def test_each_daemon_help_says_what_it_is_and_names_its_man_pages(daemon):
    program = f"inetkit-{daemon}"
    proc = subprocess.run([str(binary(program)), "--help"], capture_output=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    text = proc.stdout.decode()
    assert re.search(rf"^{program}: .+, started by systemd\.$", text, re.M), text
    assert f"See {program}(8), and {program}.toml(5) for the config." in text
    # The page named is the one that is shipped, and says the same in its NAME line.
    page = Path(__file__).resolve().parents[2] / "packaging" / "man" / f"{program}.8"
    summary = re.search(rf"^{program}: (.+)\.$", text, re.M).group(1)
    name_line = page.read_text().splitlines()[2].replace("\\-", "-")
    assert name_line == f"{program} - {summary}", (name_line, summary)
