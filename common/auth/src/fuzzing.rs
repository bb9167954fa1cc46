//! What the fuzz targets `users_file`, `aliases` and `sasl` run (see
//! `inetkit_runtime::fuzzing`): the users file and aliases file parsers, mail addresses, and
//! the SASL PLAIN/LOGIN and HTTP Basic decoders on arbitrary bytes.

use inetkit_runtime::fuzzing::{block_on, take_byte};

use crate::address::{parse_address, MAX_ADDRESS_LEN};
use crate::aliases::{self, MAX_TARGETS};
use crate::sasl::{self, Challenger, Credentials, Sasl, SaslError, MAX_ENCODED_LEN};
use crate::users::{self, UsersFile};

/// Target `users_file`: [`UsersFile::parse`] on arbitrary bytes. Every user loaded has a valid
/// name and is found by it (the first line of a name wins), problems name existing lines in
/// order, and a loaded user written back with [`users::format_line`] parses to the same name,
/// home and password.
pub fn users_file(data: &[u8]) {
    let (file, problems) = UsersFile::parse(data);
    let lines: Vec<&[u8]> = data.split(|&b| b == b'\n').collect();

    let mut seen = std::collections::HashSet::new();
    for entry in file.iter() {
        let name = &entry.user.name;
        assert_eq!(users::check_name(name), Ok(()), "{name:?} loaded");
        assert!(seen.insert(name.clone()), "{name:?} loaded twice");
        assert!(file.get(name).is_some_and(|e| e == entry));
        if let Some(home) = &entry.user.home {
            assert!(home.is_absolute());
        }
    }
    assert_eq!(file.len(), seen.len());

    let mut last = 0;
    for problem in &problems {
        assert!(problem.line >= last && problem.line >= 1 && problem.line <= lines.len());
        last = problem.line;
    }

    for entry in file.iter() {
        let Some(password) = &entry.password else {
            continue;
        };
        let line = users::format_line(
            &entry.user.name,
            &password.to_field(),
            entry.user.home.as_deref(),
        );
        let Ok(Some((again, None))) = users::parse_line(&line) else {
            panic!("{:?} does not parse back", entry.user.name);
        };
        assert_eq!(again.user.name, entry.user.name);
        assert_eq!(again.user.home, entry.user.home);
        assert_eq!(again.password.as_ref(), Some(password));
    }
}

/// Target `aliases`: [`aliases::parse`] on arbitrary bytes, and [`parse_address`] on each
/// line. Every alias kept has a valid lower-case name and between one and [`MAX_TARGETS`]
/// targets, none a command, file or include, each a valid name or address; problems name
/// existing lines in order; the aliases written back as a file parse to the same aliases
/// without a problem. An address that parses is lower case, has a non-empty local part and
/// parses again to itself without its detail.
pub fn aliases(data: &[u8]) {
    let (parsed, problems) = aliases::parse(data);
    let lines = data.split(|&b| b == b'\n').count();
    let mut last = 0;
    for problem in &problems {
        assert!(problem.line >= last && problem.line >= 1 && problem.line <= lines);
        last = problem.line;
    }

    let lower = data.to_ascii_lowercase();
    let mut rendered = String::new();
    for (name, targets) in parsed.iter() {
        assert_eq!(users::check_name(name), Ok(()), "{name:?} kept");
        assert!(
            lower.windows(name.len()).any(|w| w == name.as_bytes()),
            "{name:?} is not in the file"
        );
        assert!(!targets.is_empty() && targets.len() <= MAX_TARGETS);
        for target in targets {
            assert!(!target.is_empty() && !target.starts_with(['|', '/']));
            assert!(!target.contains(',') && target.trim() == target);
            if target.contains('@') {
                assert!(parse_address(target).is_ok(), "{target:?} kept");
            } else {
                let name = target.to_ascii_lowercase();
                assert_eq!(users::check_name(&name), Ok(()), "{target:?} kept");
            }
        }
        rendered.push_str(&format!("{name}: {}\n", targets.join(", ")));
    }
    let (again, again_problems) = aliases::parse(rendered.as_bytes());
    assert!(again_problems.is_empty(), "{again_problems:?}");
    assert_eq!(again, parsed);

    for text in data
        .split(|&b| b == b'\n')
        .filter_map(|l| std::str::from_utf8(l).ok())
    {
        let Ok(address) = parse_address(text) else {
            continue;
        };
        assert!(text.len() <= MAX_ADDRESS_LEN && !address.local.is_empty());
        assert_eq!(address.local, address.local.to_ascii_lowercase());
        assert_eq!(address.domain, address.domain.to_ascii_lowercase());
        let plain = address.without_detail();
        let again = parse_address(&plain).expect("an address without its detail parses");
        assert_eq!(
            (again.local, again.domain, again.detail),
            (address.local, address.domain, None)
        );
    }
}

/// Target `sasl`: the SASL and HTTP Basic decoders on arbitrary bytes, and a whole PLAIN or
/// LOGIN exchange (mechanism and initial response from the first byte, the client's answers
/// the lines of the rest). Whatever comes out agrees with the input: names are non-empty
/// UTF-8 without NUL (and without `:` for HTTP Basic), PLAIN never lets one user act as
/// another, over-long answers are refused before decoding, and credentials encoded again
/// decode to themselves.
pub fn sasl(data: &[u8]) {
    let (selector, rest) = take_byte(data);

    let trimmed = rest.trim_ascii();
    match sasl::decode_response(rest) {
        Ok(decoded) => {
            assert!(trimmed.len() <= MAX_ENCODED_LEN);
            assert!(decoded.len() <= trimmed.len());
            if !decoded.is_empty() {
                assert_eq!(
                    sasl::decode_response(sasl::encode(&decoded).as_bytes()),
                    Ok(decoded)
                );
            }
        }
        Err(SaslError::TooLong) => assert!(trimmed.len() > MAX_ENCODED_LEN),
        Err(SaslError::Cancelled) => assert_eq!(trimmed, b"*"),
        Err(_) => {}
    }

    if let Ok(creds) = sasl::decode_plain(rest) {
        check_name(&creds);
        assert!(!creds.password.is_empty() && !creds.password.contains(&0));
        let again = [b"\0", creds.name.as_bytes(), b"\0", &creds.password[..]].concat();
        assert_eq!(
            sasl::decode_plain(sasl::encode(&again).as_bytes()),
            Ok(creds)
        );
    }
    // A PLAIN message made of the raw input: an authorization identity other than the login
    // name is always refused.
    if let Ok(creds) = sasl::parse_plain(rest) {
        let authzid = rest.split(|&b| b == 0).next().unwrap_or_default();
        assert!(authzid.is_empty() || authzid == creds.name.as_bytes());
    }

    if let Ok(name) = sasl::decode_login_name(rest) {
        assert!(!name.is_empty() && !name.contains('\0'));
    }

    if let Ok(value) = std::str::from_utf8(rest) {
        if let Ok(creds) = sasl::decode_http_basic(value) {
            check_name(&creds);
            assert!(!creds.name.contains(':') && !creds.name.chars().any(char::is_control));
            let token = sasl::encode(&[creds.name.as_bytes(), b":", &creds.password].concat());
            assert_eq!(
                sasl::decode_http_basic(&format!("Basic {token}")),
                Ok(creds)
            );
        }
    }

    exchange(selector, rest);
}

fn check_name(creds: &Credentials) {
    assert!(!creds.name.is_empty() && !creds.name.contains('\0'));
}

/// The client's side of an exchange: its answers, one per challenge, then gone.
struct Script<'a> {
    answers: std::slice::Split<'a, u8, fn(&u8) -> bool>,
    challenges: usize,
}

impl Challenger for Script<'_> {
    async fn challenge(&mut self, _challenge: &str) -> Option<String> {
        self.challenges += 1;
        self.answers
            .next()
            .map(|line| String::from_utf8_lossy(line).into_owned())
    }
}

fn exchange(selector: u8, rest: &[u8]) {
    let mechanism = match selector % 4 {
        0 => "PLAIN",
        1 => "login",
        2 => "LoGiN",
        _ => "CRAM-MD5",
    };
    let is_newline: fn(&u8) -> bool = |&b| b == b'\n';
    let mut answers = rest.split(is_newline);
    let initial = (selector & 4 != 0)
        .then(|| answers.next())
        .flatten()
        .map(|line| String::from_utf8_lossy(line).into_owned());
    let had_initial = initial.is_some();
    let mut script = Script {
        answers,
        challenges: 0,
    };
    let outcome = block_on(sasl::exchange(&mut script, mechanism, initial));
    let plain = mechanism == "PLAIN";
    // PLAIN asks at most once (never with an initial response), LOGIN at most twice.
    let most = match (mechanism, had_initial) {
        ("CRAM-MD5", _) => 0,
        ("PLAIN", true) => 0,
        ("PLAIN", false) => 1,
        (_, true) => 1,
        (_, false) => 2,
    };
    assert!(
        script.challenges <= most,
        "{mechanism}: {} challenges",
        script.challenges
    );
    match outcome {
        Sasl::Credentials(creds) => {
            check_name(&creds);
            if plain {
                assert!(!creds.password.contains(&0));
            }
        }
        Sasl::Unsupported => assert_eq!(mechanism, "CRAM-MD5"),
        Sasl::Gone => assert!(script.challenges >= 1),
        Sasl::Cancelled | Sasl::Malformed => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use inetkit_runtime::fuzzing::replay;

    #[test]
    fn users_file_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "users_file", users_file) > 0);
    }

    #[test]
    fn aliases_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "aliases", aliases) > 0);
    }

    #[test]
    fn sasl_corpus() {
        assert!(replay(env!("CARGO_MANIFEST_DIR"), "sasl", sasl) > 0);
    }
}
