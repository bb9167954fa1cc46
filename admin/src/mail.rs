//! `inetkit mail list|flag|delete|folders`: look into and change the mail store by hand, as
//! the daemons would (same locks, same uid lists). Also what the store's tests drive.

use anyhow::{bail, Context};
use inetkit_maildir::{FlagChange, Flags, Folder, MessageInfo, Owner, Store, DEFAULT_MAIL_ROOT};
use inetkit_runtime::config::{LogConfig, LogLevel};
use nix::unistd::{geteuid, User};

const HELP: &str = "usage: inetkit mail COMMAND [--mail-root DIR] [--folder NAME]

  list USER                 the folder's messages: uid, size, size with CRLF, flags, name
                            (after a first line `UIDVALIDITY n UIDNEXT n`)
  flag USER UID FLAGS       set flags (Maildir letters: D F P R S T, a-z): FLAGS, =FLAGS,
                            +FLAGS (add) or -FLAGS (remove); `=` clears them
  delete USER UID...        delete messages
  folders USER              the user's folders

--folder defaults to INBOX. Run as root, what the store creates is given to the `inetkit`
user (or --owner USER).";

/// The options the mail commands share, and the rest of the arguments.
pub(crate) struct Options {
    pub mail_root: String,
    pub folder: String,
    pub owner: Option<String>,
    pub args: Vec<String>,
}

pub(crate) fn parse_options(args: &[String]) -> anyhow::Result<Options> {
    let mut options = Options {
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
    let store = open_store(&options)?;
    let positional: Vec<&str> = options.args.iter().map(String::as_str).collect();
    match (args[0].as_str(), positional.as_slice()) {
        ("list", [user]) => {
            let folder = store.mailbox(user)?.folder(&options.folder)?;
            let snapshot = folder.snapshot()?;
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
                    m.uid, m.size, m.vsize, flags, m.base
                ));
            }
            print!("{out}");
        }
        ("flag", [user, uid, flags]) => {
            let folder = store.mailbox(user)?.folder(&options.folder)?;
            let change = match flags.split_at_checked(1) {
                Some(("+", rest)) => FlagChange::Add(Flags::from_maildir(rest)),
                Some(("-", rest)) => FlagChange::Remove(Flags::from_maildir(rest)),
                Some(("=", rest)) => FlagChange::Set(Flags::from_maildir(rest)),
                _ => FlagChange::Set(Flags::from_maildir(flags)),
            };
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
