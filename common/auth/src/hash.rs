//! Password schemes of the users file, as Dovecot names and writes them.
//!
//! A stored password is `{SCHEME}hash`. Verification is done by maintained RustCrypto and
//! bcrypt crates: `argon2` (PHC strings), `sha-crypt` (`$6$`, `$5$`), `bcrypt` (`$2y$` ...).
//! A hash without a `{SCHEME}` prefix (or with `{CRYPT}`) is recognised by its crypt prefix,
//! since `openssl passwd -6` output pasted as is is common.

use std::fmt;

use argon2::{Argon2, PasswordHash, PasswordHasher, PasswordVerifier};
use sha_crypt::ShaCrypt;
use subtle::ConstantTimeEq;

/// The schemes we verify. New passwords are always [`Scheme::Argon2id`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    /// `{ARGON2ID}$argon2id$...`: what new passwords get (Dovecot's parameters).
    Argon2id,
    /// `{ARGON2I}$argon2i$...`, as older Dovecot versions wrote.
    Argon2i,
    /// `{SHA512-CRYPT}$6$...`, as `openssl passwd -6` and glibc's crypt(3) write.
    Sha512Crypt,
    /// `{SHA256-CRYPT}$5$...`.
    Sha256Crypt,
    /// `{BLF-CRYPT}$2y$...` (bcrypt; `$2a$`, `$2b$` and `$2x$` too).
    BlfCrypt,
    /// Clear text; for tests only. Never empty: an empty value is refused at load.
    Plain,
}

impl Scheme {
    /// The name between the braces, as Dovecot spells it.
    pub fn name(self) -> &'static str {
        match self {
            Scheme::Argon2id => "ARGON2ID",
            Scheme::Argon2i => "ARGON2I",
            Scheme::Sha512Crypt => "SHA512-CRYPT",
            Scheme::Sha256Crypt => "SHA256-CRYPT",
            Scheme::BlfCrypt => "BLF-CRYPT",
            Scheme::Plain => "PLAIN",
        }
    }

    /// A `{SCHEME}` name (case-insensitive, as in Dovecot). `CRYPT` is not here: it means
    /// "look at the hash", see [`Scheme::detect`].
    fn from_name(name: &str) -> Option<Scheme> {
        const ALL: [(&str, Scheme); 7] = [
            ("ARGON2ID", Scheme::Argon2id),
            ("ARGON2I", Scheme::Argon2i),
            ("SHA512-CRYPT", Scheme::Sha512Crypt),
            ("SHA256-CRYPT", Scheme::Sha256Crypt),
            ("BLF-CRYPT", Scheme::BlfCrypt),
            ("PLAIN", Scheme::Plain),
            ("CLEARTEXT", Scheme::Plain),
        ];
        ALL.iter()
            .find(|(n, _)| n.eq_ignore_ascii_case(name))
            .map(|&(_, s)| s)
    }

    /// The scheme of a crypt-style hash, by its `$id$` prefix.
    fn detect(hash: &str) -> Option<Scheme> {
        if hash.starts_with("$argon2id$") {
            Some(Scheme::Argon2id)
        } else if hash.starts_with("$argon2i$") {
            Some(Scheme::Argon2i)
        } else if hash.starts_with("$6$") {
            Some(Scheme::Sha512Crypt)
        } else if hash.starts_with("$5$") {
            Some(Scheme::Sha256Crypt)
        } else if ["$2a$", "$2b$", "$2x$", "$2y$"]
            .iter()
            .any(|p| hash.starts_with(p))
        {
            Some(Scheme::BlfCrypt)
        } else {
            None
        }
    }
}

impl fmt::Display for Scheme {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Why a stored password or a new hash is unusable. Never contains the hash itself.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum HashError {
    /// A `{SCHEME}` we do not verify (e.g. `{MD5}`); the name as written.
    #[error("unknown password scheme {{{0}}}")]
    UnknownScheme(String),
    /// Neither a `{SCHEME}` prefix nor a crypt prefix we know.
    #[error("no {{SCHEME}} prefix and not a recognised crypt hash ($6$, $5$, $2y$, $argon2id$)")]
    Unrecognised,
    /// The scheme is known but the hash after it does not have its shape.
    #[error("malformed {0} hash")]
    Malformed(Scheme),
    /// `{PLAIN}` with nothing after it: a password anyone could send.
    #[error("empty {{PLAIN}} password")]
    EmptyPassword,
    /// Hashing a new password failed (the hash crate's message).
    #[error("cannot hash the password: {0}")]
    Hashing(String),
}

/// A password field of the users file, parsed and checked for shape when the file is loaded.
#[derive(Clone, PartialEq, Eq)]
pub struct StoredPassword {
    scheme: Scheme,
    /// The part after `{SCHEME}`.
    hash: String,
}

// Hashes stay out of logs and debug output.
impl fmt::Debug for StoredPassword {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "StoredPassword({{{}}}…)", self.scheme)
    }
}

impl StoredPassword {
    /// Parses a password field: `{SCHEME}hash`, `{CRYPT}$6$...` or a bare `$6$...`.
    pub fn parse(field: &str) -> Result<StoredPassword, HashError> {
        let (scheme, hash) = match field.strip_prefix('{').and_then(|r| r.split_once('}')) {
            Some((name, hash)) if name.eq_ignore_ascii_case("CRYPT") => {
                (Scheme::detect(hash).ok_or(HashError::Unrecognised)?, hash)
            }
            Some((name, hash)) => (
                Scheme::from_name(name).ok_or_else(|| HashError::UnknownScheme(name.into()))?,
                hash,
            ),
            None => (Scheme::detect(field).ok_or(HashError::Unrecognised)?, field),
        };
        if scheme == Scheme::Plain && hash.is_empty() {
            return Err(HashError::EmptyPassword);
        }
        if !well_formed(scheme, hash) {
            return Err(HashError::Malformed(scheme));
        }
        Ok(StoredPassword {
            scheme,
            hash: hash.to_owned(),
        })
    }

    /// How the password is stored.
    pub fn scheme(&self) -> Scheme {
        self.scheme
    }

    /// The field as written in the users file, `{SCHEME}hash`.
    pub fn to_field(&self) -> String {
        format!("{{{}}}{}", self.scheme, self.hash)
    }

    /// Whether `password` matches. Slow by design for every scheme but PLAIN: call it from a
    /// blocking thread, not from an async task. An empty password never matches, whatever is
    /// stored.
    pub fn verify(&self, password: &[u8]) -> bool {
        if password.is_empty() {
            return false;
        }
        match self.scheme {
            Scheme::Argon2id | Scheme::Argon2i => Argon2::default()
                .verify_password(password, self.hash.as_str())
                .is_ok(),
            Scheme::Sha512Crypt | Scheme::Sha256Crypt => ShaCrypt::default()
                .verify_password(password, self.hash.as_str())
                .is_ok(),
            // bcrypt reads at most 72 bytes, like every other implementation.
            Scheme::BlfCrypt => bcrypt::verify(password, &self.hash).unwrap_or(false),
            Scheme::Plain => self.hash.as_bytes().ct_eq(password).into(),
        }
    }
}

/// A cheap shape check at load time, so a broken hash is reported with its line number
/// instead of silently failing every login.
fn well_formed(scheme: Scheme, hash: &str) -> bool {
    match scheme {
        Scheme::Argon2id | Scheme::Argon2i => {
            let ident = if scheme == Scheme::Argon2id {
                "argon2id"
            } else {
                "argon2i"
            };
            PasswordHash::new(hash).is_ok_and(|h| {
                h.algorithm.as_str() == ident
                    && h.salt.is_some()
                    && h.hash.is_some()
                    && argon2::Params::try_from(&h).is_ok()
            })
        }
        Scheme::Sha512Crypt | Scheme::Sha256Crypt => {
            let (prefix, len) = if scheme == Scheme::Sha512Crypt {
                ("$6$", 86)
            } else {
                ("$5$", 43)
            };
            // $id$[rounds=N$]salt$hash, the hash in crypt's base64 alphabet.
            let Some(rest) = hash.strip_prefix(prefix) else {
                return false;
            };
            let mut fields: Vec<&str> = rest.split('$').collect();
            if let Some(rounds) = fields.first().and_then(|f| f.strip_prefix("rounds=")) {
                let rounds = rounds.parse::<u32>();
                if !rounds.is_ok_and(|r| sha_crypt::Params::new(r).is_ok()) {
                    return false;
                }
                fields.remove(0);
            }
            matches!(fields.as_slice(), [_salt, out] if out.len() == len && out.bytes().all(is_crypt64))
        }
        Scheme::BlfCrypt => {
            // $2y$NN$ + 22 salt + 31 hash characters.
            // Bytes, not str slices: a non-ASCII character must not panic the check.
            let b = hash.as_bytes();
            let cost = b.get(4..6).and_then(|c| std::str::from_utf8(c).ok());
            b.len() == 60
                && b[3] == b'$'
                && b[6] == b'$'
                && cost.is_some_and(|c| c.parse::<u32>().is_ok_and(|c| (4..=31).contains(&c)))
                && b[7..].iter().all(|&c| is_crypt64(c))
        }
        Scheme::Plain => true,
    }
}

fn is_crypt64(c: u8) -> bool {
    c.is_ascii_alphanumeric() || c == b'.' || c == b'/'
}

/// Argon2id with Dovecot's parameters (`doveadm pw -s ARGON2ID`: m=65536 KiB, t=3, p=1).
fn argon2id() -> Result<Argon2<'static>, HashError> {
    let params = argon2::Params::new(65536, 3, 1, None)
        .map_err(|err| HashError::Hashing(err.to_string()))?;
    Ok(Argon2::new(
        argon2::Algorithm::Argon2id,
        argon2::Version::V0x13,
        params,
    ))
}

/// Hashes a new password: `{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$salt$hash`, the field
/// Dovecot writes, with a fresh random salt.
pub fn hash_password(password: &[u8]) -> Result<String, HashError> {
    let hash = argon2id()?
        .hash_password(password)
        .map_err(|err| HashError::Hashing(err.to_string()))?;
    Ok(format!("{{{}}}{hash}", Scheme::Argon2id))
}

/// An ARGON2ID hash, with the parameters new hashes get, of a random password nobody knows.
const DUMMY: &str = "$argon2id$v=19$m=65536,t=3,p=1$fF4c1iMpjkBFBRdcrSdPGw$GoMo2p71WsldfDWJdtmqeN7P3aItfZvy3N/QJniAP9g";

/// Does the work of verifying against a default hash and throws the answer away, so that an
/// unknown user costs as much time as a known one (with an ARGON2ID hash, the default).
pub fn verify_dummy(password: &[u8]) {
    let _ = Argon2::default().verify_password(password, DUMMY);
}

#[cfg(test)]
mod tests {
    use super::*;

    // Made by Dovecot 2.3.19: `doveadm -c /dev/null pw -s SCHEME -p secret`.
    const DOVECOT: [&str; 6] = [
        "{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$sT5nM/aLt5gEqy1zWIRpiQ$b1og8H+grJ65NtvHLE0oLSVpvNfaUOzbEJABg4+UO5E",
        "{ARGON2I}$argon2i$v=19$m=32768,t=4,p=1$kiIp9JWMmqsn/5/EmRwm7g$tlG6XO7/wI1pcr4tdnLmRIm3JC9IoqCyBmT+Vrw2VgA",
        "{SHA512-CRYPT}$6$ay2kaGB3g3VLUEIv$6z3UYmAzKE0YEOA7XzB/5RZR36V1k5WXD6KfEcGbhHULGf6KxrSH3ktAZTG9n82XNHXwwrg6.0zxgqNEbV5em.",
        "{SHA256-CRYPT}$5$/wG6rltNhvQCV/Hz$LJUrJZss14yHTXfBgq28LNvMY9H4Mrs.UQfzCLQPxe2",
        "{BLF-CRYPT}$2y$05$70XJu/PLb7Gng3rR6nVpHe8QAFX4zwi4Wr05YCTLyfMMBzxIarlse",
        "{PLAIN}secret",
    ];

    fn parse(field: &str) -> StoredPassword {
        match StoredPassword::parse(field) {
            Ok(p) => p,
            Err(err) => panic!("{field}: {err}"),
        }
    }

    #[test]
    fn dovecot_hashes_verify() {
        let schemes = [
            Scheme::Argon2id,
            Scheme::Argon2i,
            Scheme::Sha512Crypt,
            Scheme::Sha256Crypt,
            Scheme::BlfCrypt,
            Scheme::Plain,
        ];
        for (field, scheme) in DOVECOT.iter().zip(schemes) {
            let stored = parse(field);
            assert_eq!(stored.scheme(), scheme);
            assert!(stored.verify(b"secret"), "{field}");
            assert!(!stored.verify(b"Secret"), "{field}");
            assert!(!stored.verify(b""), "{field}");
            assert!(!stored.verify(b"secret\0"), "{field}");
            assert_eq!(stored.to_field(), *field);
        }
    }

    // Vectors of the SHA-crypt specification (Drepper), as glibc's crypt(3) writes them
    // (salt cut to 16 characters), with and without explicit rounds.
    #[test]
    fn sha_crypt_reference_vectors() {
        let vectors = [
            ("$5$rounds=5000$toolongsaltstrin$Un/5jzAHMgOGZ5.mWJpuVolil07guHPvOW8mGRcvxa5", "This is just a test"),
            ("$6$rounds=5000$toolongsaltstrin$lQ8jolhgVRVhY4b5pZKaysCLi0QBxGoNeKQzQ3glMhwllF7oGDZxUhx1yxdYcz/e1JSbq3y6JMxxl8audkUEm0", "This is just a test"),
            ("$5$rounds=1400$anotherlongsalts$Rx.j8H.h8HjEDGomFU8bDkXm3XIUnzyxf12oP84Bnq1", "a very much longer text to encrypt.  This one even stretches over morethan one line."),
            ("$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQJuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1", "Hello world!"),
        ];
        for (hash, password) in vectors {
            let stored = parse(hash);
            assert!(stored.verify(password.as_bytes()), "{hash}");
            assert!(!stored.verify(b"This is just a tesT"), "{hash}");
        }
    }

    #[test]
    fn bare_and_crypt_prefixed_hashes_are_recognised() {
        // `openssl passwd -6 -salt saltsalt secret`
        let bare = "$6$saltsalt$TVLlQcbpFVof5W3Yz4DTP6gRstiNuHwwTt6GLc1E5n0U0aDehy0S5knV8wiOQSpT0Y77vwPZN.Pq.H91p5hVO1";
        let stored = parse(bare);
        assert_eq!(stored.scheme(), Scheme::Sha512Crypt);
        assert!(stored.verify(b"secret"));
        assert_eq!(stored.to_field(), format!("{{SHA512-CRYPT}}{bare}"));

        let crypt = parse("{CRYPT}$2y$05$70XJu/PLb7Gng3rR6nVpHe8QAFX4zwi4Wr05YCTLyfMMBzxIarlse");
        assert_eq!(crypt.scheme(), Scheme::BlfCrypt);
        assert!(crypt.verify(b"secret"));
        // glibc and Python's bcrypt write $2b$ (this one is glibc's crypt(3)).
        let b2b = parse("$2b$04$abcdefghijklmnopqrstuu2r9OfJnfCsdneAXAGHnS4UpFFP8WIrW");
        assert_eq!(b2b.scheme(), Scheme::BlfCrypt);
        assert!(b2b.verify(b"secret"));
        assert!(!b2b.verify(b"secreT"));

        assert_eq!(parse("{plain}x").scheme(), Scheme::Plain);
        assert_eq!(parse("{CLEARTEXT}x").scheme(), Scheme::Plain);
    }

    #[test]
    fn bad_fields_are_refused_with_a_reason() {
        assert_eq!(
            StoredPassword::parse("{MD5}abc"),
            Err(HashError::UnknownScheme("MD5".into()))
        );
        assert_eq!(
            StoredPassword::parse("secret"),
            Err(HashError::Unrecognised)
        );
        assert_eq!(StoredPassword::parse("!"), Err(HashError::Unrecognised));
        assert_eq!(
            StoredPassword::parse("{PLAIN}"),
            Err(HashError::EmptyPassword)
        );
        assert_eq!(
            StoredPassword::parse("{CRYPT}ab01FAX.bQRSU"),
            Err(HashError::Unrecognised)
        );
        for (field, scheme) in [
            ("{SHA512-CRYPT}$6$salt$short", Scheme::Sha512Crypt),
            ("{SHA512-CRYPT}$5$/wG6rltNhvQCV/Hz$LJUrJZss14yHTXfBgq28LNvMY9H4Mrs.UQfzCLQPxe2", Scheme::Sha512Crypt),
            ("{SHA256-CRYPT}$5$rounds=10$s$LJUrJZss14yHTXfBgq28LNvMY9H4Mrs.UQfzCLQPxe2", Scheme::Sha256Crypt),
            ("{BLF-CRYPT}$2y$05$70XJu/PLb7Gng3rR6nVpHe8QAFX4zwi4Wr05YCTLyfMMBzxIarls", Scheme::BlfCrypt),
            ("{BLF-CRYPT}$2y$99$70XJu/PLb7Gng3rR6nVpHe8QAFX4zwi4Wr05YCTLyfMMBzxIarlse", Scheme::BlfCrypt),
            ("{ARGON2ID}$argon2i$v=19$m=32768,t=4,p=1$kiIp9JWMmqsn/5/EmRwm7g$tlG6XO7/wI1pcr4tdnLmRIm3JC9IoqCyBmT+Vrw2VgA", Scheme::Argon2id),
            ("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$sT5nM/aLt5gEqy1zWIRpiQ", Scheme::Argon2id),
            // A multi-byte character where the cost or the rounds are read: refused, no panic.
            ("{BLF-CRYPT}$2y$\u{e9}$70XJu/PLb7Gng3rR6nVpHe8QAFX4zwi4Wr05YCTLyfMMBzxIarlse", Scheme::BlfCrypt),
            ("{SHA512-CRYPT}$6$rounds=\u{e9}$s$6z3UYmAzKE0YEOA7XzB/5RZR36V1k5WXD6KfEcGbhHULGf6KxrSH3ktAZTG9n82XNHXwwrg6.0zxgqNEbV5em.", Scheme::Sha512Crypt),
        ] {
            assert_eq!(StoredPassword::parse(field), Err(HashError::Malformed(scheme)), "{field}");
        }
    }

    #[test]
    fn new_hashes_are_dovecot_argon2id() {
        let field = match hash_password(b"pa:ss word\xff") {
            Ok(f) => f,
            Err(err) => panic!("{err}"),
        };
        assert!(
            field.starts_with("{ARGON2ID}$argon2id$v=19$m=65536,t=3,p=1$"),
            "{field}"
        );
        let stored = parse(&field);
        assert!(stored.verify(b"pa:ss word\xff"));
        assert!(!stored.verify(b"pa:ss word"));
        // A fresh salt every time.
        assert_ne!(hash_password(b"x").ok(), hash_password(b"x").ok());
        // The dummy is a well-formed hash with the same parameters.
        assert_eq!(parse(DUMMY).scheme(), Scheme::Argon2id);
        assert!(DUMMY.starts_with("$argon2id$v=19$m=65536,t=3,p=1$"));
    }

    #[test]
    fn an_empty_password_never_matches() {
        // However it got in (a PLAIN value cannot be empty, but verify does not rely on it).
        let stored = StoredPassword {
            scheme: Scheme::Plain,
            hash: String::new(),
        };
        assert!(!stored.verify(b""));
        assert!(!parse(DUMMY).verify(b""));
    }

    #[test]
    fn debug_output_hides_the_hash() {
        let shown = format!("{:?}", parse("{PLAIN}hunter2"));
        assert!(!shown.contains("hunter2"), "{shown}");
    }
}
