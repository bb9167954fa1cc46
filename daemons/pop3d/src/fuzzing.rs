//! What the fuzz target `pop3_command` runs (see `inetkit_runtime::fuzzing`).

use crate::command::{parse, Command};

/// Target `pop3_command`: [`parse`] on a command line. Keywords are case-insensitive, message
/// numbers are positive, and a parsed command written back as a line parses to itself.
pub fn pop3_command(line: &[u8]) {
    let parsed = parse(line);
    let swapped = inetkit_runtime::fuzzing::keyword_case_swapped(line, 0);
    assert_eq!(parse(&swapped), parsed);

    let Ok(command) = parsed else {
        return;
    };
    let again = match &command {
        Command::User(name) => {
            assert!(!name.is_empty() && !name.contains(' '));
            format!("USER {name}")
        }
        Command::Pass(password) => {
            assert!(!password.is_empty());
            let mut line = b"PASS ".to_vec();
            line.extend_from_slice(password);
            assert_eq!(parse(&line), Ok(command));
            return;
        }
        Command::List(n) | Command::Uidl(n) => {
            assert_ne!(*n, Some(0));
            let verb = if matches!(command, Command::List(_)) {
                "LIST"
            } else {
                "UIDL"
            };
            n.map_or(verb.to_owned(), |n| format!("{verb} {n}"))
        }
        Command::Retr(n) => format!("RETR {n}"),
        Command::Dele(n) => format!("DELE {n}"),
        Command::Top(n, lines) => format!("TOP {n} {lines}"),
        Command::Auth {
            mechanism: Some(mechanism),
            initial,
        } => {
            assert!(!mechanism.contains(' ') && mechanism.to_ascii_uppercase() == *mechanism);
            match initial {
                Some(initial) => format!("AUTH {mechanism} {initial}"),
                None => format!("AUTH {mechanism}"),
            }
        }
        _ => return,
    };
    if let Command::Retr(n) | Command::Dele(n) | Command::Top(n, _) = command {
        assert_ne!(n, 0);
    }
    assert_eq!(parse(again.as_bytes()), Ok(command), "{again}");
}

#[cfg(test)]
mod tests {
    use super::*;
    use inetkit_runtime::fuzzing::replay;

    #[test]
    fn pop3_command_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "pop3_command", pop3_command) > 0);
    }
}
