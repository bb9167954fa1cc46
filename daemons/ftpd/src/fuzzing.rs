//! What the fuzz target `ftp_command` runs (see `inetkit_runtime::fuzzing`): a control
//! connection's command line, and its argument as a path inside the user's root.

use std::path::Component;
use std::sync::OnceLock;

use crate::command::{parse, Command};
use crate::fs::UserFs;

/// A user's root holding `a/b`, with the working directory at `/`, `/a` and `/a/b`.
fn user_fs() -> &'static [UserFs; 3] {
    static FS: OnceLock<[UserFs; 3]> = OnceLock::new();
    FS.get_or_init(|| {
        let root = std::env::temp_dir().join("inetkit-ftp-fuzz");
        std::fs::create_dir_all(root.join("a/b")).expect("a temporary root");
        let runtime = tokio::runtime::Builder::new_current_thread()
            .build()
            .expect("a runtime");
        runtime.block_on(async {
            let top = UserFs::open(root, false, false).await.expect("the root");
            let mut a = top.clone();
            a.change_dir("a").await.expect("cd a");
            let mut b = a.clone();
            b.change_dir("b").await.expect("cd b");
            [top, a, b]
        })
    })
}

/// Target `ftp_command`: [`parse`] on a command line, and `resolve` on the line's argument
/// from three working directories. Verbs are case-insensitive; PORT, EPRT and REST arguments
/// written back parse to the same command; a resolved path is never outside the root (no
/// `..`, `.` or empty component, at most 256 deep, relative for cap-std) and resolves to
/// itself when given back as an absolute path.
pub fn ftp_command(line: &[u8]) {
    let parsed = parse(line);
    if let Ok(command) = &parsed {
        let again = match command {
            Command::Port(addr) => {
                let std::net::IpAddr::V4(ip) = addr.ip() else {
                    panic!("PORT gave {addr}");
                };
                let [a, b, c, d] = ip.octets();
                let port = addr.port();
                Some(format!(
                    "PORT {a},{b},{c},{d},{},{}",
                    port >> 8,
                    port & 0xff
                ))
            }
            Command::Eprt(addr) => {
                let family = if addr.is_ipv4() { 1 } else { 2 };
                Some(format!("EPRT |{family}|{}|{}|", addr.ip(), addr.port()))
            }
            Command::Rest(offset) => Some(format!("REST {offset}")),
            _ => None,
        };
        if let Some(text) = again {
            assert_eq!(parse(text.as_bytes()).as_ref(), Ok(command), "{text}");
        }
    }
    // The verb in the other case: the same command.
    let start = line
        .iter()
        .position(u8::is_ascii_alphabetic)
        .unwrap_or(line.len());
    let swapped = inetkit_runtime::fuzzing::keyword_case_swapped(line, start);
    assert_eq!(parse(&swapped), parsed);

    let Ok(text) = std::str::from_utf8(line) else {
        return;
    };
    let arg = text.split_once(' ').map_or(text, |(_, arg)| arg);
    for fs in user_fs() {
        let Ok(path) = fs.resolve(arg) else {
            continue;
        };
        let shown = path.display();
        assert!(shown == "/" || (shown.starts_with('/') && !shown.contains("//")));
        let rel = path.rel();
        assert!(
            rel.components()
                .all(|c| matches!(c, Component::Normal(_) | Component::CurDir)),
            "{arg:?} resolves to {rel:?}"
        );
        assert!(rel.components().count() <= 256);
        let again = fs
            .resolve(&shown)
            .unwrap_or_else(|e| panic!("{shown:?}: {e}"));
        assert_eq!(again, path);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inetkit_runtime::fuzzing::replay;

    #[test]
    fn ftp_command_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "ftp_command", ftp_command) > 0);
    }
}
