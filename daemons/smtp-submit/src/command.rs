//! SMTP command lines (RFC 5321 §4.1, RFC 4954 AUTH, RFC 1870 SIZE, RFC 6152 8BITMIME,
//! RFC 6531 SMTPUTF8) parsed into [`Command`]. Pure: bytes in, a command or a reason out.

/// One client command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Ehlo(String),
    Helo(String),
    StartTls,
    Auth {
        mechanism: String,
        initial: Option<String>,
    },
    Mail(MailFrom),
    Rcpt(String),
    Data,
    Rset,
    Noop,
    Vrfy,
    Expn,
    Quit,
    Help,
}

/// `MAIL FROM:<address> [SIZE=n] [BODY=7BIT|8BITMIME] [SMTPUTF8] [AUTH=…]`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct MailFrom {
    /// The reverse path; empty for the null sender `<>`.
    pub address: String,
    /// The client's size declaration; `u64::MAX` when it does not fit (still "too big").
    pub size: Option<u64>,
    pub utf8: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParseError {
    Unknown,
    /// Known command, bad arguments: the enhanced code and text say what was expected.
    Syntax(&'static str),
    /// A parameter we do not implement (`555 5.5.4`).
    Parameter(String),
}

pub(crate) fn parse(line: &[u8]) -> Result<Command, ParseError> {
    if line.contains(&0) {
        return Err(ParseError::Syntax("NUL characters are not allowed"));
    }
    let line = std::str::from_utf8(line).map_err(|_| ParseError::Syntax("command is not UTF-8"))?;
    let (keyword, rest) = match line.split_once(' ') {
        Some((keyword, rest)) => (keyword, rest.trim()),
        None => (line, ""),
    };
    let keyword = keyword.to_ascii_uppercase();
    let none = |command: Command| {
        if rest.is_empty() {
            Ok(command)
        } else {
            Err(ParseError::Syntax("this command takes no arguments"))
        }
    };
    match keyword.as_str() {
        "EHLO" | "HELO" => {
            let domain = rest.split(' ').next().unwrap_or_default();
            if domain.is_empty() {
                return Err(ParseError::Syntax("EHLO and HELO need a domain or address"));
            }
            Ok(if keyword == "EHLO" {
                Command::Ehlo(domain.to_owned())
            } else {
                Command::Helo(domain.to_owned())
            })
        }
        "STARTTLS" => none(Command::StartTls),
        "AUTH" => {
            let mut words = rest.split_ascii_whitespace();
            let mechanism = words
                .next()
                .ok_or(ParseError::Syntax("AUTH needs a mechanism"))?
                .to_ascii_uppercase();
            let initial = words.next().map(str::to_owned);
            if words.next().is_some() {
                return Err(ParseError::Syntax(
                    "AUTH takes a mechanism and one response",
                ));
            }
            Ok(Command::Auth { mechanism, initial })
        }
        "MAIL" => {
            let (address, params) = path_after(rest, "FROM:")?;
            let mut mail = MailFrom {
                address,
                size: None,
                utf8: false,
            };
            for param in params.split_ascii_whitespace() {
                let (name, value) = match param.split_once('=') {
                    Some((n, v)) => (n.to_ascii_uppercase(), Some(v)),
                    None => (param.to_ascii_uppercase(), None),
                };
                match (name.as_str(), value) {
                    ("SIZE", Some(v)) if !v.is_empty() && v.bytes().all(|b| b.is_ascii_digit()) => {
                        mail.size = Some(v.parse().unwrap_or(u64::MAX));
                    }
                    ("BODY", Some(v))
                        if v.eq_ignore_ascii_case("7BIT") || v.eq_ignore_ascii_case("8BITMIME") => {
                    }
                    ("SMTPUTF8", None) => mail.utf8 = true,
                    // RFC 4954 §5: AUTH=<> or an identity; we take the authenticated user anyway.
                    ("AUTH", Some(_)) => {}
                    _ => return Err(ParseError::Parameter(param.to_owned())),
                }
            }
            Ok(Command::Mail(mail))
        }
        "RCPT" => {
            let (address, params) = path_after(rest, "TO:")?;
            if let Some(param) = params.split_ascii_whitespace().next() {
                return Err(ParseError::Parameter(param.to_owned()));
            }
            if address.is_empty() {
                return Err(ParseError::Syntax("RCPT TO needs an address"));
            }
            Ok(Command::Rcpt(address))
        }
        "DATA" => none(Command::Data),
        "RSET" => none(Command::Rset),
        // NOOP and HELP may take an argument, which is ignored (RFC 5321 §4.1.1.9, §4.1.1.8).
        "NOOP" => Ok(Command::Noop),
        "HELP" => Ok(Command::Help),
        "VRFY" => Ok(Command::Vrfy),
        "EXPN" => Ok(Command::Expn),
        "QUIT" => none(Command::Quit),
        _ => Err(ParseError::Unknown),
    }
}

/// `FROM:<path> params` or `TO:<path> params` (a space after the colon is tolerated, as many
/// clients send one); returns the address without brackets and the parameter text.
fn path_after<'a>(rest: &'a str, prefix: &str) -> Result<(String, &'a str), ParseError> {
    // `split_at_checked` is `None` when the prefix's length ends inside a multi-byte character.
    let Some(rest) = rest
        .split_at_checked(prefix.len())
        .and_then(|(head, rest)| head.eq_ignore_ascii_case(prefix).then_some(rest))
    else {
        return Err(ParseError::Syntax(
            "expected FROM:<address> or TO:<address>",
        ));
    };
    let Some((mut address, params)) = rest
        .trim_start()
        .strip_prefix('<')
        .and_then(|rest| rest.split_once('>'))
    else {
        return Err(ParseError::Syntax("the address must be in angle brackets"));
    };
    if address.starts_with('@') {
        address = after_source_route(address)?;
    }
    if address.contains(|c: char| c.is_whitespace() || c == '<') {
        return Err(ParseError::Syntax("invalid address"));
    }
    Ok((address.to_owned(), params.trim()))
}

/// The mailbox after a source route (`@a,@b:user@c`, RFC 5321 §4.1.2: `A-d-l ":" Mailbox`),
/// which is accepted and ignored. Every hop is `@domain` and a mailbox must follow: `<@a:>`
/// is not the null sender and `<@a:@b>` is not the address `@b`.
fn after_source_route(path: &str) -> Result<&str, ParseError> {
    let Some((route, mailbox)) = path.split_once(':') else {
        return Err(ParseError::Syntax(
            "a source route must end with a colon and a mailbox",
        ));
    };
    let hop_is_valid = |hop: &str| {
        hop.strip_prefix('@')
            .is_some_and(|domain| !domain.is_empty() && !domain.contains('@'))
    };
    if !route.split(',').all(hop_is_valid) {
        return Err(ParseError::Syntax(
            "a source route is @domain hops separated by commas",
        ));
    }
    if mailbox.is_empty() || mailbox.starts_with('@') {
        return Err(ParseError::Syntax(
            "a source route must be followed by a mailbox",
        ));
    }
    Ok(mailbox)
}

/// Splits `local@domain`; `None` when there is no `@` or one side is empty. (The session
/// checks addresses with `inetkit_auth::address::parse_address`; this rough split is what the
/// `smtp_command` fuzz target exercises.)
#[cfg(any(test, feature = "fuzzing"))]
pub(crate) fn split_address(address: &str) -> Option<(&str, &str)> {
    let (local, domain) = address.rsplit_once('@')?;
    (!local.is_empty() && !domain.is_empty()).then_some((local, domain))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ehlo_and_helo() {
        assert_eq!(
            parse(b"EHLO we-guess.mozilla.org"),
            Ok(Command::Ehlo("we-guess.mozilla.org".into()))
        );
        assert_eq!(
            parse(b"helo [127.0.0.1]"),
            Ok(Command::Helo("[127.0.0.1]".into()))
        );
        assert!(matches!(parse(b"EHLO"), Err(ParseError::Syntax(_))));
    }

    #[test]
    fn mail_from_with_parameters() {
        let Ok(Command::Mail(mail)) =
            parse(b"MAIL FROM:<alice@example.org> SIZE=1000 BODY=8BITMIME SMTPUTF8")
        else {
            panic!("not parsed");
        };
        assert_eq!(mail.address, "alice@example.org");
        assert_eq!(mail.size, Some(1000));
        assert!(mail.utf8);
        let Ok(Command::Mail(mail)) = parse(b"mail from: <> size=99999999999999999999999") else {
            panic!("not parsed");
        };
        assert_eq!(mail.address, "");
        assert_eq!(mail.size, Some(u64::MAX));
        assert_eq!(
            parse(b"MAIL FROM:<a@b> RET=FULL"),
            Err(ParseError::Parameter("RET=FULL".into()))
        );
        assert!(matches!(
            parse(b"MAIL FROM:a@b"),
            Err(ParseError::Syntax(_))
        ));
        assert!(matches!(
            parse(b"MAIL TO:<a@b>"),
            Err(ParseError::Syntax(_))
        ));
    }

    #[test]
    fn rcpt_to() {
        assert_eq!(
            parse(b"RCPT TO:<bob@example.org>"),
            Ok(Command::Rcpt("bob@example.org".into()))
        );
        assert_eq!(
            parse(b"RCPT TO:<@relay:bob@example.org>"),
            Ok(Command::Rcpt("bob@example.org".into()))
        );
        assert!(matches!(parse(b"RCPT TO:<>"), Err(ParseError::Syntax(_))));
        assert_eq!(
            parse(b"RCPT TO:<@a,@b.example:bob@example.org>"),
            Ok(Command::Rcpt("bob@example.org".into()))
        );
        assert!(matches!(
            parse(b"RCPT TO:<a@b> NOTIFY=NEVER"),
            Err(ParseError::Parameter(_))
        ));
    }

    /// fuzz/regressions/smtp_command/source-route-to-a-route: `<@a:@b>` was taken as the
    /// address `@b`, and `MAIL FROM:<@a>` as the null sender.
    #[test]
    fn a_source_route_needs_a_mailbox_after_it() {
        for line in [
            "RCPT TO:<@a:@b>",
            "RCPT TO:<@a,@b:@ob{ebamZZZ.example.org>",
            "RCPT TO:<@a:>",
            "RCPT TO:<@a>",
            "RCPT TO:<@a,b:bob@example.org>",
            "RCPT TO:<@:bob@example.org>",
            "RCPT TO:<@a,,@b:bob@example.org>",
            "MAIL FROM:<@a>",
            "MAIL FROM:<@a:>",
            "MAIL FROM:<@a:@b>",
        ] {
            assert!(
                matches!(parse(line.as_bytes()), Err(ParseError::Syntax(_))),
                "{line}: {:?}",
                parse(line.as_bytes())
            );
        }
        let Ok(Command::Mail(mail)) = parse(b"MAIL FROM:<@relay.example:alice@example.org>") else {
            panic!("not parsed");
        };
        assert_eq!(mail.address, "alice@example.org");
    }

    #[test]
    fn auth_and_simple_commands() {
        assert_eq!(
            parse(b"AUTH plain AGFsaWNlAHNlY3JldA=="),
            Ok(Command::Auth {
                mechanism: "PLAIN".into(),
                initial: Some("AGFsaWNlAHNlY3JldA==".into())
            })
        );
        assert_eq!(
            parse(b"AUTH LOGIN"),
            Ok(Command::Auth {
                mechanism: "LOGIN".into(),
                initial: None
            })
        );
        assert_eq!(parse(b"data"), Ok(Command::Data));
        assert_eq!(parse(b"NOOP hello"), Ok(Command::Noop));
        assert_eq!(parse(b"VRFY root"), Ok(Command::Vrfy));
        assert_eq!(parse(b"expn staff"), Ok(Command::Expn));
        assert!(matches!(parse(b"QUIT now"), Err(ParseError::Syntax(_))));
        assert_eq!(parse(b"BDAT 10"), Err(ParseError::Unknown));
        assert!(matches!(parse(b"NOOP \0"), Err(ParseError::Syntax(_))));
        assert!(matches!(parse(b"\xff\xfe"), Err(ParseError::Syntax(_))));
    }

    /// Client text is UTF-8 of any shape: no byte offset may land inside a character.
    #[test]
    fn multi_byte_text_is_a_syntax_error_or_an_address() {
        // "F€€:" puts byte 5 (after "FROM:") inside the second '€'.
        for line in [
            "MAIL F€€:<a@b>",
            "MAIL FRO€<a@b>",
            "RCPT T€<a@b>",
            "MAIL FROM:<é",
            "RCPT TO:€",
        ] {
            assert!(
                matches!(parse(line.as_bytes()), Err(ParseError::Syntax(_))),
                "{line}"
            );
        }
        let Ok(Command::Mail(mail)) = parse("MAIL FROM:<jø@dømi.no> SMTPUTF8".as_bytes()) else {
            panic!("not parsed");
        };
        assert_eq!(mail.address, "jø@dømi.no");
        assert_eq!(
            parse("RCPT TO:<日本@例え.jp>".as_bytes()),
            Ok(Command::Rcpt("日本@例え.jp".into()))
        );
        assert_eq!(parse("NOÖP".as_bytes()), Err(ParseError::Unknown));
    }

    #[test]
    fn addresses() {
        assert_eq!(split_address("a+b@x.org"), Some(("a+b", "x.org")));
        assert_eq!(split_address("@x"), None);
        assert_eq!(split_address("nobody"), None);
    }
}
