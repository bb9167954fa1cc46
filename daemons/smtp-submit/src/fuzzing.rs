//! What the fuzz target `smtp_command` runs (see `inetkit_runtime::fuzzing`).

use inetkit_runtime::fuzzing::{block_on, take_byte};

use crate::command::{parse, split_address, Command};
use crate::data::{read_data_line, DataLine};
use crate::from_header::addresses;

/// Target `smtp_command`: [`parse`] on a command line, and [`split_address`] on the addresses
/// it finds. Keywords are case-insensitive; addresses hold no space or angle bracket; a
/// MAIL or RCPT command written back parses to itself; a split address joins back to itself.
pub fn smtp_command(line: &[u8]) {
    let parsed = parse(line);
    let swapped = inetkit_runtime::fuzzing::keyword_case_swapped(line, 0);
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

/// Target `smtp_data`: the lines of a message after DATA ([`read_data_line`], limit and read
/// buffer size from the first two bytes). Lines end only at CRLF, whatever the buffer size: a lone LF or CR stops the reading at
/// once (what SMTP smuggling needs is exactly a disagreement here), and no line returned
/// holds a CR or LF or is over the limit.
pub fn smtp_data(data: &[u8]) {
    let (max, data) = take_byte(data);
    let (buf_size, input) = take_byte(data);
    let max = usize::from(max) + 1;
    let buf_size = usize::from(buf_size % 64) + 1;

    let mut expected: Vec<(DataLine, Vec<u8>)> = Vec::new();
    let mut rest = input;
    while let Some(at) = rest.iter().position(|&b| b == b'\r' || b == b'\n') {
        let (line, after) = rest.split_at(at);
        match after {
            [b'\n', ..] => {
                expected.push((DataLine::BareLf, Vec::new()));
                break;
            }
            [b'\r', b'\n', tail @ ..] => {
                expected.push(if line.len() > max {
                    (DataLine::TooLong, Vec::new())
                } else {
                    (DataLine::Complete, line.to_vec())
                });
                rest = tail;
            }
            [b'\r', _, ..] => {
                expected.push((DataLine::BareCr, Vec::new()));
                break;
            }
            // A CR at the very end: the line may still end, when more comes.
            _ => break,
        }
    }

    let mut reader = tokio::io::BufReader::with_capacity(buf_size, input);
    let mut buf = Vec::new();
    let mut got = Vec::new();
    loop {
        let line = block_on(read_data_line(&mut reader, &mut buf, max)).expect("reading memory");
        match line {
            DataLine::Eof => break,
            DataLine::Complete => got.push((line, buf.clone())),
            DataLine::BareLf | DataLine::BareCr => {
                got.push((line, Vec::new()));
                break;
            }
            DataLine::TooLong => got.push((line, Vec::new())),
        }
    }
    assert_eq!(got, expected, "limit {max}, buffer {buf_size}");
}

/// Target `smtp_from`: the addresses of a `From:` field body, as the From: check reads them.
/// What it reads is at least one address and never an empty one: anything it cannot read
/// with certainty must be an error, which the check refuses.
pub fn smtp_from(value: &[u8]) {
    if let Ok(found) = addresses(value) {
        assert!(!found.is_empty(), "no address, yet no error");
        assert!(
            found.iter().all(|a| !a.is_empty()),
            "an empty address in {found:?}"
        );
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

    #[test]
    fn smtp_from_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "smtp_from", smtp_from) > 0);
    }

    #[test]
    fn smtp_data_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "smtp_data", smtp_data) > 0);
    }
}
