//! Special-use attributes of folders (RFC 6154): Sent, Drafts, Trash and Junk by their names,
//! and those a client chose with `CREATE name (USE (...))`, kept in the mailbox directory's
//! `inetkit-special-use` (one `name<TAB>Attr Attr` line per folder, names in UTF-8).

use std::collections::HashMap;
use std::path::Path;

const FILE: &str = "inetkit-special-use";

/// The folders that have their attribute by name alone (and `[folders] special_use` creates).
pub(crate) const BY_NAME: [&str; 4] = ["Sent", "Drafts", "Trash", "Junk"];

/// The attributes CREATE may set. `\All` and `\Flagged` are virtual folders a Maildir cannot
/// hold, so they are refused with `[USEATTR]`.
pub(crate) const CREATABLE: [&str; 5] = ["Archive", "Drafts", "Junk", "Sent", "Trash"];

/// The attributes chosen at CREATE, by folder name.
#[derive(Debug, Default)]
pub(crate) struct SpecialUse {
    chosen: HashMap<String, Vec<String>>,
}

impl SpecialUse {
    /// Reads the mailbox's choices; a missing or unreadable file is no choices.
    pub(crate) fn load(mailbox: &Path) -> SpecialUse {
        let text = std::fs::read_to_string(mailbox.join(FILE)).unwrap_or_default();
        let chosen = text
            .lines()
            .filter_map(|line| line.split_once('\t'))
            .map(|(name, uses)| {
                let uses = uses
                    .split(' ')
                    .filter(|u| CREATABLE.contains(u))
                    .map(str::to_owned)
                    .collect();
                (name.to_owned(), uses)
            })
            .collect();
        SpecialUse { chosen }
    }

    /// The attributes of `name` (without backslashes): those chosen, else the one its name
    /// gives.
    pub(crate) fn of(&self, name: &str) -> Vec<&str> {
        match self.chosen.get(name) {
            Some(uses) => uses.iter().map(String::as_str).collect(),
            None => BY_NAME.iter().copied().filter(|n| *n == name).collect(),
        }
    }

    /// The attributes chosen for `name` at CREATE (none when it has them by name only).
    pub(crate) fn chosen(&self, name: &str) -> Vec<String> {
        self.chosen.get(name).cloned().unwrap_or_default()
    }

    /// Records (or with `uses` empty, forgets) the attributes of `name`, writing the file
    /// anew through a temporary file so a reader never sees half of it.
    pub(crate) fn set(mailbox: &Path, name: &str, uses: &[String]) -> std::io::Result<()> {
        if name.chars().any(char::is_control) {
            // One line per name: a name with a line break or a tab cannot be recorded.
            return Err(std::io::ErrorKind::InvalidInput.into());
        }
        let mut all = SpecialUse::load(mailbox);
        if uses.is_empty() {
            if all.chosen.remove(name).is_none() {
                return Ok(());
            }
        } else {
            all.chosen.insert(name.to_owned(), uses.to_vec());
        }
        let mut names: Vec<_> = all.chosen.iter().collect();
        names.sort();
        let text: String = names
            .into_iter()
            .map(|(name, uses)| format!("{name}\t{}\n", uses.join(" ")))
            .collect();
        let tmp = mailbox.join(format!("{FILE}.tmp.{}", std::process::id()));
        std::fs::write(&tmp, text)?;
        std::fs::rename(&tmp, mailbox.join(FILE))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chosen_attributes_override_the_name_and_survive_a_reload() {
        let dir = std::env::temp_dir().join(format!("special-use-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        assert_eq!(SpecialUse::load(&dir).of("Sent"), vec!["Sent"]);
        assert!(SpecialUse::load(&dir).of("Outbox").is_empty());
        SpecialUse::set(&dir, "Outbox", &["Sent".into(), "Archive".into()]).expect("saved");
        SpecialUse::set(&dir, "Sent", &["Archive".into()]).expect("saved");
        let uses = SpecialUse::load(&dir);
        assert_eq!(uses.of("Outbox"), vec!["Sent", "Archive"]);
        assert_eq!(uses.of("Sent"), vec!["Archive"]);
        SpecialUse::set(&dir, "Sent", &[]).expect("forgotten");
        assert!(SpecialUse::set(&dir, "a\nb", &["Sent".into()]).is_err());
        assert_eq!(SpecialUse::load(&dir).of("Sent"), vec!["Sent"]);
        std::fs::remove_dir_all(&dir).expect("cleaned up");
    }
}
