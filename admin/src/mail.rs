//! `inetkit mail list|flag|delete|folders`: look into and change the mail store by hand, as
//! the daemons would (same locks, same uid lists). Also what the store's tests drive.

use std::path::Path;

use anyhow::{bail, Context};
use inetkit_auth::users::{self, UsersFile};
use inetkit_auth::DEFAULT_USERS_FILE;
use inetkit_maildir::{FlagChange, Flags, Folder, MessageInfo, Owner, Store, DEFAULT_MAIL_ROOT};
use inetkit_runtime::config::{LogConfig, LogLevel};
use nix::unistd::{geteuid, User};

const HELP: &str = "usage: inetkit mail COMMAND [--users FILE] [--mail-root DIR] [--folder NAME]
                    [--owner USER]

  list USER                 the folder's messages: uid, size, size with CRLF, flags, name
                            (after a first line `UIDVALIDITY n UIDNEXT n`)
  flag USER UID FLAGS       set flags: FLAGS or =FLAGS (just these; `=` alone clears them),
                            +FLAGS (add) or -FLAGS (remove), as Maildir letters: D (draft),
                            F (flagged), P (passed), R (replied), S (seen), T (trashed), and
                            a-z (the folder's IMAP keywords)
  delete USER UID...        delete messages
  folders USER              the user's folders

USER must be in the users file (--users, default /etc/inetkit/users); a mailbox left behind
by a removed user can still be looked into, but none is ever created for a stranger.
--mail-root defaults to /var/lib/inetkit/mail, --folder to INBOX. Run as root, what the store
creates is given to the `inetkit` user (or --owner USER).";

/// The Maildir flags a message may be given by hand: the six the Maildir spec defines (the
/// keyword letters a-z come on top).
const MAILDIR_FLAGS: &str = "DFPRST";

/// The options the mail commands share, and the rest of the arguments.
pub(crate) struct Options {
    pub users: String,
    pub mail_root: String,
    pub folder: String,
    pub owner: Option<String>,
    pub args: Vec<String>,
}

pub(crate) fn parse_options(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options {
        users: DEFAULT_USERS_FILE.to_owned(),
        mail_root: DEFAULT_MAIL_ROOT.to_owned(),
        folder: "INBOX".to_owned(),
        owner: None,
        args: Vec::new(),
    };
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        let (name, inline) = match arg.split_once('=') {
            Some((name, value)) if name.starts_with("--") => (name, Some(value.to_owned())),
            _ => (arg.as_str(), None),
        };
        let slot = match name {
            "--users" => &mut options.users,
            "--mail-root" => &mut options.mail_root,
            "--folder" => &mut options.folder,
            "--owner" => options.owner.insert(String::new()),
            "--" => {
                options.args.extend(args.by_ref().cloned());
                break;
            }
            _ if name.starts_with("--") => bail!("unknown option {name}"),
            _ => {
                options.args.push(arg.clone());
                continue;
            }
        };
        *slot = match inline {
            Some(value) => value,
            None => args
                .next()
                .with_context(|| format!("{name} needs a value"))?
                .clone(),
        };
    }
    Ok(options)
}

/// The store, set to give what it creates to the daemons' user when we run as root.
pub(crate) fn open_store(options: &Options) -> anyhow::Result<Store> {
    // The store logs what it repairs (a lost uid list, stale tmp/ files): show the warnings.
    inetkit_runtime::log::init(&LogConfig {
        level: LogLevel::Warn,
    });
    let owner = match &options.owner {
        Some(name) => Some(lookup_owner(name)?.with_context(|| format!("no user {name:?}"))?),
        None if geteuid().is_root() => {
            let owner = lookup_owner("inetkit")?;
            if owner.is_none() {
                eprintln!("inetkit: no `inetkit` user: new mail files stay root's");
            }
            owner
        }
        None => None,
    };
    Ok(Store::new(&options.mail_root).with_owner(owner))
}

/// Whether `name` is a user of the users file `path`, as the daemons would load it.
/// The user `name` stands for, as the users file spells it (found as a login finds it: in
/// any case, and alice@localhost or @ the host's name for alice). Refuses a name that no
/// users file could hold (so it never becomes a directory) and a user the file does not
/// have; `what` says what was refused.
pub(crate) fn require_user(options: &Options, name: &str, what: &str) -> anyhow::Result<String> {
    let path = &options.users;
    let (file, _problems) = UsersFile::load(Path::new(path))
        .with_context(|| format!("reading the users file {path}"))?;
    if let Some(entry) = file.find(name, &inetkit_auth::default_local_domains()) {
        return Ok(entry.user.name.clone());
    }
    users::check_name(name).with_context(|| format!("invalid user name {name:?}"))?;
    bail!("no user {name} in {path}: {what}; add the user first with `inetkit user add {name}`")
}

fn lookup_owner(name: &str) -> anyhow::Result<Option<Owner>> {
    let user = User::from_name(name).with_context(|| format!("looking up user {name:?}"))?;
    Ok(user.map(|u| Owner {
        uid: u.uid.as_raw(),
        gid: u.gid.as_raw(),
    }))
}

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    if args.is_empty() || args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{HELP}");
        return Ok(());
    }
    let options = parse_options(&args[1..])?;
    let mut positional: Vec<String> = options.args.clone();
    let names_a_user = matches!(args[0].as_str(), "list" | "flag" | "delete" | "folders");
    if let Some(user) = positional.first_mut().filter(|_| names_a_user) {
        // Reading a mailbox creates it: only for a user (named as the users file spells it),
        // or where one is already (left by a user since removed, or made by another program).
        let exists = Path::new(&options.mail_root).join(&*user).is_dir();
        if !exists || users::check_name(user).is_err() {
            *user = require_user(&options, user, "no mailbox made")?;
        }
    }
    let positional: Vec<&str> = positional.iter().map(String::as_str).collect();
    let store = open_store(&options)?;
    match (args[0].as_str(), positional.as_slice()) {
        ("list", [user]) => {
            let folder = store.mailbox(user)?.folder(&options.folder)?;
            let mut snapshot = folder.snapshot()?;
            folder.measure(&mut snapshot.messages)?;
            let mut out = format!(
                "UIDVALIDITY {} UIDNEXT {}\n",
                snapshot.uid_validity, snapshot.uid_next
            );
            for m in &snapshot.messages {
                let flags = if m.flags.is_empty() {
                    "-".to_owned()
                } else {
                    m.flags.to_string()
                };
                out.push_str(&format!(
                    "{} {} {} {} {}\n",
                    m.uid,
                    m.size,
                    m.vsize.unwrap_or(m.size),
                    flags,
                    m.base
                ));
            }
            print!("{out}");
        }
        ("flag", [user, uid, flags]) => {
            let change = flag_change(flags)?;
            let folder = store.mailbox(user)?.folder(&options.folder)?;
            if let FlagChange::Add(letters) | FlagChange::Set(letters) = change {
                warn_about_unnamed_keywords(&folder, letters);
            }
            let mut msg = find(&folder, &[uid])?.remove(0);
            folder.update_flags(&mut msg, change)?;
            println!("{} {}", msg.uid, msg.flags);
        }
        ("delete", [user, uids @ ..]) if !uids.is_empty() => {
            let folder = store.mailbox(user)?.folder(&options.folder)?;
            folder.delete(&find(&folder, uids)?)?;
        }
        ("folders", [user]) => {
            for name in store.mailbox(user)?.folders()? {
                println!("{name}");
            }
        }
        (command, _) => bail!("inetkit mail {command}: wrong arguments\n{HELP}"),
    }
    Ok(())
}

/// `FLAGS`, `=FLAGS`, `+FLAGS` or `-FLAGS` as a change. Only Maildir's flags and the keyword
/// letters may be set; any letter may be removed (so a stray one another program or an older
/// version wrote can be taken off). Anything else is refused rather than dropped in silence.
fn flag_change(text: &str) -> anyhow::Result<FlagChange> {
    let (sign, letters) = match text.split_at_checked(1) {
        Some((sign @ ("+" | "-" | "="), rest)) => (sign, rest),
        _ => ("=", text),
    };
    for c in letters.chars() {
        let allowed = match sign {
            "-" => c.is_ascii_alphabetic(),
            _ => MAILDIR_FLAGS.contains(c) || c.is_ascii_lowercase(),
        };
        if !allowed {
            bail!(
                "{c:?} is not a Maildir flag: the flags are D (draft), F (flagged), P (passed), \
                 R (replied), S (seen) and T (trashed), and a-z for the folder's keywords"
            );
        }
    }
    let flags = Flags::from_maildir(letters);
    Ok(match sign {
        "+" => FlagChange::Add(flags),
        "-" => FlagChange::Remove(flags),
        _ => FlagChange::Set(flags),
    })
}

/// Keyword letters mean something to IMAP clients only through the folder's keyword file
/// (written by inetkit-imapd, `<n> <name>` lines for the letter `a` + n): say when a letter
/// being set names no keyword there, as clients will not show it.
fn warn_about_unnamed_keywords(folder: &Folder, letters: Flags) {
    let named = std::fs::read_to_string(folder.path().join(KEYWORDS_FILE)).unwrap_or_default();
    let named: Vec<u8> = named
        .lines()
        .filter_map(|line| line.split_once(' ')?.0.parse().ok())
        .collect();
    for (n, letter) in (b'a'..=b'z').enumerate() {
        let n = u8::try_from(n).unwrap_or(u8::MAX);
        let set = Flags::keyword(n).is_some_and(|k| letters.contains(k));
        if set && !named.contains(&n) {
            eprintln!(
                "inetkit: keyword letter {} names no keyword in {} of {}: IMAP clients will not \
                 show it",
                char::from(letter),
                KEYWORDS_FILE,
                folder.name()
            );
        }
    }
}

/// The folder's keyword names (inetkit-imapd's, in the format of Dovecot's dovecot-keywords).
const KEYWORDS_FILE: &str = "inetkit-keywords";

/// The messages with these UIDs, from a fresh snapshot.
fn find(folder: &Folder, uids: &[&str]) -> anyhow::Result<Vec<MessageInfo>> {
    let snapshot = folder.snapshot()?;
    uids.iter()
        .map(|text| {
            let uid: u32 = text.parse().with_context(|| format!("bad UID {text:?}"))?;
            snapshot
                .messages
                .iter()
                .find(|m| m.uid == uid)
                .cloned()
                .with_context(|| format!("no message with UID {uid} in {}", folder.name()))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn letters(change: FlagChange) -> (char, String) {
        match change {
            FlagChange::Add(f) => ('+', f.to_string()),
            FlagChange::Remove(f) => ('-', f.to_string()),
            FlagChange::Set(f) => ('=', f.to_string()),
        }
    }

    #[test]
    fn maildir_flags_and_keywords_may_be_set() {
        assert_eq!(letters(flag_change("+SF").unwrap()), ('+', "FS".into()));
        assert_eq!(letters(flag_change("=").unwrap()), ('=', String::new()));
        assert_eq!(
            letters(flag_change("DPRTab").unwrap()),
            ('=', "DPRTab".into())
        );
        assert_eq!(letters(flag_change("-Z").unwrap()), ('-', "Z".into()));
    }

    #[test]
    fn other_letters_and_characters_are_refused() {
        for bad in ["+Z", "Z", "=SZ", "+S1", "-S!", "+\\Seen", "+é"] {
            let err = flag_change(bad).map(letters).unwrap_err().to_string();
            assert!(err.contains("is not a Maildir flag"), "{bad}: {err}");
        }
    }
}
