//! `inetkit user add|passwd|del|list|check`: manages the users file the daemons read
//! (`/etc/inetkit/users`, Dovecot passwd-file format; see `inetkit_auth`).
//!
//! Changes are written atomically: a new file beside the old one with the same mode and
//! owner, fsynced, then renamed over it; comments and the lines not being changed are kept
//! byte for byte. The daemons notice the new file on their next login, no restart needed.
//! Concurrent runs of this command are serialised with a lock on the file's directory.

use std::fs::{self, File, OpenOptions};
use std::io::{BufRead, IsTerminal, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context};
use inetkit_auth::hash::{self, StoredPassword};
use inetkit_auth::users::{self, UsersFile};
use inetkit_auth::DEFAULT_USERS_FILE;
use inetkit_maildir::DEFAULT_MAIL_ROOT;
use nix::fcntl::{Flock, FlockArg};

const HELP: &str = "usage: inetkit user COMMAND [--users FILE]

  add NAME [--home DIR]   add a user: a name (alice) or an address (alice@example.org), in
                          any case (stored in lower case)
  passwd NAME             change a user's password
  del NAME [--purge]      remove a user; with --purge, their mailbox too
  list                    list the users: name, password scheme, home
  check NAME              check a password against the file (exit status 0 if it matches),
                          finding NAME as a login does (any case; alice@localhost is alice);
                          with --config, against that daemon's [auth]: its users file or
                          its directory (LDAP, PostgreSQL)

The password is asked for on the terminal, or read as one line from stdin when stdin is not
a terminal (e.g. `echo \"$PW\" | inetkit user add alice`). New passwords are hashed with
ARGON2ID, as Dovecot's `doveadm pw -s ARGON2ID` does.

--users FILE      the users file (default /etc/inetkit/users)
--home DIR        the user's home field (FTP root); empty means the daemon's default
--purge           with del: also remove the user's mailbox, <mail root>/NAME (FTP files and
                  a home named in the users file are left alone)
--mail-root DIR   where the mailboxes are (default /var/lib/inetkit/mail)
--config FILE     with check: a daemon's config (e.g. /etc/inetkit/imapd.toml) whose [auth]
                  says where users are";

/// Mode of a users file this command creates: readable by the `inetkit` group's daemons.
const NEW_FILE_MODE: u32 = 0o640;

struct Options {
    users: PathBuf,
    home: Option<PathBuf>,
    purge: bool,
    mail_root: Option<PathBuf>,
    config: Option<PathBuf>,
    words: Vec<String>,
}

fn parse_args(args: &[String]) -> anyhow::Result<Option<Options>> {
    let mut options = Options {
        users: PathBuf::from(DEFAULT_USERS_FILE),
        home: None,
        purge: false,
        mail_root: None,
        config: None,
        words: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let mut value = |flag: &str| -> anyhow::Result<PathBuf> {
            match arg.strip_prefix(flag).and_then(|r| r.strip_prefix('=')) {
                Some(v) => Ok(PathBuf::from(v)),
                None => args
                    .next()
                    .map(PathBuf::from)
                    .with_context(|| format!("{flag} needs a value")),
            }
        };
        match arg.as_str() {
            "-h" | "--help" => return Ok(None),
            a if a == "--users" || a.starts_with("--users=") => options.users = value("--users")?,
            a if a == "--home" || a.starts_with("--home=") => options.home = Some(value("--home")?),
            a if a == "--mail-root" || a.starts_with("--mail-root=") => {
                options.mail_root = Some(value("--mail-root")?);
            }
            a if a == "--config" || a.starts_with("--config=") => {
                options.config = Some(value("--config")?);
            }
            "--purge" => options.purge = true,
            a if a.starts_with('-') && a.len() > 1 => bail!("unknown option {a}\n\n{HELP}"),
            word => options.words.push(word.to_owned()),
        }
    }
    Ok(Some(options))
}

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let Some(options) = parse_args(args)? else {
        println!("{HELP}");
        return Ok(());
    };
    let words: Vec<&str> = options.words.iter().map(String::as_str).collect();
    if options.home.is_some() && words.first() != Some(&"add") {
        bail!("--home only goes with `add`");
    }
    if (options.purge || options.mail_root.is_some()) && words.first() != Some(&"del") {
        bail!("--purge and --mail-root only go with `del`");
    }
    if options.mail_root.is_some() && !options.purge {
        bail!("--mail-root goes with `del --purge`");
    }
    if options.config.is_some() && words.first() != Some(&"check") {
        bail!("--config only goes with `check`");
    }
    let users = options.users.as_path();
    if let (["check", name], Some(config)) = (words.as_slice(), &options.config) {
        return crate::directory::check(config, name);
    }
    match words.as_slice() {
        ["add", name] => add(users, name, options.home.as_deref()),
        ["passwd", name] => passwd(users, name),
        ["del", name] if options.purge => {
            let root = options.mail_root.as_deref();
            purge(users, name, root.unwrap_or(Path::new(DEFAULT_MAIL_ROOT)))
        }
        ["del", name] => del(users, name),
        ["list"] => list(users),
        ["check", name] => check(users, name),
        _ => bail!("{HELP}"),
    }
}

fn add(path: &Path, given: &str, home: Option<&Path>) -> anyhow::Result<()> {
    // Logins and addresses are compared without regard to case; the file holds lower case.
    let lowered = given.to_ascii_lowercase();
    let name = lowered.as_str();
    users::check_name(name).with_context(|| format!("invalid user name {given:?}"))?;
    if let Some(home) = home {
        let text = home.to_string_lossy();
        if !home.is_absolute() || text.contains([':', '\n', '\r']) {
            bail!("--home must be an absolute path without ':' or line breaks");
        }
    }
    // Checked before asking for the password, and again under the lock.
    if read_lines(path)?.is_some_and(|(lines, _)| find(&lines, name).is_some()) {
        bail!("user {name} already exists (use `inetkit user passwd {name}`)");
    }
    let field = hash::hash_password(&read_password(true)?)?;
    let line = users::format_line(name, &field, home);
    edit(path, true, |lines| {
        if find(lines, name).is_some() {
            bail!("user {name} already exists");
        }
        lines.push(line.into_bytes());
        Ok(())
    })?;
    if name != given {
        println!("user names are not case-sensitive: {given} is stored as {name}");
    }
    println!("added user {name} to {}", path.display());
    Ok(())
}

fn passwd(path: &Path, given: &str) -> anyhow::Result<()> {
    check_lookup_name(given)?;
    let name = &stored_name(path, given)?;
    if read_lines(path)?.is_none_or(|(lines, _)| find(&lines, name).is_none()) {
        bail!("no user {name} in {}", path.display());
    }
    let field = hash::hash_password(&read_password(true)?)?;
    edit(path, false, |lines| {
        let index = find(lines, name).with_context(|| format!("no user {name}"))?;
        lines[index] = replace_password(&lines[index], name, &field);
        Ok(())
    })?;
    println!("changed the password of {name}");
    Ok(())
}

fn del(path: &Path, given: &str) -> anyhow::Result<()> {
    check_lookup_name(given)?;
    let name = &stored_name(path, given)?;
    edit(path, false, |lines| {
        let before = lines.len();
        // Every line of that name, so the user is really gone (a later duplicate would
        // otherwise take effect).
        lines.retain(|line| !is_line_of(line, name));
        if lines.len() == before {
            bail!("no user {name} in the users file");
        }
        Ok(())
    })?;
    println!("removed user {name}");
    Ok(())
}

/// `del --purge`: the user, then their mailbox. What is there is looked at first, so nothing is
/// removed when the mailbox could not be.
fn purge(path: &Path, given: &str, mail_root: &Path) -> anyhow::Result<()> {
    let name = &stored_name(path, given)?;
    // The name becomes a path: only names a users file can hold (no `/`, no `..`).
    users::check_name(name).with_context(|| format!("invalid user name {name:?}"))?;
    let mailbox = mail_root.join(name);
    let contents = match fs::symlink_metadata(&mailbox) {
        Ok(meta) if meta.is_dir() => Some(
            mailbox_contents(&mailbox)
                .with_context(|| format!("looking into {}", mailbox.display()))?,
        ),
        Ok(_) => bail!(
            "{} is not a directory: nothing removed (remove it by hand)",
            mailbox.display()
        ),
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => None,
        Err(err) => return Err(err).with_context(|| mailbox.display().to_string()),
    };
    del(path, name)?;
    match contents {
        None => println!("no mailbox at {}", mailbox.display()),
        Some(MailboxContents { messages, folders }) => {
            fs::remove_dir_all(&mailbox)
                .with_context(|| format!("removing {} (the user is removed)", mailbox.display()))?;
            println!(
                "removed mailbox {} ({messages} message{} in {folders} folder{})",
                mailbox.display(),
                plural(messages),
                plural(folders)
            );
        }
    }
    Ok(())
}

fn plural(n: usize) -> &'static str {
    if n == 1 {
        ""
    } else {
        "s"
    }
}

/// What a purge removes, to say so.
struct MailboxContents {
    messages: usize,
    folders: usize,
}

/// Counts the messages (files in `new/` and `cur/`) of INBOX and the `.folder`s.
fn mailbox_contents(mailbox: &Path) -> std::io::Result<MailboxContents> {
    let mut folders = vec![mailbox.to_owned()];
    for entry in fs::read_dir(mailbox)? {
        let entry = entry?;
        if entry.file_name().as_encoded_bytes().starts_with(b".") && entry.file_type()?.is_dir() {
            folders.push(entry.path());
        }
    }
    let mut messages = 0;
    for folder in &folders {
        for sub in ["new", "cur"] {
            match fs::read_dir(folder.join(sub)) {
                Ok(entries) => messages += entries.count(),
                Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
                Err(err) => return Err(err),
            }
        }
    }
    Ok(MailboxContents {
        messages,
        folders: folders.len(),
    })
}

fn list(path: &Path) -> anyhow::Result<()> {
    let file = load(path)?;
    let mut out = std::io::stdout().lock();
    for entry in file.iter() {
        let scheme = entry
            .password
            .as_ref()
            .map_or("-", |p: &StoredPassword| p.scheme().name());
        let home = entry
            .user
            .home
            .as_ref()
            .map_or_else(|| "-".into(), |h| h.to_string_lossy());
        writeln!(out, "{}\t{scheme}\t{home}", entry.user.name)?;
    }
    Ok(())
}

pub(crate) fn check(path: &Path, given: &str) -> anyhow::Result<()> {
    let file = load(path)?;
    // Found as a login finds it: any case, and alice@localhost (or @ the host's name) for alice.
    let entry = file
        .find(given, &inetkit_auth::default_local_domains())
        .with_context(|| format!("no user {given} in {}", path.display()))?;
    let name = entry.user.name.as_str();
    let stored = entry
        .password
        .as_ref()
        .with_context(|| format!("{name} has no usable password"))?;
    if !stored.verify(&read_password(false)?) {
        bail!("wrong password for {name}");
    }
    println!("password ok for {name} ({})", stored.scheme());
    Ok(())
}

/// Loads the file as the daemons do, reporting the lines they would skip.
fn load(path: &Path) -> anyhow::Result<UsersFile> {
    let (file, problems) = UsersFile::load(path).with_context(|| path.display().to_string())?;
    for problem in problems {
        eprintln!("{}:{}: {}", path.display(), problem.line, problem.message);
    }
    Ok(file)
}

/// Names given to passwd/del are looked up as written (so a hand-made line with an odd name
/// can still be removed), but must not break the line format.
fn check_lookup_name(name: &str) -> anyhow::Result<()> {
    if name.is_empty() || name.contains([':', '\n', '\r']) || name.starts_with('#') {
        bail!("invalid user name {name:?}");
    }
    Ok(())
}

/// The name passwd/del act on: as written when a line has it (a hand-made line with an odd
/// name), else in lower case when a line has that, as the daemons find users.
fn stored_name(path: &Path, given: &str) -> anyhow::Result<String> {
    let lowered = given.to_ascii_lowercase();
    if lowered != given {
        if let Some((lines, _)) = read_lines(path)? {
            if find(&lines, given).is_none() && find(&lines, &lowered).is_some() {
                return Ok(lowered);
            }
        }
    }
    Ok(given.to_owned())
}

// -- the password -------------------------------------------------------------------------------

/// From the terminal without echo (twice for a new password), or one line of stdin.
pub(crate) fn read_password(confirm: bool) -> anyhow::Result<Vec<u8>> {
    let password = if std::io::stdin().is_terminal() {
        let first = rpassword::prompt_password("Password: ").context("reading the password")?;
        if confirm {
            let again = rpassword::prompt_password("Again: ").context("reading the password")?;
            if again != first {
                bail!("the passwords do not match");
            }
        }
        first.into_bytes()
    } else {
        let mut line = Vec::new();
        let read = std::io::stdin()
            .lock()
            .read_until(b'\n', &mut line)
            .context("reading the password from stdin")?;
        if read == 0 {
            bail!("no password on stdin");
        }
        if line.ends_with(b"\n") {
            line.pop();
        }
        if line.ends_with(b"\r") {
            line.pop();
        }
        line
    };
    if password.is_empty() {
        bail!("empty password");
    }
    Ok(password)
}

// -- editing the file ---------------------------------------------------------------------------

/// Is `line` the line of user `name`?
fn is_line_of(line: &[u8], name: &str) -> bool {
    line.strip_prefix(name.as_bytes())
        .is_some_and(|rest| rest.first() == Some(&b':'))
}

/// The line that counts for `name` (the first, as when the daemons load the file).
fn find(lines: &[Vec<u8>], name: &str) -> Option<usize> {
    lines.iter().position(|line| is_line_of(line, name))
}

/// `name:old:rest` becomes `name:new:rest`; the other fields are kept as they were.
fn replace_password(line: &[u8], name: &str, field: &str) -> Vec<u8> {
    let after_name = &line[name.len() + 1..];
    let rest = after_name
        .iter()
        .position(|&b| b == b':')
        .map_or(&[][..], |i| &after_name[i..]);
    [name.as_bytes(), b":", field.as_bytes(), rest].concat()
}

/// The file's lines (without their `\n`) and metadata, or `None` if it does not exist.
fn read_lines(path: &Path) -> anyhow::Result<Option<(Vec<Vec<u8>>, fs::Metadata)>> {
    let mut file = match File::open(path) {
        Ok(file) => file,
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(err) => return Err(err).with_context(|| path.display().to_string()),
    };
    let meta = file.metadata()?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut file, &mut bytes)
        .with_context(|| path.display().to_string())?;
    if bytes.ends_with(b"\n") {
        bytes.pop();
    }
    let lines = if bytes.is_empty() {
        Vec::new()
    } else {
        bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
    };
    Ok(Some((lines, meta)))
}

/// Read, change, write back atomically, all under the directory lock.
fn edit(
    path: &Path,
    create: bool,
    change: impl FnOnce(&mut Vec<Vec<u8>>) -> anyhow::Result<()>,
) -> anyhow::Result<()> {
    // Edit the real file behind a symlink, and keep the symlink.
    let path = fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let dir = match path.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.to_owned(),
        _ => PathBuf::from("."),
    };
    let dir_file = File::open(&dir).with_context(|| dir.display().to_string())?;
    let _lock = Flock::lock(dir_file, FlockArg::LockExclusive)
        .map_err(|(_, errno)| errno)
        .with_context(|| format!("locking {}", dir.display()))?;

    let (mut lines, meta) = match read_lines(&path)? {
        Some((lines, meta)) => (lines, Some(meta)),
        None if create => (Vec::new(), None),
        None => bail!("{}: no such file", path.display()),
    };
    change(&mut lines)?;
    let mut text = lines.join(&b'\n');
    if !text.is_empty() {
        text.push(b'\n');
    }
    write_atomically(&path, &dir, &text, meta.as_ref())
}

fn write_atomically(
    path: &Path,
    dir: &Path,
    text: &[u8],
    old: Option<&fs::Metadata>,
) -> anyhow::Result<()> {
    let name = path
        .file_name()
        .map_or_else(|| "users".into(), |n| n.to_string_lossy().into_owned());
    let tmp = dir.join(format!(".{name}.inetkit-{}", std::process::id()));
    let result = (|| -> anyhow::Result<()> {
        let mut file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("creating {}", tmp.display()))?;
        if let Some(old) = old {
            let mine = file.metadata()?;
            if (mine.uid(), mine.gid()) != (old.uid(), old.gid()) {
                std::os::unix::fs::fchown(&file, Some(old.uid()), Some(old.gid())).with_context(
                    || {
                        format!(
                            "cannot keep the owner {}:{} of {} (run as root?)",
                            old.uid(),
                            old.gid(),
                            path.display()
                        )
                    },
                )?;
            }
        }
        let mode = old.map_or(NEW_FILE_MODE, |m| m.mode() & 0o7777);
        file.set_permissions(fs::Permissions::from_mode(mode))?;
        file.write_all(text)?;
        file.sync_all()?;
        fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        File::open(dir)?.sync_all()?;
        Ok(())
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str) -> Vec<Vec<u8>> {
        text.split('\n').map(|l| l.as_bytes().to_vec()).collect()
    }

    #[test]
    fn finds_the_line_of_a_name_only() {
        let file = lines("# alice:x\nalicia:{PLAIN}a\nalice:{PLAIN}b:1:1\nalice:{PLAIN}c");
        assert_eq!(find(&file, "alice"), Some(2));
        assert_eq!(find(&file, "alicia"), Some(1));
        assert_eq!(find(&file, "ali"), None);
    }

    #[test]
    fn replacing_the_password_keeps_the_other_fields() {
        assert_eq!(
            replace_password(
                b"bob:{PLAIN}old:1:2:Bob:/srv/bob::quota=1G\r",
                "bob",
                "{X}new"
            ),
            b"bob:{X}new:1:2:Bob:/srv/bob::quota=1G\r"
        );
        assert_eq!(
            replace_password(b"bob:{PLAIN}old", "bob", "{X}new"),
            b"bob:{X}new"
        );
        assert_eq!(replace_password(b"bob:", "bob", "{X}new"), b"bob:{X}new");
    }
}
