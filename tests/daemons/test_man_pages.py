"""The shipped man pages (packaging/man) format without warnings and say what the programs do
(issue #15, item 5): one date in every footer, -h and -V in every synopsis, inetkit(8) naming
every daemon and documenting every option `inetkit --help` lists. Reads the source tree and
runs groff and mandoc's linter (both installed by .ci/install); starts no daemon.
"""

import re
import subprocess
from pathlib import Path

import pytest

from support.inetkit import binary

ROOT = Path(__file__).resolve().parents[2]
MAN = ROOT / "packaging" / "man"
PAGES = sorted(MAN.glob("*.[58]"))
DAEMON_PAGES = sorted(p for p in MAN.glob("inetkit-*.8"))


def render(page: Path) -> str:
    """The page as `man` shows it, in plain ASCII (no bold, underline or colour), 100 wide."""
    proc = subprocess.run(["groff", "-man", "-Tascii", "-P-bcou", "-rLL=100n", str(page)],
                          capture_output=True, text=True, check=True)
    return proc.stdout


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_groff_formats_the_page_without_warnings(page):
    proc = subprocess.run(["groff", "-man", "-ww", "-z", str(page)], capture_output=True,
                          text=True)
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr


def test_mandoc_lint_finds_nothing_above_style():
    # Style notes (input lines over 80 bytes) are the project's line length, not a fault.
    proc = subprocess.run(["mandoc", "-T", "lint", "-W", "warning", *map(str, PAGES)],
                          capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout + proc.stderr == "", proc.stdout + proc.stderr


def test_every_footer_has_the_same_date():
    dates = {p.name: re.match(r'\.TH \S+ \d "([^"]*)"', p.read_text()).group(1) for p in PAGES}
    assert len(set(dates.values())) == 1, dates
    assert re.fullmatch(r"\d{4}-\d\d-\d\d", next(iter(dates.values()))), "a date mandoc parses"


@pytest.mark.parametrize("page", DAEMON_PAGES, ids=lambda p: p.name)
def test_every_synopsis_has_help_and_version(page):
    program = page.name.removesuffix(".8")
    text = render(page)
    assert re.search(rf"^ +{program} \[-h\|-V\]$", text, re.M), text[:800]
    options = text[text.index("\nOPTIONS\n"):]
    assert "-h, --help" in options and "-V, --version" in options


def test_inetkit_8_renders_uidnext_and_names_every_daemon():
    page = MAN / "inetkit.8"
    text = render(page)
    # Whitespace normalised: justification spreads words differently as the page changes.
    assert "UIDVALIDITY n UIDNEXT n, then uid" in " ".join(text.split())
    assert "nR," not in text
    see_also = " ".join(text[text.index("\nSEE ALSO\n"):].split())
    for daemon in DAEMON_PAGES:
        assert f"{daemon.name.removesuffix('.8')}(8)" in see_also, daemon.name


def test_inetkit_8_documents_every_option_of_inetkit_help():
    help_text = subprocess.run([str(binary("inetkit")), "--help"], capture_output=True,
                               text=True, check=True).stdout
    options = set(re.findall(r"^  (--[a-z-]+) ", help_text, re.M))
    assert {"--users", "--mail-root", "--owner", "--spool", "--purge"} <= options, options
    text = render(MAN / "inetkit.8")
    documented = text[text.index("\nOPTIONS\n"):text.index("\nFILES\n")]
    for option in options:
        assert re.search(rf"^       {option}\b", documented, re.M), option


@pytest.mark.parametrize("unit", sorted((ROOT / "units").glob("inetkit-*.service")),
                         ids=lambda p: p.name)
def test_a_unit_comment_names_its_own_unit(unit):
    for named in re.findall(r"systemd-analyze security (\S+?\.service)", unit.read_text()):
        # The inetd-style template is scored as echo's service, whose hardening it copies.
        assert named == unit.name or unit.name == "inetkit-echo-inetd@.service", named
