//! `inetkit`: the admin command for the suite's users file and mail store.

mod deliver;
mod directory;
mod mail;
mod queue;
mod user;

use std::process::ExitCode;

const USAGE: &str = "usage: inetkit COMMAND ...

Users, in the users file every daemon reads:
  user add NAME [--home DIR]      add a user (asks for the password, or reads it from stdin)
  user passwd NAME                change a user's password
  user del NAME [--purge]         remove a user; with --purge, their mailbox too
  user list                       list the users: name, password scheme, home
  user check NAME [--config FILE] check a password from stdin (exit status 0 if it matches);
                                  with --config, where that daemon's [auth] finds users

Mail, in the users' Maildirs (USER must be in the users file):
  deliver USER [FILE]             deliver a message (FILE or stdin) into USER's INBOX
  mail list USER                  a folder's messages: uid, sizes, flags, file name
  mail flag USER UID FLAGS        set (=FLAGS), add (+FLAGS) or remove (-FLAGS) Maildir flags
  mail delete USER UID...         delete messages
  mail folders USER               the user's folders

The queue, inetkit-smtp-submit's spool:
  queue list                      the waiting messages and each recipient's state
  queue flush [ID...]             retry these (default: all) now
  queue delete ID...              remove messages without delivering them (no bounce)

Options, where they apply:
  --users FILE       the users file (default /etc/inetkit/users)
  --mail-root DIR    the mailboxes (default /var/lib/inetkit/mail)
  --folder NAME      the folder of mail list, flag and delete (default INBOX)
  --owner USER       run as root, give what deliver and mail create to USER (default inetkit)
  --spool DIR        the spool of queue (default /var/lib/inetkit/spool)
  --home DIR         the home field of user add (FTP root; empty: the daemon's default)
  --purge            user del: also remove the mailbox
  --config FILE      user check: a daemon's config, whose [auth] says where users are
  -h, --help         this text; `inetkit COMMAND --help` for one command's
  -V, --version      the version

See inetkit(8).";

fn main() -> ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = match args.first().map(String::as_str) {
        Some("user") => user::run(&args[1..]),
        Some("deliver") => deliver::run(&args[1..]),
        Some("mail") => mail::run(&args[1..]),
        Some("queue") => queue::run(&args[1..]),
        Some("-h" | "--help" | "help") => {
            println!("{USAGE}");
            return ExitCode::SUCCESS;
        }
        Some("-V" | "--version") => {
            println!("inetkit {}", env!("CARGO_PKG_VERSION"));
            return ExitCode::SUCCESS;
        }
        _ => {
            eprintln!("{USAGE}");
            return ExitCode::from(2);
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(err) => {
            eprintln!("inetkit: {err:#}");
            ExitCode::FAILURE
        }
    }
}
