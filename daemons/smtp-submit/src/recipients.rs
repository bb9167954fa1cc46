//! What an address means here: a local user, a list of them through the aliases file, or a
//! remote address for the smarthost.
//!
//! An address whose domain is one of the local domains is looked up, without regard to case
//! and with any `+detail` dropped, in this order (Postfix's: the full address before the
//! local part, an alias before a mailbox):
//!
//! 1. the alias `local@domain`, 2. the user `local@domain`,
//! 3. the alias `local`, 4. the user `local`.
//!
//! An alias's targets are resolved the same way: an address by these rules (or relayed, when
//! its domain is not local), a bare name as an alias, else a user. An alias that names itself
//! (`alice: alice, bob`) means the user of that name, as in `/etc/aliases`; any other return to
//! an alias already being expanded is a loop. Expansion is bounded in depth and in size.
//!
//! `root` and `postmaster` always reach someone (RFC 5321 §4.5.1 requires postmaster): when
//! neither is a user nor an alias, or an alias leads to `root` and nobody is called that, the
//! mail goes to the system mailbox `root` in the mail root, as Postfix leaves root's mail in
//! `/var/mail/root` (read it with `inetkit mail list root`; name a user with `root: alice` in
//! the aliases file).

use inetkit_auth::address::{parse_address, Address, AddressError};
use inetkit_auth::aliases::Aliases;
use inetkit_auth::UsersFile;

/// Aliases naming aliases, at most this deep.
pub(crate) const MAX_ALIAS_DEPTH: usize = 8;
/// Recipients one address may expand to.
pub(crate) const MAX_EXPANSION: usize = 1000;

/// Where mail for an address goes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Target {
    /// The INBOX of this user (their name in the users file).
    Local(String),
    /// This address, through the smarthost.
    Remote(String),
}

/// Why mail for an address cannot be accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Refusal {
    BadAddress(AddressError),
    NoSuchUser,
    /// The aliases expanded so far, and the target of the last one that is nobody here.
    UnknownTarget {
        chain: Vec<String>,
        target: String,
    },
    /// The aliases expanded so far, ending with the one met again.
    Loop(Vec<String>),
    TooDeep(Vec<String>),
    TooMany(String),
}

impl Refusal {
    /// The SMTP reply.
    pub(crate) fn reply(&self) -> String {
        match self {
            Refusal::BadAddress(err) => format!("501 5.1.3 Bad recipient address syntax: {err}."),
            Refusal::NoSuchUser => "550 5.1.1 No such user here.".to_owned(),
            Refusal::UnknownTarget { chain, target } => format!(
                "550 5.1.1 Alias {} leads to {target}, which is neither a user nor an alias \
                 here; the postmaster should add one to the aliases file.",
                chain.join(" -> ")
            ),
            Refusal::Loop(chain) => format!("550 5.4.6 Alias loop: {}.", chain.join(" -> ")),
            Refusal::TooDeep(chain) => format!(
                "550 5.4.6 Aliases nested more than {MAX_ALIAS_DEPTH} deep: {}.",
                chain.join(" -> ")
            ),
            Refusal::TooMany(alias) => {
                format!("550 5.5.3 Alias {alias} expands to more than {MAX_EXPANSION} recipients.")
            }
        }
    }
}

/// The users, aliases and local domains an address is resolved against (one version of each
/// files for a whole lookup).
pub(crate) struct Directory<'a> {
    pub users: &'a UsersFile,
    pub aliases: &'a Aliases,
    /// Lower case.
    pub local_domains: &'a [String],
}

impl Directory<'_> {
    fn is_local(&self, domain: &str) -> bool {
        self.local_domains.iter().any(|d| d == domain)
    }

    /// Where mail for `address` (as given in RCPT TO) goes: never empty.
    pub(crate) fn resolve(&self, address: &str) -> Result<Vec<Target>, Refusal> {
        let parsed = parse_address(address).map_err(Refusal::BadAddress)?;
        if !self.is_local(&parsed.domain) {
            return Ok(vec![Target::Remote(address.to_owned())]);
        }
        let mut expansion = Expansion::default();
        self.local(&parsed, &mut expansion)?;
        Ok(expansion.targets)
    }

    /// The user whose address `address` is, for the sender check: its local domain's user by
    /// the lookup order above, aliases left out (an alias gives nobody the right to send as
    /// it; `[smtp.senders]` does).
    pub(crate) fn owner(&self, address: &str) -> Option<&str> {
        let parsed = parse_address(address).ok()?;
        if !self.is_local(&parsed.domain) {
            return None;
        }
        [parsed.without_detail(), parsed.local]
            .iter()
            .find_map(|name| self.users.get(name))
            .map(|entry| entry.user.name.as_str())
    }

    /// A local address: by alias or user, the full address first; then the system mailbox.
    fn local(&self, address: &Address, expansion: &mut Expansion) -> Result<(), Refusal> {
        for name in [address.without_detail(), address.local.clone()] {
            if self.aliases.get(&name).is_some() {
                return self.alias(&name, expansion);
            }
            if let Some(entry) = self.users.get(&name) {
                return expansion.add(Target::Local(entry.user.name.clone()));
            }
        }
        match system_mailbox(&address.local) {
            Some(mailbox) => expansion.add(Target::Local(mailbox.to_owned())),
            None => Err(Refusal::NoSuchUser),
        }
    }

    /// Expands the alias `name` (which exists) into `expansion`.
    fn alias(&self, name: &str, expansion: &mut Expansion) -> Result<(), Refusal> {
        if expansion.chain.iter().any(|n| n == name) {
            if let Some(entry) = self.users.get(name) {
                // `alice: alice, …`: alice's own mailbox.
                return expansion.add(Target::Local(entry.user.name.clone()));
            }
            let mut chain = expansion.chain.clone();
            chain.push(name.to_owned());
            return Err(Refusal::Loop(chain));
        }
        if expansion.chain.len() >= MAX_ALIAS_DEPTH {
            let mut chain = expansion.chain.clone();
            chain.push(name.to_owned());
            return Err(Refusal::TooDeep(chain));
        }
        expansion.chain.push(name.to_owned());
        for target in self.aliases.get(name).unwrap_or_default() {
            self.target(target, expansion)?;
        }
        expansion.chain.pop();
        Ok(())
    }

    /// One target of the alias last on `expansion.chain`.
    fn target(&self, target: &str, expansion: &mut Expansion) -> Result<(), Refusal> {
        let unknown = |expansion: &Expansion| Refusal::UnknownTarget {
            chain: expansion.chain.clone(),
            target: target.to_owned(),
        };
        if target.contains('@') {
            // The parser let only valid addresses through.
            let Ok(address) = parse_address(target) else {
                return Err(unknown(expansion));
            };
            if !self.is_local(&address.domain) {
                return expansion.add(Target::Remote(target.to_owned()));
            }
            return match self.local(&address, expansion) {
                Err(Refusal::NoSuchUser) => Err(unknown(expansion)),
                other => other,
            };
        }
        let name = target.to_ascii_lowercase();
        if self.aliases.get(&name).is_some() {
            return self.alias(&name, expansion);
        }
        match (self.users.get(&name), system_mailbox(&name)) {
            (Some(entry), _) => expansion.add(Target::Local(entry.user.name.clone())),
            (None, Some(mailbox)) => expansion.add(Target::Local(mailbox.to_owned())),
            (None, None) => Err(unknown(expansion)),
        }
    }
}

/// The mailbox that `root` and `postmaster` reach when no user or alias has their name.
const SYSTEM_MAILBOX: &str = "root";

/// The system mailbox for `name` (a lower-case local part) if it is one that must always reach
/// someone.
fn system_mailbox(name: &str) -> Option<&'static str> {
    matches!(name, "root" | "postmaster").then_some(SYSTEM_MAILBOX)
}

/// An expansion in progress: the aliases being expanded, outermost first, and the targets
/// found so far, each once.
#[derive(Default)]
struct Expansion {
    chain: Vec<String>,
    targets: Vec<Target>,
}

impl Expansion {
    fn add(&mut self, target: Target) -> Result<(), Refusal> {
        if self.targets.contains(&target) {
            return Ok(());
        }
        if self.targets.len() >= MAX_EXPANSION {
            let outermost = self.chain.first().cloned().unwrap_or_default();
            return Err(Refusal::TooMany(outermost));
        }
        self.targets.push(target);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn directory_test(users: &str, aliases: &str, check: impl Fn(&Directory<'_>)) {
        let (users, problems) = UsersFile::parse(users.as_bytes());
        assert!(problems.is_empty(), "{problems:?}");
        let (aliases, problems) = inetkit_auth::aliases::parse(aliases.as_bytes());
        assert!(problems.is_empty(), "{problems:?}");
        let local = ["localhost".to_owned(), "example.org".to_owned()];
        check(&Directory {
            users: &users,
            aliases: &aliases,
            local_domains: &local,
        });
    }

    fn local(names: &[&str]) -> Result<Vec<Target>, Refusal> {
        Ok(names
            .iter()
            .map(|n| Target::Local((*n).to_owned()))
            .collect())
    }

    const USERS: &str = "alice:{PLAIN}a\nbob:{PLAIN}b\nalice@example.org:{PLAIN}c\n";

    #[test]
    fn users_by_address_case_and_detail() {
        directory_test(USERS, "", |d| {
            assert_eq!(d.resolve("alice@localhost"), local(&["alice"]));
            assert_eq!(d.resolve("ALICE+lists@LocalHost"), local(&["alice"]));
            assert_eq!(
                d.resolve("Alice@Example.org"),
                local(&["alice@example.org"])
            );
            assert_eq!(d.resolve("bob@example.org"), local(&["bob"]));
            assert_eq!(d.resolve("carol@localhost"), Err(Refusal::NoSuchUser));
            assert_eq!(
                d.resolve("Carol@Elsewhere.example"),
                Ok(vec![Target::Remote("Carol@Elsewhere.example".into())])
            );
            assert_eq!(
                d.resolve("a@b@localhost"),
                Err(Refusal::BadAddress(AddressError::TwoAts))
            );
            assert_eq!(d.owner("Alice+x@localhost"), Some("alice"));
            assert_eq!(d.owner("alice@example.org"), Some("alice@example.org"));
            assert_eq!(d.owner("bob@EXAMPLE.org"), Some("bob"));
            assert_eq!(d.owner("bob@elsewhere.example"), None);
        });
    }

    #[test]
    fn aliases_come_first_and_expand() {
        let aliases = "postmaster: root\n\
                       root: alice\n\
                       team: alice, bob+team@localhost, alice@example.org,\n  carol@remote.example\n\
                       bob@example.org: alice\n\
                       self: self2\n\
                       alice: alice, bob\n";
        directory_test(USERS, aliases, |d| {
            assert_eq!(d.resolve("PostMaster@localhost"), local(&["alice", "bob"]));
            assert_eq!(
                d.resolve("team+x@example.org"),
                Ok(vec![
                    Target::Local("alice".into()),
                    Target::Local("bob".into()),
                    Target::Local("alice@example.org".into()),
                    Target::Remote("carol@remote.example".into()),
                ])
            );
            // The full address's alias before the user bob, who still has bob@localhost.
            assert_eq!(d.resolve("bob@example.org"), local(&["alice", "bob"]));
            assert_eq!(d.resolve("bob@localhost"), local(&["bob"]));
            assert_eq!(
                d.resolve("self@localhost"),
                Err(Refusal::UnknownTarget {
                    chain: vec!["self".into()],
                    target: "self2".into()
                })
            );
            // Aliases give no right to send as them.
            assert_eq!(d.owner("postmaster@localhost"), None);
        });
    }

    #[test]
    fn loops_depth_and_size_are_bounded() {
        directory_test(USERS, "a: b\nb: c@localhost\nc: a\n", |d| {
            let refusal = d.resolve("a@localhost");
            assert_eq!(
                refusal,
                Err(Refusal::Loop(vec![
                    "a".into(),
                    "b".into(),
                    "c".into(),
                    "a".into()
                ]))
            );
            assert_eq!(
                refusal.err().map(|r| r.reply()).as_deref(),
                Some("550 5.4.6 Alias loop: a -> b -> c -> a.")
            );
        });
        let deep: String = (0..=MAX_ALIAS_DEPTH)
            .map(|i| format!("l{i}: l{}\n", i + 1))
            .collect::<String>()
            + &format!("l{}: alice\n", MAX_ALIAS_DEPTH + 1);
        directory_test(USERS, &deep, |d| {
            assert!(
                matches!(d.resolve("l0@localhost"), Err(Refusal::TooDeep(chain)) if chain.len() == MAX_ALIAS_DEPTH + 1)
            );
            assert_eq!(d.resolve("l2@localhost"), local(&["alice"]));
        });
        // Two lists of 600, each within the parser's bound, together over the expansion's.
        let mut big = String::from("big: half0, half1\n");
        let mut users = String::new();
        for half in 0..2 {
            big.push_str(&format!("half{half}: "));
            for i in 0..600 {
                big.push_str(&format!("u{half}x{i}, "));
                users.push_str(&format!("u{half}x{i}:{{PLAIN}}x\n"));
            }
            big.push('\n');
        }
        directory_test(&users, &big, |d| {
            assert_eq!(
                d.resolve("big@localhost")
                    .err()
                    .map(|r| r.reply())
                    .as_deref(),
                Some("550 5.5.3 Alias big expands to more than 1000 recipients.")
            );
        });
    }

    #[test]
    fn a_missing_target_says_which() {
        directory_test(
            "alice:{PLAIN}a\n",
            "abuse: security\nteam: alice, carol\n",
            |d| {
                assert_eq!(
                d.resolve("team@localhost")
                    .err()
                    .map(|r| r.reply())
                    .as_deref(),
                Some(
                    "550 5.1.1 Alias team leads to carol, which is neither a user nor an alias \
                     here; the postmaster should add one to the aliases file."
                )
            );
                assert!(matches!(
                    d.resolve("abuse@localhost"),
                    Err(Refusal::UnknownTarget { target, .. }) if target == "security"
                ));
            },
        );
    }

    #[test]
    fn root_and_postmaster_always_reach_someone() {
        // The shipped file: postmaster and friends lead to root, which nobody is yet.
        let shipped = "postmaster: root\nabuse: postmaster\nwebmaster: postmaster\n";
        directory_test("alice:{PLAIN}a\n", shipped, |d| {
            for address in [
                "abuse@localhost",
                "PostMaster@example.org",
                "root@localhost",
            ] {
                assert_eq!(d.resolve(address), local(&["root"]), "{address}");
            }
            // A user is not made out of other names.
            assert_eq!(d.resolve("admin@localhost"), Err(Refusal::NoSuchUser));
        });
        // No aliases file at all: postmaster still reaches the system mailbox.
        directory_test("alice:{PLAIN}a\n", "", |d| {
            assert_eq!(d.resolve("postmaster+x@localhost"), local(&["root"]));
        });
        // Once root is named, its mail goes there; a user called root is root.
        directory_test(
            "alice:{PLAIN}a\n",
            &format!("{shipped}root: alice\n"),
            |d| {
                assert_eq!(d.resolve("abuse@localhost"), local(&["alice"]));
            },
        );
        directory_test("root:{PLAIN}r\n", shipped, |d| {
            assert_eq!(d.resolve("postmaster@localhost"), local(&["root"]));
        });
    }
}
