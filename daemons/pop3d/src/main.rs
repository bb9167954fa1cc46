//! inetkit-pop3d: everything is in the library (`lib.rs`).

use std::process::ExitCode;

fn main() -> ExitCode {
    inetkit_pop3d::run()
}
