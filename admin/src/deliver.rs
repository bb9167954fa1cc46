//! `inetkit deliver USER [FILE]`: delivers a message (FILE, or stdin) into USER's INBOX the
//! way smtp-submit does, and prints the new file's path. For sysadmins seeding mail and tests.

use std::fs::File;
use std::io::{Cursor, Read};

use anyhow::{bail, Context};

use crate::mail::{open_store, parse_options, require_user};

const HELP: &str =
    "usage: inetkit deliver [--users FILE] [--mail-root DIR] [--owner USER] USER [FILE]

Delivers FILE (or stdin) into USER's INBOX, creating the mailbox on first use, and prints the
new message file's path. USER must be in the users file (--users, default /etc/inetkit/users);
an empty message (nothing, or only white space) is refused. The message is stored as given
(LF or CRLF line ends). Run as root, the files it creates are given to the `inetkit` user (or
--owner USER), so the daemons can read them.";

/// How much leading white space is looked at before a message counts as not empty.
const EMPTY_CHECK_LIMIT: usize = 64 * 1024;

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
    let user = require_user(&options, user, "nothing delivered")?;
    let input: Box<dyn Read> = match file {
        Some(path) => Box::new(File::open(path).with_context(|| format!("opening {path}"))?),
        None => Box::new(std::io::stdin().lock()),
    };
    let mut message = refuse_empty(input)?;
    let store = open_store(&options)?;
    let delivered = store
        .deliver(&user, &mut message)
        .with_context(|| format!("delivering to {user}"))?;
    println!("{}", delivered.path.display());
    Ok(())
}

/// The message, unless it has nothing in it: no bytes, or only white space (`echo |`), which
/// no mail client could show as a message. Reads only up to the first other byte (holding at
/// most about [`EMPTY_CHECK_LIMIT`] bytes), then hands back the message whole.
fn refuse_empty(mut input: Box<dyn Read>) -> anyhow::Result<impl Read> {
    let mut head = Vec::new();
    let mut chunk = [0u8; 8192];
    loop {
        let read = match input.read(&mut chunk) {
            Ok(read) => read,
            Err(err) if err.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(err) => return Err(err).context("reading the message"),
        };
        let Some(got) = chunk.get(..read).filter(|got| !got.is_empty()) else {
            if head.is_empty() {
                bail!("the message is empty: nothing delivered");
            }
            bail!("the message is only white space: nothing delivered");
        };
        head.extend_from_slice(got);
        if !got.iter().all(u8::is_ascii_whitespace) || head.len() >= EMPTY_CHECK_LIMIT {
            return Ok(Cursor::new(head).chain(input));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(bytes: &'static [u8]) -> anyhow::Result<Vec<u8>> {
        let mut out = Vec::new();
        refuse_empty(Box::new(bytes))?.read_to_end(&mut out)?;
        Ok(out)
    }

    #[test]
    fn empty_and_blank_messages_are_refused() {
        let err = check(b"").unwrap_err().to_string();
        assert!(err.contains("the message is empty"), "{err}");
        let err = check(b"\r\n\n \t\n").unwrap_err().to_string();
        assert!(err.contains("only white space"), "{err}");
    }

    #[test]
    fn a_message_comes_back_whole() {
        assert_eq!(
            check(b"\nSubject: x\n\nbody\n").unwrap(),
            b"\nSubject: x\n\nbody\n"
        );
        let big: &'static [u8] = Box::leak(vec![b'x'; 100_000].into_boxed_slice());
        assert_eq!(check(big).unwrap().len(), 100_000);
    }
}
