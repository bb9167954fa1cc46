//! Mail addresses as recipients and senders name users: `local[+detail]@domain`, checked
//! and compared without regard to case.
//!
//! RFC 5321 lets a server treat local parts case-sensitively, but every mail system a
//! sysadmin meets (Postfix, Dovecot, Exim by default) does not, and mail to `Alice@` that
//! bounces while `alice@` works is a surprise nobody wants; domains are case-insensitive by
//! definition (RFC 1035 §2.3.3).

use super::users::MAX_LOCAL_PART_LEN;

/// The longest address (RFC 5321 §4.5.3.1.3: a path is at most 256 octets with its brackets).
pub const MAX_ADDRESS_LEN: usize = 254;

/// A checked address, in lower case, with the `+detail` split off the local part.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The local part before any `+`: what names a user or an alias.
    pub local: String,
    /// What followed the first `+` of the local part, if anything did.
    pub detail: Option<String>,
    /// The domain.
    pub domain: String,
}

impl Address {
    /// `local@domain`, without the detail: the name a user or alias would have.
    pub fn without_detail(&self) -> String {
        format!("{}@{}", self.local, self.domain)
    }
}

/// Why an address is refused; the text is meant for a protocol reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum AddressError {
    /// No `@` at all.
    #[error("an address needs an '@' and a domain")]
    NoAt,
    /// More than one `@` (a quoted local part holding one is not supported).
    #[error("an address has exactly one '@'")]
    TwoAts,
    /// Nothing before the `@` (or only a `+detail`).
    #[error("the part before '@' is empty")]
    EmptyLocalPart,
    /// The domain is missing or not a domain name (an address literal is not accepted).
    #[error("the part after '@' is not a domain name")]
    BadDomain,
    /// `user@[192.0.2.1]`: submission is for mail to named domains.
    #[error("address literals ([...]) are not accepted; use a domain name")]
    AddressLiteral,
    /// A control character, a space or a character that needs quoting.
    #[error("the address holds a control character, a space or a character that needs quoting")]
    BadCharacter,
    /// The local part is over 64 bytes.
    #[error("the part before '@' is longer than 64 bytes")]
    LocalPartTooLong,
    /// The whole address is over [`MAX_ADDRESS_LEN`] bytes.
    #[error("the address is longer than 254 bytes")]
    TooLong,
}

/// Checks and splits `local[+detail]@domain`. Local parts are RFC 5321 dot-atoms (UTF-8
/// allowed, as SMTPUTF8 does); quoted local parts and address literals are refused.
pub fn parse_address(text: &str) -> Result<Address, AddressError> {
    if text.len() > MAX_ADDRESS_LEN {
        return Err(AddressError::TooLong);
    }
    if text
        .rsplit_once('@')
        .is_some_and(|(_, domain)| domain.starts_with('['))
    {
        return Err(AddressError::AddressLiteral);
    }
    // RFC 5322 atext, plus anything non-ASCII (RFC 6532).
    let atext = |c: char| {
        c.is_ascii_alphanumeric()
            || "!#$%&'*+-/=?^_`{|}~.".contains(c)
            || !c.is_ascii() && !c.is_control()
    };
    if !text.chars().all(|c| atext(c) || c == '@') {
        return Err(AddressError::BadCharacter);
    }
    let Some((local, domain)) = text.split_once('@') else {
        return Err(AddressError::NoAt);
    };
    if domain.contains('@') {
        return Err(AddressError::TwoAts);
    }
    if local.len() > MAX_LOCAL_PART_LEN {
        return Err(AddressError::LocalPartTooLong);
    }
    if !is_mail_domain(domain) {
        return Err(AddressError::BadDomain);
    }
    let local = local.to_ascii_lowercase();
    let (local, detail) = match local.split_once('+') {
        Some((name, detail)) => (name.to_owned(), Some(detail.to_owned())),
        None => (local, None),
    };
    if local.is_empty() {
        return Err(AddressError::EmptyLocalPart);
    }
    Ok(Address {
        local,
        detail,
        domain: domain.to_ascii_lowercase(),
    })
}

/// Dot-separated labels of letters, digits and inner hyphens, or UTF-8 (an internationalised
/// domain under SMTPUTF8, RFC 6531), each at most 63 bytes; 255 bytes in all.
fn is_mail_domain(domain: &str) -> bool {
    let label = |l: &str| {
        let ok = |c: char| c.is_ascii_alphanumeric() || c == '-' || !c.is_ascii();
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.chars().all(ok)
    };
    domain.len() <= 255 && domain.split('.').all(label)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_split_and_lower_cased() {
        let parsed = parse_address("Alice+Lists@Example.ORG");
        assert_eq!(
            parsed,
            Ok(Address {
                local: "alice".into(),
                detail: Some("lists".into()),
                domain: "example.org".into(),
            })
        );
        assert_eq!(
            parsed.map(|a| a.without_detail()).as_deref(),
            Ok("alice@example.org")
        );
        assert_eq!(
            parse_address("o'neil.x@localhost").map(|a| a.detail),
            Ok(None)
        );
        assert!(parse_address("jörg@example.org").is_ok());
        assert_eq!(
            parse_address("Jörg@Bücher.Example")
                .map(|a| a.domain)
                .as_deref(),
            Ok("bücher.example")
        );
    }

    #[test]
    fn malformed_addresses_say_why() {
        let long_local = format!("{}@x.org", "a".repeat(65));
        let long = format!("a@{}.org", "b.".repeat(130));
        for (bad, err) in [
            ("alice", AddressError::NoAt),
            ("a@b@localhost", AddressError::TwoAts),
            ("@localhost", AddressError::EmptyLocalPart),
            ("+x@localhost", AddressError::EmptyLocalPart),
            ("a@", AddressError::BadDomain),
            ("a@[127.0.0.1]", AddressError::AddressLiteral),
            ("a@-x.org", AddressError::BadDomain),
            ("a@x..org", AddressError::BadDomain),
            ("a\u{1}b@localhost", AddressError::BadCharacter),
            ("a b@localhost", AddressError::BadCharacter),
            ("\"a\"@localhost", AddressError::BadCharacter),
            ("a\u{85}@localhost", AddressError::BadCharacter),
            (long_local.as_str(), AddressError::LocalPartTooLong),
            (long.as_str(), AddressError::TooLong),
        ] {
            assert_eq!(parse_address(bad), Err(err), "{bad:?}");
        }
    }
}
