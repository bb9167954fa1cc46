//! POP3 command lines (RFC 1939 §3, RFC 2449, RFC 2595, RFC 5034) parsed into [`Command`].
//! Pure: bytes in, a command or a reason out.

/// One client command. Message numbers are 1-based, as on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    Capa,
    Stls,
    User(String),
    Pass(Vec<u8>),
    /// `AUTH` alone lists the mechanisms; otherwise a mechanism and an optional initial response.
    Auth {
        mechanism: Option<String>,
        initial: Option<String>,
    },
    Stat,
    List(Option<u32>),
    Uidl(Option<u32>),
    Retr(u32),
    Top(u32, u32),
    Dele(u32),
    Rset,
    Noop,
    Quit,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ParseError {
    Unknown(String),
    /// Known command, bad arguments: the text says what was expected.
    Syntax(&'static str),
}

pub(crate) fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let (keyword, rest) = match line.iter().position(|&b| b == b' ') {
        Some(i) => (&line[..i], Some(&line[i + 1..])),
        None => (line, None),
    };
    let keyword = String::from_utf8_lossy(keyword).to_ascii_uppercase();
    // PASS takes the rest of the line verbatim: passwords may contain spaces.
    if keyword == "PASS" {
        return match rest {
            Some(password) if !password.is_empty() => Ok(Command::Pass(password.to_vec())),
            _ => Err(ParseError::Syntax("PASS needs a password")),
        };
    }
    let rest = rest.map(|r| String::from_utf8_lossy(r).into_owned());
    let args: Vec<&str> = rest
        .as_deref()
        .map_or(Vec::new(), |r| r.split(' ').collect());
    let none = |command: Command| {
        if args.is_empty() {
            Ok(command)
        } else {
            Err(ParseError::Syntax("this command takes no arguments"))
        }
    };
    match keyword.as_str() {
        "CAPA" => none(Command::Capa),
        "STLS" => none(Command::Stls),
        "STAT" => none(Command::Stat),
        "RSET" => none(Command::Rset),
        "NOOP" => none(Command::Noop),
        "QUIT" => none(Command::Quit),
        "USER" => match args.as_slice() {
            [name] if !name.is_empty() => Ok(Command::User((*name).to_owned())),
            _ => Err(ParseError::Syntax("USER needs one user name")),
        },
        "AUTH" => match args.as_slice() {
            [] => Ok(Command::Auth {
                mechanism: None,
                initial: None,
            }),
            [mechanism] => Ok(Command::Auth {
                mechanism: Some(mechanism.to_ascii_uppercase()),
                initial: None,
            }),
            [mechanism, initial] => Ok(Command::Auth {
                mechanism: Some(mechanism.to_ascii_uppercase()),
                initial: Some((*initial).to_owned()),
            }),
            _ => Err(ParseError::Syntax("AUTH mechanism [initial-response]")),
        },
        "LIST" => optional_number(&args).map(Command::List),
        "UIDL" => optional_number(&args).map(Command::Uidl),
        "RETR" => one_number(&args).map(Command::Retr),
        "DELE" => one_number(&args).map(Command::Dele),
        "TOP" => match args.as_slice() {
            [msg, lines] => match (number(msg), lines.parse::<u32>()) {
                (Some(msg), Ok(lines)) => Ok(Command::Top(msg, lines)),
                _ => Err(ParseError::Syntax("TOP message-number lines")),
            },
            _ => Err(ParseError::Syntax("TOP message-number lines")),
        },
        _ => Err(ParseError::Unknown(keyword)),
    }
}

fn number(arg: &str) -> Option<u32> {
    arg.parse::<u32>().ok().filter(|&n| n > 0)
}

fn optional_number(args: &[&str]) -> Result<Option<u32>, ParseError> {
    match args {
        [] => Ok(None),
        [n] => number(n)
            .map(Some)
            .ok_or(ParseError::Syntax("a message number is a positive integer")),
        _ => Err(ParseError::Syntax("at most one message number")),
    }
}

fn one_number(args: &[&str]) -> Result<u32, ParseError> {
    match args {
        [n] => number(n).ok_or(ParseError::Syntax("a message number is a positive integer")),
        _ => Err(ParseError::Syntax("one message number")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_parse_case_insensitively() {
        assert_eq!(parse(b"capa"), Ok(Command::Capa));
        assert_eq!(parse(b"User alice"), Ok(Command::User("alice".into())));
        assert_eq!(parse(b"PASS a b  c"), Ok(Command::Pass(b"a b  c".to_vec())));
        assert_eq!(parse(b"LIST"), Ok(Command::List(None)));
        assert_eq!(parse(b"list 3"), Ok(Command::List(Some(3))));
        assert_eq!(parse(b"TOP 1 0"), Ok(Command::Top(1, 0)));
        assert_eq!(parse(b"retr 12"), Ok(Command::Retr(12)));
        assert_eq!(
            parse(b"AUTH plain AGEAYg=="),
            Ok(Command::Auth {
                mechanism: Some("PLAIN".into()),
                initial: Some("AGEAYg==".into())
            })
        );
        assert_eq!(
            parse(b"AUTH"),
            Ok(Command::Auth {
                mechanism: None,
                initial: None
            })
        );
    }

    #[test]
    fn bad_arguments_are_syntax_errors() {
        for line in [
            &b"RETR"[..],
            b"RETR 0",
            b"RETR -1",
            b"RETR x",
            b"RETR 99999999999",
            b"DELE 1 2",
            b"TOP 1",
            b"TOP 1 x",
            b"STAT now",
            b"USER",
            b"PASS",
            b"QUIT please",
        ] {
            assert!(
                matches!(parse(line), Err(ParseError::Syntax(_))),
                "{}",
                String::from_utf8_lossy(line)
            );
        }
    }

    #[test]
    fn unknown_and_garbage() {
        assert_eq!(parse(b"APOP a b"), Err(ParseError::Unknown("APOP".into())));
        assert!(matches!(
            parse(b"\xff\x00\x01"),
            Err(ParseError::Unknown(_))
        ));
        assert!(matches!(parse(b""), Err(ParseError::Unknown(_))));
    }
}
