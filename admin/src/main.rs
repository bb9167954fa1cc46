//! `inetkit`: the admin command for the suite's users file and mail store.

mod deliver;
mod mail;
mod queue;
mod user;

use std::process::ExitCode;

const USAGE: &str = "usage: inetkit COMMAND ...

  user add NAME [--home DIR]     add a user (asks for the password, or reads it from stdin)
  user passwd NAME               change a user's password
  user del NAME                  remove a user
  user list                      list the users
  deliver USER [FILE]            deliver a message (FILE or stdin) into USER's INBOX
  mail list|flag|delete|folders  look into and change a user's mail (`inetkit mail --help`)
  queue list|flush|delete        the smtp-submit spool (`inetkit queue --help`)

Options: --users FILE (default /etc/inetkit/users), --mail-root DIR (default /var/lib/inetkit/mail)";

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
