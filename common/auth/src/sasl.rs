//! SASL PLAIN (RFC 4616) and LOGIN decoding, shared by pop3d (AUTH), imapd (AUTHENTICATE),
//! smtp-submit (AUTH), plus HTTP Basic for rpcd.
//!
//! The protocol code reads the client's line (already bounded by `common::lines`) and hands
//! the base64 text here, without its CRLF:
//!
//! ```text
//! PLAIN:  C: AUTH PLAIN <b64>            -> decode_plain(b64)
//!    or:  C: AUTH PLAIN / S: "+ " / C: <b64>
//! LOGIN:  S: "+ " LOGIN_USERNAME_CHALLENGE / C: <b64> -> decode_response
//!         S: "+ " LOGIN_PASSWORD_CHALLENGE / C: <b64> -> decode_response
//! ```
//!
//! A client line of `*` cancels the exchange ([`SaslError::Cancelled`]); `=` is an empty
//! initial response (RFC 4954, 5034, SASL-IR).

use std::future::Future;

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use tokio::io::{AsyncRead, AsyncWrite};

use inetkit_runtime::conn::LineConn;
use inetkit_runtime::lines::Line;

/// Base64 text longer than this is refused before decoding (credentials are short; the limit
/// is well above RFC 4616's 255 octets per field).
pub const MAX_ENCODED_LEN: usize = 4096;

/// `Username:` in base64, the first LOGIN challenge.
pub const LOGIN_USERNAME_CHALLENGE: &str = "VXNlcm5hbWU6";
/// `Password:` in base64, the second LOGIN challenge.
pub const LOGIN_PASSWORD_CHALLENGE: &str = "UGFzc3dvcmQ6";

/// Standard alphabet; padding optional, since some clients leave it off.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

/// Why a client's SASL response or HTTP Basic header gives no credentials.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    /// The client answered `*`.
    #[error("authentication cancelled")]
    Cancelled,
    /// The response is not base64.
    #[error("invalid base64")]
    BadBase64,
    /// The response is longer than [`MAX_ENCODED_LEN`].
    #[error("response too long")]
    TooLong,
    /// Decoded, but not the shape the mechanism needs (fields missing or empty, not UTF-8).
    #[error("malformed credentials")]
    Malformed,
    /// PLAIN with an authorization identity other than the login name.
    #[error("authorization identity differs from the authentication identity")]
    AuthzidMismatch,
}

/// Name and password from a client.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// The login name as sent (not yet checked against the users file).
    pub name: String,
    /// The password's bytes as sent; never logged.
    pub password: Vec<u8>,
    /// PLAIN's authorization identity when it names someone else: the user a master user
    /// asks to act as. Only the `*_for_master` exchanges give one; everything else refuses
    /// such a message as malformed.
    pub authzid: Option<String>,
}

// Passwords stay out of logs.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("name", &self.name)
            .field("authzid", &self.authzid)
            .finish_non_exhaustive()
    }
}

/// Decodes one client response line of a SASL exchange: `*` cancels, `=` (or nothing) is
/// empty, anything else is base64.
pub fn decode_response(line: &[u8]) -> Result<Vec<u8>, SaslError> {
    let line = line.trim_ascii();
    if line.len() > MAX_ENCODED_LEN {
        return Err(SaslError::TooLong);
    }
    match line {
        b"*" => Err(SaslError::Cancelled),
        b"" | b"=" => Ok(Vec::new()),
        text => BASE64.decode(text).map_err(|_| SaslError::BadBase64),
    }
}

/// Decodes a PLAIN response (`authzid NUL authcid NUL passwd`, base64). An authorization
/// identity is accepted only when empty or equal to the login name: nobody may act as
/// someone else.
pub fn decode_plain(line: &[u8]) -> Result<Credentials, SaslError> {
    let message = decode_response(line)?;
    parse_plain(&message)
}

/// [`decode_plain`] on an already decoded message.
pub fn parse_plain(message: &[u8]) -> Result<Credentials, SaslError> {
    let credentials = parse_plain_for_master(message)?;
    if credentials.authzid.is_some() {
        return Err(SaslError::AuthzidMismatch);
    }
    Ok(credentials)
}

/// [`parse_plain`], keeping an authorization identity that names someone else in
/// [`Credentials::authzid`], for the daemons that let a master user act as another
/// (`Authenticator::login_credentials` decides whether this one may).
pub fn parse_plain_for_master(message: &[u8]) -> Result<Credentials, SaslError> {
    let mut parts = message.split(|&b| b == 0);
    let (Some(authzid), Some(authcid), Some(password), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(SaslError::Malformed);
    };
    if authcid.is_empty() || password.is_empty() {
        return Err(SaslError::Malformed);
    }
    let name = String::from_utf8(authcid.to_vec()).map_err(|_| SaslError::Malformed)?;
    let authzid = if authzid.is_empty() || authzid == authcid {
        None
    } else {
        Some(String::from_utf8(authzid.to_vec()).map_err(|_| SaslError::Malformed)?)
    };
    Ok(Credentials {
        name,
        password: password.to_vec(),
        authzid,
    })
}

/// Decodes the LOGIN user name response.
pub fn decode_login_name(line: &[u8]) -> Result<String, SaslError> {
    parse_login_name(decode_response(line)?)
}

/// [`decode_login_name`] on an already decoded response.
fn parse_login_name(name: Vec<u8>) -> Result<String, SaslError> {
    if name.is_empty() || name.contains(&0) {
        return Err(SaslError::Malformed);
    }
    String::from_utf8(name).map_err(|_| SaslError::Malformed)
}

/// Decodes an HTTP `Authorization: Basic <b64(name:password)>` header value (RFC 7617).
pub fn decode_http_basic(value: &str) -> Result<Credentials, SaslError> {
    let value = value.trim();
    let (scheme, token) = value.split_once(' ').ok_or(SaslError::Malformed)?;
    if !scheme.eq_ignore_ascii_case("basic") {
        return Err(SaslError::Malformed);
    }
    let decoded = decode_response(token.as_bytes())?;
    let colon = decoded
        .iter()
        .position(|&b| b == b':')
        .ok_or(SaslError::Malformed)?;
    let name = std::str::from_utf8(&decoded[..colon]).map_err(|_| SaslError::Malformed)?;
    // RFC 7617 §2: the user-id must not contain control characters (a NUL, a line end).
    if name.is_empty() || name.chars().any(char::is_control) {
        return Err(SaslError::Malformed);
    }
    Ok(Credentials {
        name: name.to_owned(),
        password: decoded[colon + 1..].to_vec(),
        authzid: None,
    })
}

/// Base64 for a server challenge (e.g. an empty one is `""`, sent as `+ `).
pub fn encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

/// What a SASL PLAIN or LOGIN exchange came to.
#[derive(Debug)]
pub enum Sasl {
    /// The exchange gave a name and a password, to check with `Authenticator::login`.
    Credentials(Credentials),
    /// The client answered `*` (or a line too long to be an answer).
    Cancelled,
    /// A response that is not base64, or not a PLAIN message.
    Malformed,
    /// Neither PLAIN nor LOGIN.
    Unsupported,
    /// The client went away (or idled out) in the middle.
    Gone,
}

/// The one thing a protocol's connection does for a SASL exchange: send a challenge (base64
/// text, already encoded) and read the client's answer line. `None` when the client is gone;
/// an overlong answer comes back as `*`.
pub trait Challenger {
    /// Sends `challenge` and reads the answer line (without its line end).
    fn challenge(&mut self, challenge: &str) -> impl Future<Output = Option<String>>;
}

/// A [`LineConn`] sending each challenge behind the protocol's prefix (`+ ` in POP3 and IMAP,
/// `334 ` in SMTP).
pub struct LineChallenger<'a, S> {
    /// The client's connection.
    pub conn: &'a mut LineConn<S>,
    /// What goes before the challenge on its line (`"+ "` or `"334 "`).
    pub prefix: &'static str,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Challenger for LineChallenger<'_, S> {
    async fn challenge(&mut self, challenge: &str) -> Option<String> {
        let mut line = Vec::new();
        match self
            .conn
            .ask(&format!("{}{challenge}", self.prefix), &mut line)
            .await?
        {
            Line::Complete => Some(String::from_utf8_lossy(&line).into_owned()),
            _ => Some("*".to_owned()),
        }
    }
}

/// Runs a SASL PLAIN (RFC 4616) or LOGIN exchange for a protocol's AUTH/AUTHENTICATE command:
/// `initial` is the initial response the command carried (`=` for an empty one).
pub async fn exchange(
    channel: &mut impl Challenger,
    mechanism: &str,
    initial: Option<String>,
) -> Sasl {
    run_exchange(channel, mechanism, initial.map(Response::Text), false).await
}

/// [`exchange`] for a daemon that lets a master user log in as another user: a PLAIN
/// message whose authorization identity names someone else comes back with it in
/// [`Credentials::authzid`] instead of being refused.
pub async fn exchange_for_master(
    channel: &mut impl Challenger,
    mechanism: &str,
    initial: Option<String>,
) -> Sasl {
    run_exchange(channel, mechanism, initial.map(Response::Text), true).await
}

/// [`exchange`] for a protocol whose parser has decoded the initial response already (IMAP's
/// SASL-IR, which `imap-codec` hands over as bytes): it is used as it is, not encoded again.
pub async fn exchange_decoded(
    channel: &mut impl Challenger,
    mechanism: &str,
    initial: Option<Vec<u8>>,
) -> Sasl {
    run_exchange(channel, mechanism, initial.map(Response::Decoded), false).await
}

/// [`exchange_decoded`] with master logins, as [`exchange_for_master`].
pub async fn exchange_decoded_for_master(
    channel: &mut impl Challenger,
    mechanism: &str,
    initial: Option<Vec<u8>>,
) -> Sasl {
    run_exchange(channel, mechanism, initial.map(Response::Decoded), true).await
}

/// A client response: a line of base64 text, or an initial response already decoded.
enum Response {
    Text(String),
    Decoded(Vec<u8>),
}

impl Response {
    fn cancels(&self) -> bool {
        matches!(self, Response::Text(t) if t == "*")
    }
}

async fn run_exchange(
    channel: &mut impl Challenger,
    mechanism: &str,
    initial: Option<Response>,
    for_master: bool,
) -> Sasl {
    let plain = mechanism.eq_ignore_ascii_case("PLAIN");
    if !plain && !mechanism.eq_ignore_ascii_case("LOGIN") {
        return Sasl::Unsupported;
    }
    let first = if plain { "" } else { LOGIN_USERNAME_CHALLENGE };
    let response = match initial {
        Some(response) => response,
        None => match channel.challenge(first).await {
            Some(response) => Response::Text(response),
            None => return Sasl::Gone,
        },
    };
    if response.cancels() {
        return Sasl::Cancelled;
    }
    if plain {
        let message = match response {
            Response::Text(text) => decode_response(text.as_bytes()),
            Response::Decoded(message) => Ok(message),
        };
        let credentials = match message {
            Ok(message) if for_master => parse_plain_for_master(&message),
            Ok(message) => parse_plain(&message),
            Err(err) => Err(err),
        };
        return match credentials {
            Ok(credentials) => Sasl::Credentials(credentials),
            Err(_) => Sasl::Malformed,
        };
    }
    let Some(password) = channel.challenge(LOGIN_PASSWORD_CHALLENGE).await else {
        return Sasl::Gone;
    };
    if password == "*" {
        return Sasl::Cancelled;
    }
    let name = match response {
        Response::Text(text) => decode_login_name(text.as_bytes()),
        Response::Decoded(name) => parse_login_name(name),
    };
    match (name, decode_response(password.as_bytes())) {
        (Ok(name), Ok(password)) => Sasl::Credentials(Credentials {
            name,
            password,
            authzid: None,
        }),
        _ => Sasl::Malformed,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(name: &str, password: &[u8]) -> Credentials {
        Credentials {
            authzid: None,
            name: name.into(),
            password: password.to_vec(),
        }
    }

    #[test]
    fn only_the_master_parser_keeps_another_authorization_identity() {
        let message = b"alice\0proxy\0secret";
        assert_eq!(parse_plain(message), Err(SaslError::AuthzidMismatch));
        let got = parse_plain_for_master(message).unwrap();
        assert_eq!(got.name, "proxy");
        assert_eq!(got.password, b"secret");
        assert_eq!(got.authzid.as_deref(), Some("alice"));
        // An authzid equal to the login name acts as nobody else.
        assert_eq!(
            parse_plain_for_master(b"tim\0tim\0pw"),
            Ok(creds("tim", b"pw"))
        );
    }

    #[test]
    fn plain_rfc4616_examples() {
        // RFC 4616 section 4: "\0tim\0tanstaaftanstaaf" and "Ursel\0Kurt\0xipj3plmq".
        assert_eq!(
            decode_plain(b"AHRpbQB0YW5zdGFhZnRhbnN0YWFm"),
            Ok(creds("tim", b"tanstaaftanstaaf"))
        );
        assert_eq!(
            decode_plain(b"VXJzZWwAS3VydAB4aXBqM3BsbXE="),
            Err(SaslError::AuthzidMismatch)
        );
        // authzid equal to authcid is fine, and so is missing padding and a trailing CR.
        assert_eq!(
            decode_plain(encode(b"tim\0tim\0pw").trim_end_matches('=').as_bytes()),
            Ok(creds("tim", b"pw"))
        );
        assert_eq!(
            decode_plain(b"AHRpbQB0YW5zdGFhZnRhbnN0YWFm\r"),
            Ok(creds("tim", b"tanstaaftanstaaf"))
        );
    }

    #[test]
    fn plain_refuses_bad_messages() {
        for (message, err) in [
            (&b"tim\0pw"[..], SaslError::Malformed),
            (b"\0tim\0pw\0extra", SaslError::Malformed),
            (b"\0\0pw", SaslError::Malformed),
            (b"\0tim\0", SaslError::Malformed),
            (b"\0t\xffm\0pw", SaslError::Malformed),
        ] {
            assert_eq!(
                decode_plain(encode(message).as_bytes()),
                Err(err),
                "{message:?}"
            );
        }
        assert_eq!(decode_plain(b"*"), Err(SaslError::Cancelled));
        assert_eq!(decode_plain(b"="), Err(SaslError::Malformed));
        assert_eq!(decode_plain(b"not base64!"), Err(SaslError::BadBase64));
        let long = vec![b'A'; MAX_ENCODED_LEN + 4];
        assert_eq!(decode_plain(&long), Err(SaslError::TooLong));
        // Passwords may hold any byte but NUL.
        assert_eq!(
            decode_plain(encode(b"\0tim\0p\xffw d").as_bytes()),
            Ok(creds("tim", b"p\xffw d"))
        );
    }

    #[test]
    fn login_exchange() {
        assert_eq!(
            decode_response(LOGIN_USERNAME_CHALLENGE.as_bytes()),
            Ok(b"Username:".to_vec())
        );
        assert_eq!(
            decode_response(LOGIN_PASSWORD_CHALLENGE.as_bytes()),
            Ok(b"Password:".to_vec())
        );
        assert_eq!(decode_login_name(b"dGlt"), Ok("tim".to_string()));
        assert_eq!(decode_response(b"c2VjcmV0"), Ok(b"secret".to_vec()));
        assert_eq!(decode_login_name(b"="), Err(SaslError::Malformed));
        assert_eq!(decode_login_name(b" * "), Err(SaslError::Cancelled));
        assert_eq!(decode_response(b"="), Ok(vec![]));
    }

    #[test]
    fn http_basic() {
        // RFC 7617 section 2: Aladdin / open sesame.
        assert_eq!(
            decode_http_basic("Basic QWxhZGRpbjpvcGVuIHNlc2FtZQ=="),
            Ok(creds("Aladdin", b"open sesame"))
        );
        assert_eq!(
            decode_http_basic("basic dGltOmE6Yg=="),
            Ok(creds("tim", b"a:b"))
        );
        assert_eq!(decode_http_basic("Bearer abc"), Err(SaslError::Malformed));
        assert_eq!(decode_http_basic("Basic dGlt"), Err(SaslError::Malformed));
        // Found by the sasl fuzz target: a user-id with NUL or other control characters
        // (RFC 7617 §2 forbids them; the SASL decoders refuse a NUL in a name too).
        for name in [&b"C\x14am\0tanaddin"[..], b"a\0b", b"al\nice", b"\x7f"] {
            let token = encode(&[name, b":pw"].concat());
            assert_eq!(
                decode_http_basic(&format!("Basic {token}")),
                Err(SaslError::Malformed),
                "{name:?}"
            );
        }
    }

    #[test]
    fn debug_hides_the_password() {
        let shown = format!("{:?}", creds("tim", b"hunter2"));
        assert!(
            shown.contains("tim") && !shown.contains("hunter2"),
            "{shown}"
        );
    }

    #[tokio::test]
    async fn plain_and_login_exchanges_over_a_line_connection() {
        use std::time::Duration;
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let b64 = |s: &[u8]| encode(s);
        let (server, mut client) = tokio::io::duplex(4096);
        let peer = inetkit_runtime::server::Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            local: "127.0.0.1:2".parse().unwrap(),
            listener: "test".into(),
            idle_timeout: Duration::from_secs(5),
            write_timeout: Duration::from_secs(5),
            shutdown: tokio_util::sync::CancellationToken::new(),
            login: inetkit_runtime::server::Login::none(),
            log: Default::default(),
        };
        let farewell = inetkit_runtime::conn::Farewell {
            idle: "BYE idle",
            shutdown: "BYE stopping",
            login: "BYE login timeout",
        };
        let mut conn = LineConn::new(server, peer, 1000, farewell);
        let mut smtp = LineChallenger {
            conn: &mut conn,
            prefix: "334 ",
        };
        // PLAIN with an initial response: no challenge.
        let initial = Some(b64(b"\0ann\0secret"));
        match exchange(&mut smtp, "plain", initial).await {
            Sasl::Credentials(c) => {
                assert_eq!((c.name.as_str(), &c.password[..]), ("ann", &b"secret"[..]))
            }
            other => panic!("PLAIN: {other:?}"),
        }
        // LOGIN: two challenges, two answers.
        client
            .write_all(format!("{}\r\n{}\r\n", b64(b"bob"), b64(b"pw")).as_bytes())
            .await
            .unwrap();
        match exchange(&mut smtp, "LOGIN", None).await {
            Sasl::Credentials(c) => {
                assert_eq!((c.name.as_str(), &c.password[..]), ("bob", &b"pw"[..]))
            }
            other => panic!("LOGIN: {other:?}"),
        }
        // A LOGIN cancelled at the user name asks nothing more; garbage is malformed.
        client.write_all(b"*\r\n").await.unwrap();
        assert!(matches!(
            exchange(&mut smtp, "LOGIN", None).await,
            Sasl::Cancelled
        ));
        assert!(matches!(
            exchange(&mut smtp, "PLAIN", Some("!!".into())).await,
            Sasl::Malformed
        ));
        assert!(matches!(
            exchange(&mut smtp, "CRAM-MD5", None).await,
            Sasl::Unsupported
        ));
        // The client leaves in the middle of a LOGIN.
        conn.flush().await.unwrap();
        let mut sent = vec![0u8; 3 * 18];
        client.read_exact(&mut sent).await.unwrap();
        assert_eq!(
            sent,
            b"334 VXNlcm5hbWU6\r\n334 UGFzc3dvcmQ6\r\n334 VXNlcm5hbWU6\r\n"
        );
        drop(client);
        let mut smtp = LineChallenger {
            conn: &mut conn,
            prefix: "334 ",
        };
        assert!(matches!(
            exchange(&mut smtp, "LOGIN", None).await,
            Sasl::Gone
        ));
    }

    #[tokio::test]
    async fn decoded_initial_responses_are_not_decoded_again() {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let (server, mut client) = tokio::io::duplex(4096);
        let peer = inetkit_runtime::server::Peer {
            addr: "127.0.0.1:1".parse().unwrap(),
            local: "127.0.0.1:2".parse().unwrap(),
            listener: "test".into(),
            idle_timeout: std::time::Duration::from_secs(5),
            write_timeout: std::time::Duration::from_secs(5),
            shutdown: tokio_util::sync::CancellationToken::new(),
            login: inetkit_runtime::server::Login::none(),
            log: Default::default(),
        };
        let farewell = inetkit_runtime::conn::Farewell {
            idle: "* BYE idle",
            shutdown: "* BYE stopping",
            login: "* BYE login timeout",
        };
        let mut conn = LineConn::new(server, peer, 1000, farewell);
        let mut imap = LineChallenger {
            conn: &mut conn,
            prefix: "+ ",
        };
        // PLAIN: the message itself, which would not be valid base64 text.
        let initial = Some(b"\0ann\0s=cr*t".to_vec());
        match exchange_decoded(&mut imap, "PLAIN", initial).await {
            Sasl::Credentials(c) => {
                assert_eq!((c.name.as_str(), &c.password[..]), ("ann", &b"s=cr*t"[..]))
            }
            other => panic!("PLAIN: {other:?}"),
        }
        // A decoded "*" is a name, not a cancellation; LOGIN then asks for the password only.
        client.write_all(b"cHc=\r\n").await.unwrap();
        match exchange_decoded(&mut imap, "login", Some(b"*".to_vec())).await {
            Sasl::Credentials(c) => {
                assert_eq!((c.name.as_str(), &c.password[..]), ("*", &b"pw"[..]))
            }
            other => panic!("LOGIN: {other:?}"),
        }
        // An empty initial response is a response (RFC 4959), which PLAIN cannot use.
        assert!(matches!(
            exchange_decoded(&mut imap, "PLAIN", Some(Vec::new())).await,
            Sasl::Malformed
        ));
        conn.flush().await.unwrap();
        let mut sent = vec![0u8; 16];
        client.read_exact(&mut sent).await.unwrap();
        assert_eq!(sent, b"+ UGFzc3dvcmQ6\r\n");
    }
}
