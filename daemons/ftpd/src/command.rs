//! FTP command lines (RFC 959 §5.3, RFC 2428, RFC 3659, RFC 4217): a pure parser.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Command {
    User(String),
    Pass(String),
    Auth(String),
    Pbsz(String),
    Prot(String),
    Ccc,
    Feat,
    Opts(String),
    Syst,
    Noop,
    Help,
    Quit,
    Pwd,
    Cwd(String),
    Cdup,
    Type(String),
    Mode(String),
    Stru(String),
    Stat(Option<String>),
    Pasv,
    Epsv(Option<String>),
    Port(SocketAddr),
    Eprt(SocketAddr),
    List(Option<String>),
    Nlst(Option<String>),
    Mlsd(Option<String>),
    Mlst(Option<String>),
    Size(String),
    Mdtm(String),
    Retr(String),
    Stor(String),
    Appe(String),
    Stou(Option<String>),
    Rest(u64),
    Dele(String),
    Rnfr(String),
    Rnto(String),
    Mkd(String),
    Rmd(String),
    Abor,
    /// SITE and its argument (`CHMOD 644 f`, `UMASK 022`, `HELP`).
    Site(String),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum ParseError {
    #[error("unknown command")]
    Unknown,
    #[error("{0}")]
    Syntax(&'static str),
}

impl ParseError {
    /// The reply to a command line that does not parse.
    pub(crate) fn reply(&self) -> String {
        match self {
            ParseError::Unknown => "500 Unknown command.".to_owned(),
            ParseError::Syntax(hint) => format!("501 Syntax error: {hint}."),
        }
    }
}

/// Parses one command line (without its CRLF).
pub(crate) fn parse(line: &[u8]) -> Result<Command, ParseError> {
    let line = strip_telnet(line);
    let line = std::str::from_utf8(line).map_err(|_| ParseError::Syntax("not UTF-8"))?;
    let (verb, arg) = match line.split_once(' ') {
        Some((verb, arg)) => (verb, Some(arg)),
        None => (line, None),
    };
    if verb.len() > 4 || !verb.bytes().all(|b| b.is_ascii_alphabetic()) {
        return Err(ParseError::Unknown);
    }
    let verb = verb.to_ascii_uppercase();
    // An empty argument is no argument (some clients send "LIST ").
    let arg = arg.filter(|a| !a.is_empty()).map(str::to_owned);
    let need = |arg: Option<String>| arg.ok_or(ParseError::Syntax("an argument is required"));
    let none = |arg: &Option<String>, command: Command| match arg {
        None => Ok(command),
        Some(_) => Err(ParseError::Syntax("no argument is allowed")),
    };
    match verb.as_str() {
        "USER" => need(arg).map(Command::User),
        // An empty password is a password (anonymous clients send one).
        "PASS" => Ok(Command::Pass(arg.unwrap_or_default())),
        "AUTH" => need(arg).map(Command::Auth),
        "PBSZ" => need(arg).map(Command::Pbsz),
        "PROT" => need(arg).map(Command::Prot),
        "CCC" => Ok(Command::Ccc),
        "FEAT" => none(&arg, Command::Feat),
        "OPTS" => need(arg).map(Command::Opts),
        "SYST" => none(&arg, Command::Syst),
        "NOOP" => none(&arg, Command::Noop),
        "HELP" => Ok(Command::Help),
        "QUIT" => none(&arg, Command::Quit),
        "PWD" | "XPWD" => none(&arg, Command::Pwd),
        "CWD" | "XCWD" => need(arg).map(Command::Cwd),
        "CDUP" | "XCUP" => none(&arg, Command::Cdup),
        "TYPE" => need(arg).map(Command::Type),
        "MODE" => need(arg).map(Command::Mode),
        "STRU" => need(arg).map(Command::Stru),
        "STAT" => Ok(Command::Stat(arg)),
        "PASV" => none(&arg, Command::Pasv),
        "EPSV" => Ok(Command::Epsv(arg)),
        "PORT" => parse_port(&need(arg)?).map(Command::Port),
        "EPRT" => parse_eprt(&need(arg)?).map(Command::Eprt),
        "LIST" => Ok(Command::List(arg)),
        "NLST" => Ok(Command::Nlst(arg)),
        "MLSD" => Ok(Command::Mlsd(arg)),
        "MLST" => Ok(Command::Mlst(arg)),
        "SIZE" => need(arg).map(Command::Size),
        "MDTM" => need(arg).map(Command::Mdtm),
        "RETR" => need(arg).map(Command::Retr),
        "STOR" => need(arg).map(Command::Stor),
        "APPE" => need(arg).map(Command::Appe),
        "STOU" => Ok(Command::Stou(arg)),
        "REST" => need(arg)?
            .trim()
            .parse()
            .map(Command::Rest)
            .map_err(|_| ParseError::Syntax("REST takes a byte offset")),
        "DELE" => need(arg).map(Command::Dele),
        "RNFR" => need(arg).map(Command::Rnfr),
        "RNTO" => need(arg).map(Command::Rnto),
        "MKD" | "XMKD" => need(arg).map(Command::Mkd),
        "RMD" | "XRMD" => need(arg).map(Command::Rmd),
        "ABOR" => Ok(Command::Abor),
        "SITE" => need(arg).map(Command::Site),
        _ => Err(ParseError::Unknown),
    }
}

/// Drops the Telnet "interrupt process" and "synch" bytes clients send before ABOR
/// (RFC 959 §4.1.3), and any other leading non-letters.
fn strip_telnet(line: &[u8]) -> &[u8] {
    let start = line
        .iter()
        .position(|b| b.is_ascii_alphabetic())
        .unwrap_or(line.len());
    &line[start..]
}

/// `h1,h2,h3,h4,p1,p2` (RFC 959 §4.1.2).
fn parse_port(arg: &str) -> Result<SocketAddr, ParseError> {
    const BAD: ParseError = ParseError::Syntax("PORT takes h1,h2,h3,h4,p1,p2");
    let numbers: Vec<u8> = arg
        .trim()
        .split(',')
        .map(|n| n.trim().parse::<u8>())
        .collect::<Result<_, _>>()
        .map_err(|_| BAD)?;
    let [a, b, c, d, p1, p2] = numbers[..] else {
        return Err(BAD);
    };
    Ok(SocketAddr::new(
        IpAddr::V4(Ipv4Addr::new(a, b, c, d)),
        u16::from(p1) << 8 | u16::from(p2),
    ))
}

/// `|1|132.235.1.2|6275|` or `|2|::1|6275|` (RFC 2428 §2); any delimiter in 33..=126.
fn parse_eprt(arg: &str) -> Result<SocketAddr, ParseError> {
    const BAD: ParseError = ParseError::Syntax("EPRT takes |protocol|address|port|");
    let arg = arg.trim();
    let delimiter = arg.chars().next().ok_or(BAD)?;
    if !(33..=126).contains(&(delimiter as u32)) {
        return Err(BAD);
    }
    let fields: Vec<&str> = arg.split(delimiter).collect();
    let ["", protocol, address, port, ""] = fields[..] else {
        return Err(BAD);
    };
    let ip: IpAddr = match protocol {
        "1" => IpAddr::V4(address.parse().map_err(|_| BAD)?),
        "2" => IpAddr::V6(address.parse().map_err(|_| BAD)?),
        _ => return Err(ParseError::Syntax("EPRT protocol must be 1 or 2")),
    };
    let port: u16 = port.parse().map_err(|_| BAD)?;
    Ok(SocketAddr::new(ip, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verbs_are_case_insensitive_and_keep_spaces_in_names() {
        assert_eq!(parse(b"user alice"), Ok(Command::User("alice".into())));
        assert_eq!(parse(b"RETR a b  c"), Ok(Command::Retr("a b  c".into())));
        assert_eq!(parse(b"PASS"), Ok(Command::Pass(String::new())));
        assert_eq!(parse(b"LIST "), Ok(Command::List(None)));
        assert_eq!(parse(b"XPWD"), Ok(Command::Pwd));
    }

    #[test]
    fn bad_lines() {
        assert_eq!(parse(b"FOOBAR x"), Err(ParseError::Unknown));
        assert_eq!(parse(b""), Err(ParseError::Unknown));
        assert!(matches!(parse(b"RETR"), Err(ParseError::Syntax(_))));
        assert!(matches!(parse(b"NOOP x"), Err(ParseError::Syntax(_))));
        assert!(matches!(parse(b"REST -1"), Err(ParseError::Syntax(_))));
        assert!(matches!(parse(b"RETR \xff"), Err(ParseError::Syntax(_))));
    }

    #[test]
    fn abor_after_telnet_interrupt() {
        assert_eq!(parse(b"\xff\xf4\xff\xf2ABOR"), Ok(Command::Abor));
        assert_eq!(parse(b"\xf2ABOR"), Ok(Command::Abor));
    }

    #[test]
    fn port_and_eprt() {
        assert_eq!(
            parse(b"PORT 127,0,0,1,4,1"),
            Ok(Command::Port("127.0.0.1:1025".parse().unwrap()))
        );
        assert!(parse(b"PORT 127,0,0,1,4").is_err());
        assert!(parse(b"PORT 127,0,0,1,4,256").is_err());
        assert_eq!(
            parse(b"EPRT |1|127.0.0.1|6275|"),
            Ok(Command::Eprt("127.0.0.1:6275".parse().unwrap()))
        );
        assert_eq!(
            parse(b"EPRT !2!::1!6275!"),
            Ok(Command::Eprt("[::1]:6275".parse().unwrap()))
        );
        assert!(parse(b"EPRT |3|::1|6275|").is_err());
        assert!(parse(b"EPRT |1|::1|6275|").is_err());
        assert!(parse(b"EPRT |1|127.0.0.1|6275").is_err());
    }

    #[test]
    fn rest_offset() {
        assert_eq!(parse(b"REST 1048576"), Ok(Command::Rest(1 << 20)));
    }
}
