//! The aliases file, `/etc/inetkit/aliases`, in the `/etc/aliases` format of sendmail and
//! Postfix:
//!
//! ```text
//! # comment
//! postmaster: root
//! root: alice
//! team: alice, bob@example.org,
//!     carol, dave@elsewhere.example
//! sales@example.org: alice
//! ```
//!
//! A logical line is `name: target, target…`; a line starting with whitespace continues the
//! one before; blank lines and lines whose first non-blank character is `#` are ignored.
//! Names are compared without regard to case: `name` (any local domain) or `name@domain`
//! (that domain only). A target is a user or alias name (no `@`) or an address; commands
//! (`|…`), files (`/…`) and `:include:` are not supported. A line that cannot be used, or a
//! target of it, is reported with its line number and skipped; the rest loads. When a name
//! appears twice the first line wins, as in the users file.
//!
//! [`parse`] is pure (bytes in, aliases and problems out) so it can be fuzzed; what the
//! aliases resolve to is smtp-submit's business (it knows the users and the relay).

use std::collections::hash_map::Entry;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use super::address::parse_address;
use super::users::{check_name, Problem};
use super::FileStamp;

/// Where the aliases file is when the config does not say.
pub const DEFAULT_ALIASES_FILE: &str = "/etc/inetkit/aliases";

/// Targets one alias may have; more are reported and left out.
pub const MAX_TARGETS: usize = 1000;

/// The parsed aliases file.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Aliases {
    by_name: HashMap<String, Vec<String>>,
}

impl Aliases {
    /// The targets of alias `name` (lower case, as [`parse`] keeps names).
    pub fn get(&self, name: &str) -> Option<&[String]> {
        self.by_name.get(name).map(Vec::as_slice)
    }

    /// Every alias and its targets, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &[String])> {
        self.by_name.iter().map(|(k, v)| (k.as_str(), v.as_slice()))
    }

    /// The number of aliases.
    pub fn len(&self) -> usize {
        self.by_name.len()
    }

    /// No aliases at all.
    pub fn is_empty(&self) -> bool {
        self.by_name.is_empty()
    }
}

/// Parses an aliases file; lines that are not UTF-8 or not usable are problems, not errors.
pub fn parse(bytes: &[u8]) -> (Aliases, Vec<Problem>) {
    let mut aliases = Aliases::default();
    let mut problems = Vec::new();
    for (line, text) in logical_lines(bytes, &mut problems) {
        let mut problem = |message: String| problems.push(Problem { line, message });
        let Some((name, targets)) = text.split_once(':') else {
            problem("expected 'name: target, …'; line skipped".into());
            continue;
        };
        let name = name.trim().to_ascii_lowercase();
        if let Err(err) = check_name(&name) {
            problem(format!("bad alias name: {err}; line skipped"));
            continue;
        }
        let mut kept = Vec::new();
        for target in targets.split(',').map(str::trim) {
            if target.is_empty() {
                continue;
            }
            match check_target(target) {
                Err(why) => problem(format!("alias {name}: target {target:?} {why}; skipped")),
                Ok(()) if kept.len() == MAX_TARGETS => {
                    problem(format!(
                        "alias {name}: more than {MAX_TARGETS} targets; the rest are skipped"
                    ));
                    break;
                }
                Ok(()) => kept.push(target.to_owned()),
            }
        }
        if kept.is_empty() {
            problem(format!("alias {name}: no usable target; line skipped"));
            continue;
        }
        match aliases.by_name.entry(name) {
            Entry::Occupied(first) => problem(format!(
                "alias {} appears again; this line is ignored",
                first.key()
            )),
            Entry::Vacant(slot) => {
                slot.insert(kept);
            }
        }
    }
    // Line problems were found before the entries': report in file order (the sort is stable).
    problems.sort_by_key(|p| p.line);
    (aliases, problems)
}

/// Why `target` cannot be used, as the end of a sentence starting with the target.
fn check_target(target: &str) -> Result<(), String> {
    if target.starts_with('|') {
        Err("is a command: delivery to commands is not supported".into())
    } else if target.starts_with('/') {
        Err("is a file: delivery to files is not supported".into())
    } else if target.to_ascii_lowercase().starts_with(":include:") {
        Err("is an include: :include: is not supported".into())
    } else if target.contains('@') {
        parse_address(target)
            .map(drop)
            .map_err(|err| format!("is not a valid address: {err}"))
    } else {
        check_name(&target.to_ascii_lowercase())
            .map_err(|err| format!("is not a valid user or alias name: {err}"))
    }
}

/// The logical lines of the file with the number of their first line: continuation lines
/// joined (with a space), comments and blank lines dropped.
fn logical_lines(bytes: &[u8], problems: &mut Vec<Problem>) -> Vec<(usize, String)> {
    let mut lines: Vec<(usize, String)> = Vec::new();
    // Whether the last line seen could be continued (a line that was skipped cannot).
    let mut open = false;
    for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
        let number = index + 1;
        let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
        let Ok(text) = std::str::from_utf8(raw) else {
            problems.push(Problem {
                line: number,
                message: "not UTF-8; line skipped".into(),
            });
            open = false;
            continue;
        };
        let trimmed = text.trim();
        if trimmed.is_empty() || trimmed.starts_with('#') {
            continue;
        }
        if text.starts_with(char::is_whitespace) {
            match lines.last_mut() {
                Some((_, logical)) if open => {
                    logical.push(' ');
                    logical.push_str(trimmed);
                }
                _ => problems.push(Problem {
                    line: number,
                    message: "continuation line without a line to continue; line skipped".into(),
                }),
            }
            continue;
        }
        lines.push((number, text.to_owned()));
        open = true;
    }
    lines
}

/// The aliases file and the last parsed version of it, read again when it changes (so an
/// edit applies at once, as one to the users file does).
#[derive(Debug)]
pub struct AliasesSource {
    path: Option<PathBuf>,
    state: Mutex<Loaded>,
}

#[derive(Debug, Default)]
struct Loaded {
    /// `None` before the first read, and while the file is missing.
    stamp: Option<FileStamp>,
    aliases: Arc<Aliases>,
    /// The last read failed or found no file (logged once, until that changes).
    failing: bool,
}

impl AliasesSource {
    /// The aliases in `path`; `None` for no aliases file at all.
    pub fn new(path: Option<PathBuf>) -> AliasesSource {
        AliasesSource {
            path,
            state: Mutex::new(Loaded::default()),
        }
    }

    /// The file this source reads, if any.
    pub fn path(&self) -> Option<&Path> {
        self.path.as_deref()
    }

    /// The aliases as the file says now: one `stat`, and a re-read when it changed. A missing
    /// file is no aliases (logged once); one that cannot be read is an error, so a caller
    /// answers "try again later" rather than treating every alias as unknown.
    pub fn current(&self) -> std::io::Result<Arc<Aliases>> {
        let Some(path) = &self.path else {
            return Ok(Arc::default());
        };
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match refresh(path, &mut state) {
            Ok(()) => {
                if state.failing && state.stamp.is_some() {
                    tracing::info!(path = %path.display(), "aliases file readable again");
                    state.failing = false;
                }
                Ok(Arc::clone(&state.aliases))
            }
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
                if !state.failing {
                    tracing::warn!(path = %path.display(), "no aliases file: no aliases");
                    state.failing = true;
                }
                state.stamp = None;
                state.aliases = Arc::default();
                Ok(Arc::clone(&state.aliases))
            }
            Err(err) => {
                if !state.failing {
                    tracing::error!(path = %path.display(), "cannot read the aliases file: {err}");
                    state.failing = true;
                }
                state.stamp = None;
                Err(err)
            }
        }
    }
}

fn refresh(path: &Path, state: &mut Loaded) -> std::io::Result<()> {
    let stamp = FileStamp::of(&std::fs::metadata(path)?);
    if state.stamp == Some(stamp) {
        return Ok(());
    }
    let (aliases, stamp) = load(path)?;
    for problem in load_problems(path, &aliases.1) {
        tracing::warn!("{problem}");
    }
    tracing::info!(path = %path.display(), aliases = aliases.0.len(), "aliases file loaded");
    state.aliases = Arc::new(aliases.0);
    state.stamp = Some(stamp);
    Ok(())
}

/// Reads and parses the file, stamping what was read so a change during the read is seen
/// next time.
fn load(path: &Path) -> std::io::Result<((Aliases, Vec<Problem>), FileStamp)> {
    let mut file = std::fs::File::open(path)?;
    let stamp = FileStamp::of(&file.metadata()?);
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes)?;
    Ok((parse(&bytes), stamp))
}

/// Reads `path` and describes each problem of it as `path:line: message`; a missing file is
/// no problem (it means no aliases), an unreadable one is the only one.
pub fn check_file(path: &Path) -> Vec<String> {
    match load(path) {
        Ok(((_, problems), _)) => load_problems(path, &problems),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => Vec::new(),
        Err(err) => vec![format!("{}: cannot be read: {err}", path.display())],
    }
}

fn load_problems(path: &Path, problems: &[Problem]) -> Vec<String> {
    problems
        .iter()
        .map(|p| format!("{}:{}: {}", path.display(), p.line, p.message))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn targets<'a>(aliases: &'a Aliases, name: &str) -> Vec<&'a str> {
        aliases
            .get(name)
            .unwrap_or_default()
            .iter()
            .map(String::as_str)
            .collect()
    }

    #[test]
    fn names_lists_comments_and_continuations() {
        let text = "# default aliases\n\
                    \n\
                    Postmaster: root\n\
                    root:alice\n\
                    \x20  # a comment inside is not a continuation\n\
                    team: alice, Bob@Example.org,\n\
                    \tcarol,\r\n\
                    \x20 dave@elsewhere.example\n\
                    sales@Example.org: alice+sales@localhost\n";
        let (aliases, problems) = parse(text.as_bytes());
        assert_eq!(problems, vec![]);
        assert_eq!(aliases.len(), 4);
        assert_eq!(targets(&aliases, "postmaster"), ["root"]);
        assert_eq!(targets(&aliases, "root"), ["alice"]);
        assert_eq!(
            targets(&aliases, "team"),
            [
                "alice",
                "Bob@Example.org",
                "carol",
                "dave@elsewhere.example"
            ]
        );
        assert_eq!(
            targets(&aliases, "sales@example.org"),
            ["alice+sales@localhost"]
        );
        assert_eq!(aliases.get("Postmaster"), None, "names are kept lower case");
    }

    #[test]
    fn bad_lines_and_targets_are_reported_with_their_line() {
        let mut bytes = b"  orphan\n\
                          no colon here\n\
                          bad name: alice\n\
                          a@b@c: alice\n\
                          pipe: |/usr/bin/procmail, alice\n\
                          file: /var/mail/x\n\
                          inc: :include:/etc/list\n\
                          odd: a@b@c, x@, Alice Smith\n\
                          empty:\n\
                          root: alice\n\
                          root: bob\n"
            .to_vec();
        bytes.extend_from_slice(b"x\xff: alice\n  carol\n");
        let (aliases, problems) = parse(&bytes);
        let found: Vec<(usize, &str)> = problems
            .iter()
            .map(|p| (p.line, p.message.as_str()))
            .collect();
        assert_eq!(
            found,
            [
                (1, "continuation line without a line to continue; line skipped"),
                (2, "expected 'name: target, …'; line skipped"),
                (3, "bad alias name: only lowercase letters, digits and . _ - @ are allowed; line skipped"),
                (4, "bad alias name: at most one '@' is allowed; line skipped"),
                (5, "alias pipe: target \"|/usr/bin/procmail\" is a command: delivery to commands is not supported; skipped"),
                (6, "alias file: target \"/var/mail/x\" is a file: delivery to files is not supported; skipped"),
                (6, "alias file: no usable target; line skipped"),
                (7, "alias inc: target \":include:/etc/list\" is an include: :include: is not supported; skipped"),
                (7, "alias inc: no usable target; line skipped"),
                (8, "alias odd: target \"a@b@c\" is not a valid address: an address has exactly one '@'; skipped"),
                (8, "alias odd: target \"x@\" is not a valid address: the part after '@' is not a domain name; skipped"),
                (8, "alias odd: target \"Alice Smith\" is not a valid user or alias name: only lowercase letters, digits and . _ - @ are allowed; skipped"),
                (8, "alias odd: no usable target; line skipped"),
                (9, "alias empty: no usable target; line skipped"),
                (11, "alias root appears again; this line is ignored"),
                (12, "not UTF-8; line skipped"),
                (13, "continuation line without a line to continue; line skipped"),
            ]
        );
        assert_eq!(targets(&aliases, "pipe"), ["alice"]);
        assert_eq!(targets(&aliases, "root"), ["alice"]);
        assert_eq!(aliases.len(), 2);
    }

    #[test]
    fn targets_are_bounded() {
        let mut text = String::from("big: ");
        for i in 0..MAX_TARGETS + 5 {
            text.push_str(&format!("u{i}, "));
        }
        let (aliases, problems) = parse(text.as_bytes());
        assert_eq!(aliases.get("big").map(<[String]>::len), Some(MAX_TARGETS));
        assert_eq!(problems.len(), 1);
    }

    #[test]
    fn the_source_follows_the_file() {
        let dir = std::env::temp_dir().join(format!("inetkit-aliases-{}", std::process::id()));
        let _ = std::fs::create_dir_all(&dir);
        let path = dir.join("aliases");
        let _ = std::fs::remove_file(&path);
        let source = AliasesSource::new(Some(path.clone()));
        // No file: no aliases, and no error.
        assert!(source.current().is_ok_and(|a| a.is_empty()));
        std::fs::write(&path, "postmaster: alice\n").ok();
        assert!(source
            .current()
            .is_ok_and(|a| a.get("postmaster").is_some()));
        std::fs::write(&path, "postmaster: bob\nabuse: bob\n").ok();
        assert!(source.current().is_ok_and(|a| a.len() == 2));
        assert_eq!(check_file(&path), Vec::<String>::new());
        std::fs::write(&path, "oops\n").ok();
        assert_eq!(
            check_file(&path),
            [format!(
                "{}:1: expected 'name: target, …'; line skipped",
                path.display()
            )]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
