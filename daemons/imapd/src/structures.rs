//! The encoded ENVELOPE, BODY and BODYSTRUCTURE of recently fetched messages, shared by every
//! session of the process (Dovecot keeps the same in its index cache).
//!
//! Clients ask for these over and over (a phone and a desktop on one folder, a client's every
//! reconnect, imaptest's FETCH mix); each costs reading the whole message and parsing its
//! MIME structure. A Maildir message's content never changes under its base name (RFC822.SIZE
//! and every literal length rely on that already), so an entry stays valid for the message's
//! life. Entries are keyed by the folder's path and the base, so a session only finds what its
//! own folders hold. Bounded by bytes, keys included ([`MAX_BYTES`]); no entry may take more
//! than [`MAX_ENTRY`] (a deep MIME tree's BODYSTRUCTURE must not empty the cache for every
//! user); the oldest entries go first.
//!
//! The encodings depend on the message alone, not on the session (IMAP4rev2 changes none of
//! them): a session option that changed one would have to be part of the key.

use std::collections::{HashMap, VecDeque};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::sync::{Arc, Mutex};

/// At most this many bytes of encoded structures are kept (about 4,000 typical messages).
pub(crate) const MAX_BYTES: usize = 4 * 1024 * 1024;
/// The most one entry may take: larger structures are answered but not kept.
pub(crate) const MAX_ENTRY: usize = MAX_BYTES / 64;
/// Counted for each entry on top of its key and encodings (map and queue slots, pointers).
const ENTRY_OVERHEAD: usize = 128;

/// A message's encoded FETCH items, each with its name (`ENVELOPE (...)`).
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Structure {
    pub(crate) envelope: Box<[u8]>,
    /// BODY and BODYSTRUCTURE: only known from the whole message (the envelope needs only
    /// its header).
    pub(crate) bodies: Option<Bodies>,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Bodies {
    pub(crate) body: Box<[u8]>,
    pub(crate) body_structure: Box<[u8]>,
}

impl Structure {
    /// What keeping it under a key of `key_len` bytes takes (the key is held twice: in the
    /// map and in the queue, one allocation shared).
    fn bytes(&self, key_len: usize) -> usize {
        let bodies = self
            .bodies
            .as_ref()
            .map_or(0, |b| b.body.len() + b.body_structure.len());
        ENTRY_OVERHEAD + key_len + self.envelope.len() + bodies
    }
}

/// The cache: see the module doc.
pub(crate) struct Structures {
    max_bytes: usize,
    inner: Mutex<Inner>,
}

#[derive(Default)]
struct Inner {
    entries: HashMap<Arc<[u8]>, Arc<Structure>>,
    /// Keys oldest first. A key replaced by a fuller entry stays once, where it was.
    order: VecDeque<Arc<[u8]>>,
    bytes: usize,
}

impl Default for Structures {
    fn default() -> Self {
        Structures::with_limit(MAX_BYTES)
    }
}

impl Structures {
    pub(crate) fn with_limit(max_bytes: usize) -> Structures {
        Structures {
            max_bytes,
            inner: Mutex::default(),
        }
    }

    /// What is kept for the message `base` of `folder`.
    pub(crate) fn get(&self, folder: &Path, base: &str) -> Option<Arc<Structure>> {
        let key = key(folder, base);
        let inner = self.inner.lock().ok()?;
        inner.entries.get(&*key).cloned()
    }

    /// Keeps `structure` for the message `base` of `folder`, unless what is kept already
    /// knows more (its bodies), or it is larger than [`MAX_ENTRY`].
    pub(crate) fn put(&self, folder: &Path, base: &str, structure: Structure) -> Arc<Structure> {
        let structure = Arc::new(structure);
        let key = key(folder, base);
        let bytes = structure.bytes(key.len());
        if bytes > self.max_bytes.min(MAX_ENTRY) {
            return structure;
        }
        let Ok(mut inner) = self.inner.lock() else {
            return structure;
        };
        let key: Arc<[u8]> = key.into();
        match inner.entries.get(&key) {
            Some(kept) if kept.bodies.is_some() => return kept.clone(),
            Some(kept) => {
                let old = kept.bytes(key.len());
                inner.bytes -= old;
                // Still in `order` from its first put.
            }
            None => inner.order.push_back(key.clone()),
        }
        inner.bytes += bytes;
        inner.entries.insert(key, structure.clone());
        while inner.bytes > self.max_bytes {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(gone) = inner.entries.remove(&oldest) {
                inner.bytes -= gone.bytes(oldest.len());
            }
        }
        structure
    }

    /// Entries and bytes kept.
    #[cfg(test)]
    pub(crate) fn usage(&self) -> (usize, usize) {
        self.inner
            .lock()
            .map_or((0, 0), |inner| (inner.entries.len(), inner.bytes))
    }
}

/// The folder's path and the base, apart by a NUL (which neither can hold).
fn key(folder: &Path, base: &str) -> Vec<u8> {
    let folder = folder.as_os_str().as_bytes();
    let mut key = Vec::with_capacity(folder.len() + 1 + base.len());
    key.extend_from_slice(folder);
    key.push(0);
    key.extend_from_slice(base.as_bytes());
    key
}

#[cfg(test)]
mod tests {
    use super::*;

    fn structure(envelope: &str, bodies: bool) -> Structure {
        Structure {
            envelope: envelope.as_bytes().into(),
            bodies: bodies.then(|| Bodies {
                body: b"BODY (\"TEXT\")".as_slice().into(),
                body_structure: b"BODYSTRUCTURE (\"TEXT\")".as_slice().into(),
            }),
        }
    }

    #[test]
    fn finds_only_the_same_folder_and_base() {
        let cache = Structures::default();
        cache.put(Path::new("/m/a"), "1.M1", structure("ENVELOPE (1)", true));
        let hit = cache.get(Path::new("/m/a"), "1.M1").expect("kept");
        assert_eq!(&*hit.envelope, b"ENVELOPE (1)");
        assert!(cache.get(Path::new("/m/b"), "1.M1").is_none());
        assert!(cache.get(Path::new("/m/a"), "1.M2").is_none());
        // A path and base that concatenate alike stay apart.
        assert!(cache.get(Path::new("/m/a1"), ".M1").is_none());
    }

    #[test]
    fn a_fuller_entry_replaces_an_envelope_only_one_and_not_the_reverse() {
        let cache = Structures::default();
        cache.put(Path::new("/m"), "b", structure("ENVELOPE (a)", false));
        cache.put(Path::new("/m"), "b", structure("ENVELOPE (a)", true));
        let kept = cache.put(Path::new("/m"), "b", structure("ENVELOPE (a)", false));
        assert!(kept.bodies.is_some());
        assert!(cache
            .get(Path::new("/m"), "b")
            .is_some_and(|s| s.bodies.is_some()));
        let (entries, bytes) = cache.usage();
        assert_eq!(entries, 1);
        assert_eq!(bytes, structure("ENVELOPE (a)", true).bytes("/m\0b".len()));
    }

    #[test]
    fn stays_within_its_bytes_counting_keys_and_dropping_the_oldest() {
        let one = structure("ENVELOPE (x)", true).bytes("/m\0n".len());
        let cache = Structures::with_limit(one * 3);
        for n in 0..10 {
            cache.put(
                Path::new("/m"),
                &n.to_string(),
                structure("ENVELOPE (x)", true),
            );
            assert!(cache.usage().1 <= one * 3);
        }
        assert_eq!(cache.usage().0, 3);
        assert!(cache.get(Path::new("/m"), "6").is_none());
        assert!(cache.get(Path::new("/m"), "7").is_some());
        assert!(cache.get(Path::new("/m"), "9").is_some());
        // A long key takes its room: the same structure under a 255-byte base pushes out
        // all three short ones.
        let long = "b".repeat(255);
        cache.put(Path::new("/m"), &long, structure("ENVELOPE (x)", true));
        let expected = structure("ENVELOPE (x)", true).bytes("/m\0".len() + 255);
        assert_eq!(cache.usage(), (1, expected));
    }

    #[test]
    fn an_entry_past_its_share_is_answered_not_kept() {
        let cache = Structures::default();
        let huge = format!(
            "BODYSTRUCTURE ({})",
            "(\"TEXT\" \"PLAIN\") ".repeat(MAX_ENTRY / 16)
        );
        let big = Structure {
            envelope: b"ENVELOPE (x)".as_slice().into(),
            bodies: Some(Bodies {
                body: huge.as_bytes().into(),
                body_structure: huge.as_bytes().into(),
            }),
        };
        let returned = cache.put(Path::new("/m"), "b", big);
        assert!(returned.bodies.is_some());
        assert_eq!(cache.usage(), (0, 0));
        let small = Structures::with_limit(10);
        small.put(Path::new("/m"), "b", structure("ENVELOPE (x)", true));
        assert_eq!(small.usage(), (0, 0));
    }
}
