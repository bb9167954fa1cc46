//! inetkit-imapd: everything is in the library (`lib.rs`).

use std::process::ExitCode;

fn main() -> ExitCode {
    inetkit_imapd::run()
}
