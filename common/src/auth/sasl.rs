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

use base64::alphabet;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig};
use base64::engine::DecodePaddingMode;
use base64::Engine;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SaslError {
    #[error("authentication cancelled")]
    Cancelled,
    #[error("invalid base64")]
    BadBase64,
    #[error("response too long")]
    TooLong,
    #[error("malformed credentials")]
    Malformed,
    #[error("authorization identity differs from the authentication identity")]
    AuthzidMismatch,
}

/// Name and password from a client.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub name: String,
    pub password: Vec<u8>,
}

// Passwords stay out of logs.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("name", &self.name)
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
    if !authzid.is_empty() && authzid != authcid {
        return Err(SaslError::AuthzidMismatch);
    }
    Ok(Credentials {
        name,
        password: password.to_vec(),
    })
}

/// Decodes the LOGIN user name response.
pub fn decode_login_name(line: &[u8]) -> Result<String, SaslError> {
    let name = decode_response(line)?;
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
    if name.is_empty() {
        return Err(SaslError::Malformed);
    }
    Ok(Credentials {
        name: name.to_owned(),
        password: decoded[colon + 1..].to_vec(),
    })
}

/// Base64 for a server challenge (e.g. an empty one is `""`, sent as `+ `).
pub fn encode(data: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(data)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(name: &str, password: &[u8]) -> Credentials {
        Credentials {
            name: name.into(),
            password: password.to_vec(),
        }
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
    }

    #[test]
    fn debug_hides_the_password() {
        let shown = format!("{:?}", creds("tim", b"hunter2"));
        assert!(
            shown.contains("tim") && !shown.contains("hunter2"),
            "{shown}"
        );
    }
}
