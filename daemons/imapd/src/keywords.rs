//! IMAP keywords of a folder. Maildir keeps them as the letters `a`-`z` in file names; this
//! file (`inetkit-keywords`, the format of Dovecot's `dovecot-keywords`: `<n> <name>` lines)
//! says which keyword each letter stands for. Adding a name takes a lock on the file, so two
//! sessions adding keywords at once never give one letter two names. A folder Dovecot kept
//! has `dovecot-keywords` instead: until ours exists, its names are the folder's, and the
//! first keyword added copies them into ours, so the letters keep their meaning.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use inetkit_maildir::{FileLock, Flags};

pub(crate) const FILE: &str = "inetkit-keywords";
const DOVECOT_FILE: &str = "dovecot-keywords";
/// Maildir has 26 keyword letters.
const MAX: u8 = 26;

#[derive(Debug, Clone, Default)]
pub(crate) struct Keywords {
    names: Vec<Option<String>>,
}

impl Keywords {
    /// The folder's keywords; a missing or unreadable file means none.
    pub(crate) fn load(folder: &Path) -> Keywords {
        let mut text = String::new();
        match File::open(folder.join(FILE)) {
            Ok(mut file) => {
                let _ = file.read_to_string(&mut text);
            }
            Err(_) => text = dovecot_keywords(folder),
        }
        Keywords::parse(&text)
    }

    fn parse(text: &str) -> Keywords {
        let mut names = vec![None; usize::from(MAX)];
        for line in text.lines() {
            let Some((n, name)) = line.split_once(' ') else {
                continue;
            };
            if let Ok(n) = n.parse::<u8>() {
                if n < MAX && valid(name) {
                    names[usize::from(n)] = Some(name.to_owned());
                }
            }
        }
        Keywords { names }
    }

    /// Whether every keyword letter in `flags` has a name here. Letters only ever gain a
    /// name (the file is appended to), so while this holds the file has nothing new to tell.
    pub(crate) fn names_all(&self, flags: Flags) -> bool {
        (0..MAX)
            .all(|n| Flags::keyword(n).is_none_or(|k| !flags.contains(k)) || self.name(n).is_some())
    }

    pub(crate) fn name(&self, n: u8) -> Option<&str> {
        self.names.get(usize::from(n))?.as_deref()
    }

    /// Keyword names compare without regard to case (RFC 3501 §2.3.2).
    pub(crate) fn find(&self, name: &str) -> Option<u8> {
        self.names
            .iter()
            .position(|k| k.as_deref().is_some_and(|k| k.eq_ignore_ascii_case(name)))
            .and_then(|n| u8::try_from(n).ok())
    }

    pub(crate) fn all(&self) -> impl Iterator<Item = &str> {
        self.names.iter().flatten().map(String::as_str)
    }

    /// The letter for `name`, adding it to the folder's file if new. `None` when all 26 are
    /// taken (or the file cannot be written).
    pub(crate) fn find_or_add(&mut self, folder: &Path, name: &str) -> Option<u8> {
        if let Some(n) = self.find(name) {
            return Some(n);
        }
        if !valid(name) {
            return None;
        }
        match add(&folder.join(FILE), name) {
            Ok((keywords, n)) => {
                *self = keywords;
                n
            }
            Err(err) => {
                tracing::warn!(folder = %folder.display(), error = %err, "cannot add a keyword");
                None
            }
        }
    }
}

/// The text of the folder's `dovecot-keywords` (the same `<n> <name>` lines), or nothing.
fn dovecot_keywords(folder: &Path) -> String {
    std::fs::read_to_string(folder.join(DOVECOT_FILE)).unwrap_or_default()
}

fn valid(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 128
        && name
            .bytes()
            .all(|b| b.is_ascii_graphic() && !b"(){%*\"\\]".contains(&b))
}

fn add(path: &PathBuf, name: &str) -> std::io::Result<(Keywords, Option<u8>)> {
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)?;
    // A contended wait goes through the hand-off hook: this runs in place on a worker (STORE).
    let mut file = FileLock::lock_or_wait(file)?;
    let mut text = String::new();
    file.read_to_string(&mut text)?;
    if text.is_empty() {
        // Ours was just made: it starts as Dovecot's list, when the folder has one.
        text = dovecot_keywords(path.parent().unwrap_or(Path::new(".")));
        file.write_all(text.as_bytes())?;
    }
    let mut keywords = Keywords::parse(&text);
    if let Some(n) = keywords.find(name) {
        return Ok((keywords, Some(n)));
    }
    let Some(free) = keywords.names.iter().position(Option::is_none) else {
        return Ok((keywords, None));
    };
    file.seek(SeekFrom::End(0))?;
    if !text.is_empty() && !text.ends_with('\n') {
        file.write_all(b"\n")?;
    }
    file.write_all(format!("{free} {name}\n").as_bytes())?;
    file.sync_data()?;
    keywords.names[free] = Some(name.to_owned());
    Ok((keywords, u8::try_from(free).ok()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_add() {
        let k = Keywords::parse("0 $Forwarded\n3 Junk\nx y\n30 Bad\n");
        assert_eq!(k.find("$forwarded"), Some(0));
        assert_eq!(k.name(3), Some("Junk"));
        assert_eq!(k.name(1), None);
        let dir = std::env::temp_dir().join(format!("imapd-kw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let mut k = Keywords::load(&dir);
        assert_eq!(k.find_or_add(&dir, "$MDNSent"), Some(0));
        assert_eq!(k.find_or_add(&dir, "NonJunk"), Some(1));
        assert_eq!(Keywords::load(&dir).find("nonjunk"), Some(1));
        assert_eq!(k.find_or_add(&dir, "bad\"name"), None);
        std::fs::remove_dir_all(&dir).unwrap();
    }

    #[test]
    fn names_all_asks_for_a_reload_only_for_an_unnamed_letter() {
        let k = Keywords::parse("0 $Forwarded\n2 Work\n");
        let letter = |n| Flags::keyword(n).unwrap();
        assert!(k.names_all(Flags::EMPTY));
        assert!(k.names_all(Flags::SEEN | Flags::TRASHED | letter(0) | letter(2)));
        assert!(!k.names_all(Flags::SEEN | letter(1)));
        assert!(!k.names_all(letter(25)));
    }

    #[test]
    fn dovecot_keywords_are_taken_over() {
        let dir = std::env::temp_dir().join(format!("imapd-kw-dovecot-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(DOVECOT_FILE), "0 $Forwarded\n2 Work\n").unwrap();
        let mut k = Keywords::load(&dir);
        assert_eq!((k.find("work"), k.find("$forwarded")), (Some(2), Some(0)));
        // A new keyword takes a free letter, and Dovecot's stay as they were.
        assert_eq!(k.find_or_add(&dir, "Later"), Some(1));
        let ours = Keywords::load(&dir);
        assert_eq!((ours.find("work"), ours.find("later")), (Some(2), Some(1)));
        assert!(std::fs::read_to_string(dir.join(FILE))
            .unwrap()
            .contains("2 Work"));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
