//! The line a sysadmin greps for when a message went missing: Postfix's `from=<…>`, `to=<…>`,
//! `size=` on one line, with the spool id the client was told and the user who sent it.
//!
//! ```text
//! queued id="6b11acd5.b36af.44200000" from=<alice@example.org>
//!     to=<bob@example.org>,<carol@example.org> nrcpt=2 size=1234 user=alice
//! ```
//!
//! Past [`LOGGED_RECIPIENTS`] the list ends in `,+N more`; `nrcpt=` (Postfix's name) is always
//! the whole count.

use std::fmt;

use inetkit_spool::{Envelope, Recipient};

/// Recipients named on the line; past this, `+N more` (a message may have hundreds).
pub(crate) const LOGGED_RECIPIENTS: usize = 10;

/// Logs one accepted message: spool id `id`, `size` bytes as stored.
pub(crate) fn log_queued(id: &str, size: u64, envelope: &Envelope) {
    tracing::info!(
        id,
        from = %Angled(&envelope.from),
        to = %Recipients(&envelope.recipients),
        nrcpt = envelope.recipients.len(),
        size,
        user = %envelope.user,
        "queued"
    );
}

/// An address in angle brackets, `<>` for the null sender, as Postfix logs it.
struct Angled<'a>(&'a str);

impl fmt::Display for Angled<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "<{}>", self.0)
    }
}

/// The recipients in RCPT TO order, comma-separated, the first [`LOGGED_RECIPIENTS`] of them.
struct Recipients<'a>(&'a [Recipient]);

impl fmt::Display for Recipients<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (n, recipient) in self.0.iter().take(LOGGED_RECIPIENTS).enumerate() {
            if n > 0 {
                f.write_str(",")?;
            }
            write!(f, "{}", Angled(address(recipient)))?;
        }
        let rest = self.0.len().saturating_sub(LOGGED_RECIPIENTS);
        if rest > 0 {
            write!(f, ",+{rest} more")?;
        }
        Ok(())
    }
}

/// The address as the client gave it in RCPT TO.
fn address(recipient: &Recipient) -> &str {
    match recipient {
        Recipient::Local { address, .. } | Recipient::Remote { address } => address,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn local(address: &str) -> Recipient {
        Recipient::Local {
            address: address.to_owned(),
            user: "bob".to_owned(),
        }
    }

    #[test]
    fn recipients_are_listed_in_order_up_to_the_limit() {
        let two = [
            local("bob@localhost"),
            Recipient::Remote {
                address: "carol@example.org".to_owned(),
            },
        ];
        assert_eq!(
            Recipients(&two).to_string(),
            "<bob@localhost>,<carol@example.org>"
        );
        let many: Vec<_> = (0..LOGGED_RECIPIENTS + 3)
            .map(|n| local(&format!("u{n}@localhost")))
            .collect();
        let line = Recipients(&many).to_string();
        assert!(line.starts_with("<u0@localhost>,<u1@localhost>,"), "{line}");
        assert!(line.ends_with("<u9@localhost>,+3 more"), "{line}");
        assert_eq!(line.matches('<').count(), LOGGED_RECIPIENTS);
    }

    #[test]
    fn the_null_sender_is_empty_brackets() {
        assert_eq!(Angled("").to_string(), "<>");
    }
}
