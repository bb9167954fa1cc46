//! The POP3 view of a user's INBOX for one session (RFC 1939 §5–6): the messages as they were
//! at login, numbered from 1, with deletion marks applied only at QUIT.

use std::fs::File;
use std::io::Read;

use inetkit_maildir::{FileLock, FlagChange, Flags, Folder, MessageInfo, Store, StoreError};

/// Name of the per-mailbox lock file that makes `[IN-USE]` work across processes.
const LOCK_FILE: &str = "inetkit-pop3.lock";

#[derive(Debug, thiserror::Error)]
pub(crate) enum OpenError {
    #[error("the maildrop is locked by another POP3 session")]
    InUse,
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("maildrop lock: {0}")]
    Lock(std::io::Error),
}

pub(crate) struct Maildrop {
    folder: Folder,
    uid_validity: u32,
    messages: Vec<Entry>,
    /// Held until the session ends; only POP3 sessions take it, so IMAP and delivery go on.
    _lock: FileLock,
}

struct Entry {
    info: MessageInfo,
    deleted: bool,
    retrieved: bool,
}

impl Maildrop {
    /// Locks and lists `user`'s INBOX. Blocking file-system work: call it off the async threads.
    pub(crate) fn open(store: &Store, user: &str) -> Result<Self, OpenError> {
        let mailbox = store.mailbox(user)?;
        let lock_path = mailbox.path().join(LOCK_FILE);
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(&lock_path)
            .map_err(OpenError::Lock)?;
        let lock = match FileLock::try_lock(file) {
            Ok(Some(lock)) => lock,
            Ok(None) => return Err(OpenError::InUse),
            Err(err) => return Err(OpenError::Lock(err)),
        };
        let folder = mailbox.inbox();
        let mut snapshot = folder.snapshot()?;
        // STAT and LIST need every size from the start.
        folder.measure(&mut snapshot.messages)?;
        let messages = snapshot
            .messages
            .into_iter()
            .map(|info| Entry {
                info,
                deleted: false,
                retrieved: false,
            })
            .collect();
        Ok(Maildrop {
            folder,
            uid_validity: snapshot.uid_validity,
            messages,
            _lock: lock,
        })
    }

    /// Number and total size of the messages not marked deleted.
    pub(crate) fn stat(&self) -> (usize, u64) {
        self.live()
            .fold((0, 0), |(n, size), (_, info)| (n + 1, size + octets(info)))
    }

    /// The messages not marked deleted, with their numbers.
    pub(crate) fn live(&self) -> impl Iterator<Item = (u32, &MessageInfo)> {
        self.messages
            .iter()
            .enumerate()
            .filter(|(_, e)| !e.deleted)
            .map(|(i, e)| (i as u32 + 1, &e.info))
    }

    /// Message `number`, unless it does not exist or is marked deleted.
    pub(crate) fn get(&self, number: u32) -> Option<&MessageInfo> {
        let entry = self.messages.get((number as usize).checked_sub(1)?)?;
        (!entry.deleted).then_some(&entry.info)
    }

    /// The unique-id listing string: stable across sessions while UIDVALIDITY holds
    /// (Dovecot's default format, so clients migrating from it keep their state).
    pub(crate) fn uidl(&self, info: &MessageInfo) -> String {
        format!("{:08X}{:08X}", info.uid, self.uid_validity)
    }

    pub(crate) fn delete(&mut self, number: u32) -> bool {
        match self.entry_mut(number) {
            Some(entry) if !entry.deleted => {
                entry.deleted = true;
                true
            }
            _ => false,
        }
    }

    pub(crate) fn reset(&mut self) {
        for entry in &mut self.messages {
            entry.deleted = false;
        }
    }

    pub(crate) fn open_message(&mut self, number: u32) -> Result<File, StoreError> {
        let index = (number as usize).saturating_sub(1);
        let file = self.folder.open(&self.messages[index].info)?;
        self.messages[index].retrieved = true;
        Ok(file)
    }

    fn entry_mut(&mut self, number: u32) -> Option<&mut Entry> {
        self.messages.get_mut((number as usize).checked_sub(1)?)
    }

    /// The UPDATE state: removes the messages marked deleted and marks retrieved ones \Seen
    /// (so IMAP clients see them as read). Returns how many were removed.
    pub(crate) fn commit(self) -> Result<usize, StoreError> {
        let mut deleted = Vec::new();
        let mut seen = Vec::new();
        for entry in self.messages {
            if entry.deleted {
                deleted.push(entry.info);
            } else if entry.retrieved && !entry.info.flags.contains(Flags::SEEN) {
                seen.push(entry.info);
            }
        }
        // Messages removed meanwhile by IMAP are skipped: no reason to fail the QUIT.
        if let Err(err) = self
            .folder
            .update_flags_many(&mut seen, FlagChange::Add(Flags::SEEN))
        {
            tracing::warn!(error = %err, "could not mark retrieved messages seen");
        }
        self.folder.delete(&deleted)?;
        Ok(deleted.len())
    }
}

/// What RETR and TOP send of a message: all of it, or the header, the blank line and the first
/// `n` body lines.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Extent {
    Whole,
    Top(u32),
}

/// Feeds a message through `Extent`, chunk by chunk: `take` says how much of each chunk to
/// send, and `None` once the rest is to be skipped.
#[derive(Debug)]
pub(crate) struct ExtentFilter {
    limit: Option<u32>,
    in_header: bool,
    line_is_empty: bool,
    body_lines: u32,
    done: bool,
}

impl ExtentFilter {
    pub(crate) fn new(extent: Extent) -> Self {
        ExtentFilter {
            limit: match extent {
                Extent::Whole => None,
                Extent::Top(n) => Some(n),
            },
            in_header: true,
            line_is_empty: true,
            body_lines: 0,
            done: false,
        }
    }

    /// How many leading bytes of `chunk` belong to the response.
    pub(crate) fn take(&mut self, chunk: &[u8]) -> usize {
        let Some(limit) = self.limit else {
            return chunk.len();
        };
        if self.done {
            return 0;
        }
        if !self.in_header && self.body_lines >= limit {
            self.done = true;
            return 0;
        }
        for (i, &byte) in chunk.iter().enumerate() {
            if byte == b'\n' {
                if self.in_header {
                    if self.line_is_empty {
                        self.in_header = false;
                    }
                } else {
                    self.body_lines += 1;
                }
                self.line_is_empty = true;
                if !self.in_header && self.body_lines >= limit {
                    self.done = true;
                    return i + 1;
                }
            } else if byte != b'\r' {
                self.line_is_empty = false;
            }
        }
        chunk.len()
    }
}

/// Reads a message in chunks of `buf`'s size; used by the session to stream RETR and TOP.
pub(crate) fn read_chunk(file: &mut File, buf: &mut [u8]) -> std::io::Result<usize> {
    loop {
        match file.read(buf) {
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// A message's size as POP3 counts it (every line ending CRLF). Measured when the maildrop
/// was opened; a message gone since counts its file size.
pub(crate) fn octets(info: &MessageInfo) -> u64 {
    info.vsize.unwrap_or(info.size)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn top(message: &[u8], n: u32, chunk: usize) -> Vec<u8> {
        let mut filter = ExtentFilter::new(Extent::Top(n));
        let mut out = Vec::new();
        for piece in message.chunks(chunk) {
            let take = filter.take(piece);
            out.extend_from_slice(&piece[..take]);
        }
        out
    }

    const MSG: &[u8] = b"Subject: a\r\nFrom: b\r\n\r\nline1\r\nline2\r\nline3\r\n";

    #[test]
    fn top_sends_header_and_n_lines() {
        for chunk in [1, 3, 7, 100] {
            assert_eq!(top(MSG, 0, chunk), b"Subject: a\r\nFrom: b\r\n\r\n");
            assert_eq!(
                top(MSG, 2, chunk),
                b"Subject: a\r\nFrom: b\r\n\r\nline1\r\nline2\r\n"
            );
            assert_eq!(top(MSG, 10, chunk), MSG);
        }
    }

    #[test]
    fn top_with_bare_lf_and_no_body() {
        assert_eq!(top(b"A: b\n\nx\ny\n", 1, 2), b"A: b\n\nx\n");
        assert_eq!(top(b"A: b\r\n", 3, 4), b"A: b\r\n");
    }
}
