//! `inetkit deliver USER [FILE]`: delivers a message (FILE, or stdin) into USER's INBOX the
//! way smtp-submit does, and prints the new file's path. For sysadmins seeding mail and tests.

use std::fs::File;
use std::io::Read;

use anyhow::{bail, Context};

use crate::mail::{open_store, parse_options};

const HELP: &str = "usage: inetkit deliver [--mail-root DIR] [--owner USER] USER [FILE]

Delivers FILE (or stdin) into USER's INBOX, creating the mailbox on first use, and prints the
new message file's path. The message is stored as given (LF or CRLF line ends). Run as root,
the files it creates are given to the `inetkit` user (or --owner USER), so the daemons can
read them.";

pub(crate) fn run(args: &[String]) -> anyhow::Result<()> {
    if args.iter().any(|a| a == "-h" || a == "--help") {
        println!("{HELP}");
        return Ok(());
    }
    let options = parse_options(args)?;
    let (user, file) = match options.args.as_slice() {
        [user] => (user, None),
        [user, file] => (user, Some(file)),
        _ => bail!("wrong arguments\n{HELP}"),
    };
    let mut input: Box<dyn Read> = match file {
        Some(path) => Box::new(File::open(path).with_context(|| format!("opening {path}"))?),
        None => Box::new(std::io::stdin().lock()),
    };
    let store = open_store(&options)?;
    let delivered = store
        .deliver(user, &mut input)
        .with_context(|| format!("delivering to {user}"))?;
    println!("{}", delivered.path.display());
    Ok(())
}
