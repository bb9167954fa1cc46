//! What the fuzz target `smtp_command` runs (see `inetkit_runtime::fuzzing`).

use crate::command::{parse, split_address, Command};

/// Target `smtp_command`: [`parse`] on a command line, and [`split_address`] on the addresses
/// it finds. Keywords are case-insensitive; addresses hold no space or angle bracket; a
/// MAIL or RCPT command written back parses to itself; a split address joins back to itself.
pub fn smtp_command(line: &[u8]) {
    let parsed = parse(line);
    let keyword_end = line.iter().position(|&b| b == b' ').unwrap_or(line.len());
    let mut swapped = line.to_vec();
    for b in &mut swapped[..keyword_end] {
        if b.is_ascii_alphabetic() {
            *b ^= 0x20;
        }
    }
    assert_eq!(parse(&swapped), parsed);

    let Ok(command) = parsed else {
        return;
    };
    let (again, address) = match &command {
        Command::Mail(mail) => {
            let mut line = format!("MAIL FROM:<{}>", mail.address);
            if let Some(size) = mail.size {
                line.push_str(&format!(" SIZE={size}"));
            }
            if mail.utf8 {
                line.push_str(" SMTPUTF8");
            }
            (line, &mail.address)
        }
        Command::Rcpt(address) => (format!("RCPT TO:<{address}>"), address),
        _ => return,
    };
    assert!(
        !address.contains(|c: char| c.is_whitespace() || c == '<' || c == '>'),
        "{address:?}"
    );
    assert_eq!(parse(again.as_bytes()), Ok(command.clone()), "{again}");
    if let Some((local, domain)) = split_address(address) {
        assert!(!local.is_empty() && !domain.is_empty() && !domain.contains('@'));
        assert_eq!(format!("{local}@{domain}"), *address);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inetkit_runtime::fuzzing::replay;

    #[test]
    fn smtp_command_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "smtp_command", smtp_command) > 0);
    }
}
