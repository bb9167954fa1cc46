//! The users file, `/etc/inetkit/users`, in Dovecot's passwd-file format:
//!
//! ```text
//! # comment
//! name:{SCHEME}hash:uid:gid:gecos:home:shell:extra fields
//! alice:{SHA512-CRYPT}$6$...::::::
//! bob:{ARGON2ID}$argon2id$...
//! ```
//!
//! Fields after the password may be empty or absent; gecos and shell are ignored; the extra
//! fields are Dovecot's space-separated `key=value` list (the rest of the line). A line that
//! cannot be used is reported with its number (never with its content, which holds a hash) and
//! the other lines still load. When a name appears twice the first line wins.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use super::hash::StoredPassword;

/// A user, as the daemons see it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    /// The login name, as checked by [`check_name`].
    pub name: String,
    /// The uid field, if set (Dovecot's; inetkit's files all belong to the `inetkit` user).
    pub uid: Option<u32>,
    /// The gid field, if set.
    pub gid: Option<u32>,
    /// The home field; empty means "the daemon's default" (e.g. `/var/lib/inetkit/ftp/<name>`).
    pub home: Option<PathBuf>,
    /// Dovecot's extra fields, split at spaces: `key=value` or a bare `key`.
    pub extra: Vec<String>,
}

impl User {
    /// The value of extra field `key` (`""` for a bare `key`).
    pub fn extra_field(&self, key: &str) -> Option<&str> {
        self.extra
            .iter()
            .find_map(|field| match field.split_once('=') {
                Some((k, v)) if k == key => Some(v),
                None if field == key => Some(""),
                _ => None,
            })
    }
}

/// A line of the users file: the user, and their password unless it is empty or unusable
/// (then nobody can log in as them, but they still exist, e.g. as a mail recipient).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Who the line describes.
    pub user: User,
    /// The stored password; `None` when the field is empty or unusable (see [`Problem`]).
    pub password: Option<StoredPassword>,
}

/// A line that was skipped or only partly usable: 1-based line number and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    /// The line's number, from 1.
    pub line: usize,
    /// What is wrong and what was done about it; never the line's content.
    pub message: String,
}

/// The parsed users file.
#[derive(Debug, Default)]
pub struct UsersFile {
    entries: Vec<Entry>,
    by_name: HashMap<String, usize>,
}

impl UsersFile {
    /// Reads and parses a users file.
    pub fn load(path: &Path) -> std::io::Result<(UsersFile, Vec<Problem>)> {
        Ok(UsersFile::parse(&std::fs::read(path)?))
    }

    /// Parses the file's bytes; lines that are not UTF-8 are problems, not errors.
    pub fn parse(bytes: &[u8]) -> (UsersFile, Vec<Problem>) {
        let mut file = UsersFile::default();
        let mut problems = Vec::new();
        for (index, raw) in bytes.split(|&b| b == b'\n').enumerate() {
            let number = index + 1;
            let mut problem = |message: String| {
                problems.push(Problem {
                    line: number,
                    message,
                })
            };
            let raw = raw.strip_suffix(b"\r").unwrap_or(raw);
            let Ok(line) = std::str::from_utf8(raw) else {
                problem("not UTF-8; line skipped".into());
                continue;
            };
            match parse_line(line) {
                Ok(None) => {}
                Ok(Some((entry, password_problem))) => {
                    if let Some(message) = password_problem {
                        problem(format!("user {}: {message}", entry.user.name));
                    }
                    if file.by_name.contains_key(&entry.user.name) {
                        problem(format!(
                            "user {} appears again; this line is ignored",
                            entry.user.name
                        ));
                        continue;
                    }
                    file.by_name
                        .insert(entry.user.name.clone(), file.entries.len());
                    file.entries.push(entry);
                }
                Err(message) => problem(format!("{message}; line skipped")),
            }
        }
        (file, problems)
    }

    /// The entry of user `name` (exact, case-sensitive match).
    pub fn get(&self, name: &str) -> Option<&Entry> {
        self.by_name.get(name).map(|&i| &self.entries[i])
    }

    /// The user a login name or address means, ignoring case (names in the file are lower
    /// case): the exact name first (`alice@example.org`, or plain `alice`), then, for
    /// `local@domain` with `domain` one of `local_domains` (lower case), the user named
    /// `local`. This is Dovecot's and Postfix's order: the full address before the local part.
    pub fn find(&self, name: &str, local_domains: &[String]) -> Option<&Entry> {
        let name = name.to_ascii_lowercase();
        if let Some(entry) = self.get(&name) {
            return Some(entry);
        }
        let (local, domain) = name.rsplit_once('@')?;
        if local.is_empty() || local.contains('@') {
            return None;
        }
        local_domains
            .iter()
            .any(|d| d == domain)
            .then(|| self.get(local))
            .flatten()
    }

    /// The users in file order.
    pub fn iter(&self) -> impl Iterator<Item = &Entry> {
        self.entries.iter()
    }

    /// The number of users.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// No users at all.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// Parses one line. `Ok(None)` for blank lines and comments; a usable user whose password
/// field is not comes with the reason as the second element.
pub fn parse_line(line: &str) -> Result<Option<(Entry, Option<String>)>, String> {
    if line.trim().is_empty() || line.trim_start().starts_with('#') {
        return Ok(None);
    }
    // The 8th field (extra fields) is the rest of the line and may itself contain ':'.
    let mut fields = line.splitn(8, ':');
    let name = fields.next().unwrap_or_default();
    check_name(name).map_err(|err| format!("bad user name: {err}"))?;
    let password_field = fields
        .next()
        .ok_or_else(|| format!("user {name}: no password field"))?;
    let number = |what: &str, field: Option<&str>| -> Result<Option<u32>, String> {
        match field.unwrap_or_default() {
            "" => Ok(None),
            text => text
                .parse()
                .map(Some)
                .map_err(|_| format!("user {name}: {what} is not a number")),
        }
    };
    let uid = number("uid", fields.next())?;
    let gid = number("gid", fields.next())?;
    let _gecos = fields.next();
    let home = match fields.next().unwrap_or_default() {
        "" => None,
        home if home.starts_with('/') => Some(PathBuf::from(home)),
        _ => return Err(format!("user {name}: home is not an absolute path")),
    };
    let _shell = fields.next();
    let extra = fields
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .map(str::to_owned)
        .collect();

    let (password, problem) = if password_field.is_empty() {
        // An empty password field: a user without a login, as in Dovecot.
        (None, None)
    } else {
        match StoredPassword::parse(password_field) {
            Ok(p) => (Some(p), None),
            Err(err) => (None, Some(format!("{err}; this user cannot log in"))),
        }
    };
    let user = User {
        name: name.to_owned(),
        uid,
        gid,
        home,
        extra,
    };
    Ok(Some((Entry { user, password }, problem)))
}

/// Why a user name is refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    /// No name at all.
    #[error("empty")]
    Empty,
    /// Longer than [`MAX_NAME_LEN`].
    #[error("longer than {MAX_NAME_LEN} bytes")]
    TooLong,
    /// A byte outside `[a-z0-9._@-]`.
    #[error("only lowercase letters, digits and . _ - @ are allowed")]
    BadCharacter,
    /// Starts with `.`, `_`, `-` or `@`.
    #[error("must start with a letter or digit")]
    BadStart,
    /// Contains `..`.
    #[error("must not contain '..'")]
    DotDot,
    /// More than one `@`.
    #[error("at most one '@' is allowed")]
    TwoAts,
    /// `local@` with nothing, or no domain name, after the `@`.
    #[error("the part after '@' must be a domain name such as example.org")]
    BadDomain,
    /// The part before `@` is longer than [`MAX_LOCAL_PART_LEN`].
    #[error("the part before '@' is longer than {MAX_LOCAL_PART_LEN} bytes")]
    LocalPartTooLong,
}

/// The longest local part of an address (RFC 5321 §4.5.3.1.1).
pub const MAX_LOCAL_PART_LEN: usize = 64;

/// The longest user name, in bytes.
pub const MAX_NAME_LEN: usize = 128;

/// User names end up as directory names (`/var/lib/inetkit/mail/<name>`) and in protocol
/// replies, so they are plain: `[a-z0-9][a-z0-9._@-]*`, no `..`, at most 128 bytes. A name
/// may be an address (`alice@example.org`, Dovecot's habit): then one `@`, at most 64 bytes
/// before it and a domain name after it. Lower case only: logins and addresses are compared
/// without regard to case, so the file holds each name in one spelling.
pub fn check_name(name: &str) -> Result<(), NameError> {
    let allowed = |c: u8| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._-@".contains(&c);
    match name.as_bytes() {
        [] => Err(NameError::Empty),
        b if b.len() > MAX_NAME_LEN => Err(NameError::TooLong),
        b if !b.iter().all(|&c| allowed(c)) => Err(NameError::BadCharacter),
        [first, ..] if !first.is_ascii_alphanumeric() => Err(NameError::BadStart),
        _ if name.contains("..") => Err(NameError::DotDot),
        _ => match name.split_once('@') {
            None => Ok(()),
            Some((_, domain)) if domain.contains('@') => Err(NameError::TwoAts),
            Some((local, _)) if local.len() > MAX_LOCAL_PART_LEN => {
                Err(NameError::LocalPartTooLong)
            }
            Some((_, domain)) if !is_domain(domain) => Err(NameError::BadDomain),
            Some(_) => Ok(()),
        },
    }
}

/// `example.org`: dot-separated labels of letters, digits and inner hyphens (RFC 1035 §2.3.1,
/// in any case), 255 bytes at most.
pub fn is_domain(domain: &str) -> bool {
    let label = |l: &str| {
        let b = l.as_bytes();
        match (b.first(), b.last()) {
            (Some(first), Some(last)) => {
                b.len() <= 63
                    && first.is_ascii_alphanumeric()
                    && last.is_ascii_alphanumeric()
                    && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'-')
            }
            _ => false,
        }
    };
    domain.len() <= 255 && domain.split('.').all(label)
}

/// A new line for the users file: `name:{SCHEME}hash::::home::` (uid, gid, gecos, shell and
/// extra fields left empty, as the daemons' defaults apply then).
pub fn format_line(name: &str, password_field: &str, home: Option<&Path>) -> String {
    let home = home.map(|h| h.to_string_lossy()).unwrap_or_default();
    format!("{name}:{password_field}::::{home}::")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hash::Scheme;

    const SHA512: &str = "{SHA512-CRYPT}$6$ay2kaGB3g3VLUEIv$6z3UYmAzKE0YEOA7XzB/5RZR36V1k5WXD6KfEcGbhHULGf6KxrSH3ktAZTG9n82XNHXwwrg6.0zxgqNEbV5em.";

    fn parse(text: &str) -> (UsersFile, Vec<Problem>) {
        UsersFile::parse(text.as_bytes())
    }

    #[test]
    fn full_short_and_commented_lines() {
        let text = format!(
            "# inetkit users\n\
             \n\
             alice:{SHA512}::::::\n\
             \x20  # indented comment\n\
             bob:{{PLAIN}}pw:1001:1002:Bob B:/srv/bob:/bin/false:userdb_quota_rule=*:storage=1G nopassword\r\n\
             carol:{{PLAIN}}x\n\
             dave:\n"
        );
        let (file, problems) = parse(&text);
        assert_eq!(problems, vec![]);
        assert_eq!(file.len(), 4);
        let names: Vec<&str> = file.iter().map(|e| e.user.name.as_str()).collect();
        assert_eq!(names, ["alice", "bob", "carol", "dave"]);

        let Some(alice) = file.get("alice") else {
            panic!("no alice")
        };
        assert_eq!(
            alice.user,
            User {
                name: "alice".into(),
                uid: None,
                gid: None,
                home: None,
                extra: vec![]
            }
        );
        assert!(alice.password.as_ref().is_some_and(|p| p.verify(b"secret")));

        let Some(bob) = file.get("bob") else {
            panic!("no bob")
        };
        assert_eq!(bob.user.uid, Some(1001));
        assert_eq!(bob.user.gid, Some(1002));
        assert_eq!(bob.user.home, Some(PathBuf::from("/srv/bob")));
        // The extra fields are the rest of the line, colons included; CRLF is tolerated.
        assert_eq!(
            bob.user.extra,
            ["userdb_quota_rule=*:storage=1G", "nopassword"]
        );
        assert_eq!(
            bob.user.extra_field("userdb_quota_rule"),
            Some("*:storage=1G")
        );
        assert_eq!(bob.user.extra_field("nopassword"), Some(""));
        assert_eq!(bob.user.extra_field("quota"), None);
        assert_eq!(
            bob.password.as_ref().map(|p| p.scheme()),
            Some(Scheme::Plain)
        );

        let Some(carol) = file.get("carol") else {
            panic!("no carol")
        };
        assert_eq!(carol.user.home, None);
        // An empty password field: the user exists but cannot log in.
        assert_eq!(file.get("dave").map(|d| d.password.is_none()), Some(true));
        assert!(file.get("eve").is_none());
    }

    #[test]
    fn malformed_lines_are_reported_and_the_rest_loads() {
        let text = "alice:{PLAIN}a\n\
                    Bob:{PLAIN}b\n\
                    ..etc:{PLAIN}c\n\
                    carol\n\
                    dave:{PLAIN}d:x\n\
                    erin:{PLAIN}e::::relative/home\n\
                    frank:{MD5}0123456789abcdef\n\
                    alice:{PLAIN}again\n\
                    grace:{PLAIN}g\n\
                    heidi:{PLAIN}::::::\n";
        let mut bytes = text.as_bytes().to_vec();
        bytes.extend_from_slice(b"h\xffi:{PLAIN}h\n");
        let (file, problems) = UsersFile::parse(&bytes);
        let names: Vec<&str> = file.iter().map(|e| e.user.name.as_str()).collect();
        assert_eq!(names, ["alice", "frank", "grace", "heidi"]);
        let lines: Vec<usize> = problems.iter().map(|p| p.line).collect();
        assert_eq!(lines, [2, 3, 4, 5, 6, 7, 8, 10, 11]);
        let messages: Vec<&str> = problems.iter().map(|p| p.message.as_str()).collect();
        assert_eq!(
            messages,
            [
                "bad user name: only lowercase letters, digits and . _ - @ are allowed; line skipped",
                "bad user name: must start with a letter or digit; line skipped",
                "user carol: no password field; line skipped",
                "user dave: uid is not a number; line skipped",
                "user erin: home is not an absolute path; line skipped",
                "user frank: unknown password scheme {MD5}; this user cannot log in",
                "user alice appears again; this line is ignored",
                "user heidi: empty {PLAIN} password; this user cannot log in",
                "not UTF-8; line skipped",
            ]
        );
        // The first alice wins; frank exists but has no usable password.
        assert!(file
            .get("alice")
            .and_then(|a| a.password.as_ref())
            .is_some_and(|p| p.verify(b"a")));
        assert!(file.get("frank").is_some_and(|f| f.password.is_none()));
        // heidi's empty PLAIN password is no password: nothing logs in as her.
        assert!(file.get("heidi").is_some_and(|h| h.password.is_none()));
        // No message repeats a secret.
        assert!(problems
            .iter()
            .all(|p| !p.message.contains("0123456789abcdef")));
    }

    #[test]
    fn names() {
        for ok in [
            "alice",
            "a",
            "bob.smith",
            "b_2-x",
            "alice@example.org",
            "0day",
        ] {
            assert_eq!(check_name(ok), Ok(()), "{ok}");
        }
        let long = "a".repeat(MAX_NAME_LEN + 1);
        let long_local = format!("{}@x.org", "a".repeat(MAX_LOCAL_PART_LEN + 1));
        for (bad, err) in [
            ("", NameError::Empty),
            (long.as_str(), NameError::TooLong),
            ("Alice", NameError::BadCharacter),
            ("al ice", NameError::BadCharacter),
            ("a:b", NameError::BadCharacter),
            ("a/b", NameError::BadCharacter),
            ("a\tb", NameError::BadCharacter),
            ("a\u{7f}", NameError::BadCharacter),
            ("ä", NameError::BadCharacter),
            (".hidden", NameError::BadStart),
            ("-n", NameError::BadStart),
            ("a..b", NameError::DotDot),
            ("a@b@localhost", NameError::TwoAts),
            ("alice@example.org@localhost", NameError::TwoAts),
            ("a@", NameError::BadDomain),
            ("a@.org", NameError::BadDomain),
            ("a@example.org.", NameError::BadDomain),
            ("a@-x.org", NameError::BadDomain),
            ("@example.org", NameError::BadStart),
            (long_local.as_str(), NameError::LocalPartTooLong),
        ] {
            assert_eq!(check_name(bad), Err(err), "{bad:?}");
        }
    }

    #[test]
    fn formatted_lines_parse_back() {
        let line = format_line("alice", "{PLAIN}pw", Some(Path::new("/srv/alice")));
        assert_eq!(line, "alice:{PLAIN}pw::::/srv/alice::");
        let Ok(Some((entry, None))) = parse_line(&line) else {
            panic!("{line}")
        };
        assert_eq!(entry.user.home, Some(PathBuf::from("/srv/alice")));
        assert_eq!(format_line("bob", "{PLAIN}pw", None), "bob:{PLAIN}pw::::::");
    }

    #[test]
    fn find_takes_the_exact_name_then_the_local_part_of_a_local_domain() {
        let (file, problems) =
            parse("alice:{PLAIN}a\nalice@example.org:{PLAIN}b\nbob@example.org:{PLAIN}c\n");
        assert_eq!(problems, vec![]);
        let local = ["localhost".to_owned(), "example.org".to_owned()];
        let found = |name: &str| file.find(name, &local).map(|e| e.user.name.as_str());
        assert_eq!(found("alice"), Some("alice"));
        assert_eq!(found("ALICE"), Some("alice"));
        // The exact address wins over the local part.
        assert_eq!(found("alice@example.org"), Some("alice@example.org"));
        assert_eq!(found("Alice@Example.ORG"), Some("alice@example.org"));
        // A plain name answers for every local domain, and only those.
        assert_eq!(found("Alice@LocalHost"), Some("alice"));
        assert_eq!(found("alice@elsewhere.example"), None);
        assert_eq!(found("bob@example.org"), Some("bob@example.org"));
        assert_eq!(found("bob@localhost"), None);
        assert_eq!(found("bob"), None);
        assert_eq!(found("alice@x@localhost"), None);
        assert_eq!(found("@localhost"), None);
        // Without local domains only exact names are found.
        assert_eq!(
            file.find("alice@localhost", &[])
                .map(|e| e.user.name.as_str()),
            None
        );
    }
}
