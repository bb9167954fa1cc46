//! inetkit-smtp-submit: everything is in the library (`lib.rs`).

use std::process::ExitCode;

fn main() -> ExitCode {
    inetkit_smtp_submit::run()
}
