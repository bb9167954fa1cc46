//! `inetkit queue list|flush|delete`: the messages inetkit-smtp-submit holds in its spool.

use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use anyhow::{bail, Context};

use inetkit_spool::{now, valid_id, Entry, Recipient, Spool};

pub(crate) const DEFAULT_SPOOL: &str = "/var/lib/inetkit/spool";

const HELP: &str = "usage: inetkit queue [--spool DIR] COMMAND

  list               every message waiting in the spool, with its recipients' state
  flush [ID...]      retry these (default: all) messages now, not at their next retry time
  delete ID...       remove messages from the spool without delivering them (no bounce)

The spool is inetkit-smtp-submit's [smtp] spool (default /var/lib/inetkit/spool). A running
daemon picks up a flush within a few seconds.";

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    let mut spool_dir = PathBuf::from(DEFAULT_SPOOL);
    let mut rest = Vec::new();
    let mut args = args.iter();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "-h" | "--help" => {
                println!("{HELP}");
                return Ok(());
            }
            "--spool" => spool_dir = args.next().context("--spool needs a directory")?.into(),
            _ => rest.push(arg.as_str()),
        }
    }
    let spool = Spool::new(&spool_dir);
    match rest.as_slice() {
        ["list"] => list(&spool),
        ["flush", ids @ ..] => {
            let ids = if ids.is_empty() {
                spool
                    .ids()
                    .with_context(|| format!("reading {}", spool_dir.display()))?
            } else {
                checked(ids)?
            };
            for id in ids {
                spool
                    .record(&id, "flush")
                    .with_context(|| format!("message {id}"))?;
                give_back(&spool, &id);
                println!("{id}: will be retried now");
            }
            Ok(())
        }
        ["delete", ids @ ..] if !ids.is_empty() => {
            for id in checked(ids)? {
                if !spool.dir().join(format!("{id}.env")).exists() {
                    bail!("message {id}: not in the spool");
                }
                spool
                    .remove(&id, true)
                    .with_context(|| format!("removing {id}"))?;
                println!("{id}: deleted");
            }
            Ok(())
        }
        _ => bail!("wrong arguments\n{HELP}"),
    }
}

fn checked(ids: &[&str]) -> anyhow::Result<Vec<String>> {
    ids.iter()
        .map(|id| {
            if valid_id(id) {
                Ok((*id).to_owned())
            } else {
                bail!("{id:?} is not a queue id")
            }
        })
        .collect()
}

/// Run as root, `record` may have created the delivery log: hand it to the spool's owner,
/// or the daemon could no longer append to it.
fn give_back(spool: &Spool, id: &str) {
    let Ok(env) = std::fs::metadata(spool.dir().join(format!("{id}.env"))) else {
        return;
    };
    let state = spool.dir().join(format!("{id}.state"));
    if let Ok(meta) = std::fs::metadata(&state) {
        if meta.uid() != env.uid() || meta.gid() != env.gid() {
            let _ = std::os::unix::fs::chown(&state, Some(env.uid()), Some(env.gid()));
        }
    }
}

fn list(spool: &Spool) -> anyhow::Result<()> {
    let ids = spool
        .ids()
        .with_context(|| format!("reading {}", spool.dir().display()))?;
    if ids.is_empty() {
        println!("The queue is empty.");
        return Ok(());
    }
    for id in ids {
        match spool.load(&id) {
            Ok(entry) => print_entry(&entry),
            // Delivered (and removed) between the listing and now.
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => {}
            Err(err) => println!("{id}: unreadable: {err}"),
        }
    }
    Ok(())
}

fn print_entry(entry: &Entry) {
    let e = &entry.envelope;
    let age = now().saturating_sub(e.received);
    println!(
        "{}  {} bytes  {} ago  from <{}> (user {})",
        entry.id,
        entry.size,
        duration(age),
        e.from,
        e.user
    );
    for recipient in &e.recipients {
        let (address, status) = match recipient {
            Recipient::Local { address, user } => {
                let status = if entry.state.delivered.contains(user) {
                    "delivered".to_owned()
                } else if let Some((_, why)) = entry.state.failed.iter().find(|(a, _)| a == user) {
                    format!("failed: {why}")
                } else {
                    format!("pending (local, {user})")
                };
                (address, status)
            }
            Recipient::Remote { address } => {
                let status = if entry.state.relayed.contains(address) {
                    "relayed".to_owned()
                } else if let Some((_, why)) = entry.state.failed.iter().find(|(a, _)| a == address)
                {
                    format!("failed: {why}")
                } else {
                    "pending (smarthost)".to_owned()
                };
                (address, status)
            }
        };
        println!("    <{address}>  {status}");
    }
    if let Some(error) = &entry.state.last_error {
        let next = entry.state.next_attempt.saturating_sub(now());
        println!(
            "    {} attempts deferred; last: {error}; next in {}",
            entry.state.deferrals,
            duration(next)
        );
    }
}

fn duration(seconds: u64) -> String {
    match seconds {
        s if s < 120 => format!("{s}s"),
        s if s < 7200 => format!("{}m", s / 60),
        s if s < 172_800 => format!("{}h", s / 3600),
        s => format!("{}d", s / 86400),
    }
}
