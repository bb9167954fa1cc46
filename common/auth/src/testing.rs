//! Users for in-process session tests (feature `testing`): alice and bob with one password,
//! and an authenticator over them whose failures cost no delay.

use std::path::Path;
use std::time::Duration;

use crate::guard::Guard;
use crate::{AuthConfig, Authenticator};

/// Both users' password.
pub const PASSWORD: &str = "correct horse";

/// alice's SASL PLAIN response: `\0alice\0correct horse` in base64.
pub const ALICE_PLAIN: &str = "AGFsaWNlAGNvcnJlY3QgaG9yc2U=";

/// Writes a users file with alice and bob into `dir` and returns an authenticator over it,
/// with the default plaintext policy (loopback only), no delay after a failure, and a guard
/// of its own (never the system's shared guard state file).
pub fn authenticator(dir: &Path) -> Authenticator {
    let users_file = dir.join("users");
    let text = format!("alice:{{PLAIN}}{PASSWORD}::::::\nbob:{{PLAIN}}{PASSWORD}::::::\n");
    if let Err(err) = std::fs::write(&users_file, text) {
        panic!("{}: {err}", users_file.display());
    }
    let config = AuthConfig {
        failure_delay: Duration::ZERO,
        max_failure_delay: Duration::ZERO,
        ..AuthConfig::default()
    };
    Authenticator::with_guard(users_file, Guard::new(config.guard_policy()))
        .with_plaintext(config.plaintext)
}
