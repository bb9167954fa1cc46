//! The durable spool of inetkit-smtp-submit: every accepted message lives here until each
//! recipient has it. `inetkit queue` lists, flushes and deletes its entries.
//!
//! ```text
//! <spool>/tmp/<id>.msg   a message being received (removed on any failure, and at start)
//! <spool>/<id>.msg       the message as it will be delivered (our headers added)
//! <spool>/<id>.env       the envelope: its presence is what makes a message accepted
//! <spool>/<id>.state     append-only delivery log: one line per recipient delivered, relayed
//!                        or failed, per deferral, per flush request, and once the bounce is out
//! ```
//!
//! Commit order (before the `250`): the message is written in `tmp/`, fsynced and renamed to
//! `<id>.msg`; the envelope is written in `tmp/`, fsynced and renamed to `<id>.env`; then the
//! spool directory is fsynced. A crash before the last step leaves no `.env`, so the start-up
//! scan removes the orphan and the client (which got no `250`) retries.
//!
//! Removal order is the reverse: `.env` first, so a half-removed entry is never delivered.
#![warn(missing_docs)]

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, BufWriter, Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Where the spool lives, with the operations on it. Every call blocks on file I/O.
#[derive(Debug, Clone)]
pub struct Spool {
    dir: PathBuf,
}

/// One recipient of a spooled message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Recipient {
    /// A user of the users file: delivered into `user`'s INBOX.
    Local {
        /// The address as the client gave it in RCPT TO (`bob+lists@host`); shown in
        /// `inetkit queue list` and in a bounce.
        address: String,
        /// The user it was resolved to: the mailbox, and the key in [`State::delivered`]
        /// and [`State::failed`] (several addresses of one user get one copy).
        user: String,
    },
    /// Relayed to the smarthost.
    Remote {
        /// The address as given in RCPT TO: the envelope recipient at the smarthost, and the
        /// key in [`State::relayed`] and [`State::failed`].
        address: String,
    },
}

/// What the session decided about a message: written once, never changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// The reverse path of MAIL FROM, without brackets; empty for the null sender `<>`.
    pub from: String,
    /// The authenticated user who submitted it (bounces go to their INBOX).
    pub user: String,
    /// Seconds since the epoch when it was accepted.
    pub received: u64,
    /// In RCPT TO order; never empty in an accepted message.
    pub recipients: Vec<Recipient>,
}

/// What has happened to a spooled message so far (replayed from its `.state` file).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct State {
    /// Local users whose INBOX has the message (user names, not addresses).
    pub delivered: BTreeSet<String>,
    /// Remote addresses the smarthost accepted the message for.
    pub relayed: BTreeSet<String>,
    /// Remote or local recipients that failed for good, with the reason.
    pub failed: Vec<(String, String)>,
    /// Attempts that ended in a temporary failure; the next delay grows with it.
    pub deferrals: u32,
    /// Seconds since the epoch of the next attempt (0: now).
    pub next_attempt: u64,
    /// The reason of the last deferral (an enhanced status code, then text); `None` before
    /// the first one.
    pub last_error: Option<String>,
    /// The bounce for the failed recipients is in the sender's INBOX: not to be sent again.
    pub bounced: bool,
}

impl State {
    /// Whether `address` (a local user name or a remote address, as in [`State::failed`])
    /// failed for good.
    pub fn is_failed(&self, address: &str) -> bool {
        self.failed.iter().any(|(a, _)| a == address)
    }
}

/// A spooled message as `inetkit queue list` and the delivery loop see it.
#[derive(Debug, Clone)]
pub struct Entry {
    /// The spool id (see [`valid_id`]): sorts by arrival.
    pub id: String,
    /// What was accepted.
    pub envelope: Envelope,
    /// What has happened since (empty when nothing has been tried yet).
    pub state: State,
    /// The message file's size in bytes, our added headers included.
    pub size: u64,
}

/// Seconds since the epoch, the unit of [`Envelope::received`] and [`State::next_attempt`];
/// 0 if the clock is before 1970.
pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Spool ids are made of `[0-9a-f.]` only; anything else is not ours (and not a path).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty() && id.len() < 64 && id.bytes().all(|b| b.is_ascii_hexdigit() || b == b'.')
}

/// Sortable by arrival, unique across processes (the pid) and within one (a counter).
fn new_id() -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!(
        "{:x}.{:05x}.{:x}{:04x}",
        since.as_secs(),
        since.subsec_micros(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed) & 0xffff
    )
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

impl Spool {
    /// The spool in `dir`. Touches nothing: [`Spool::prepare`] creates it.
    pub fn new(dir: impl Into<PathBuf>) -> Spool {
        Spool { dir: dir.into() }
    }

    /// The spool directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Creates the spool directories if needed and removes what a crash left half-written.
    pub fn prepare(&self) -> io::Result<()> {
        fs::DirBuilder::new()
            .recursive(true)
            .create(self.dir.join("tmp"))?;
        for entry in fs::read_dir(self.dir.join("tmp"))? {
            let entry = entry?;
            tracing::info!(file = %entry.path().display(), "removing a message never accepted");
            let _ = fs::remove_file(entry.path());
        }
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            let Some(name) = name.to_str() else { continue };
            let Some((id, ext)) = name.rsplit_once('.') else {
                continue;
            };
            if matches!(ext, "msg" | "state") && valid_id(id) && !self.path(id, "env").exists() {
                tracing::info!(id, "removing a spool file without an envelope");
                let _ = fs::remove_file(self.dir.join(name));
            }
        }
        Ok(())
    }

    fn path(&self, id: &str, ext: &str) -> PathBuf {
        self.dir.join(format!("{id}.{ext}"))
    }

    /// Where an accepted message's text is (`<spool>/<id>.msg`), for delivery to read.
    /// `id` must come from [`Spool::ids`] or pass [`valid_id`]: it becomes part of a path.
    pub fn message_path(&self, id: &str) -> PathBuf {
        self.path(id, "msg")
    }

    /// Starts receiving a message into `tmp/`.
    pub fn create(&self) -> io::Result<Incoming> {
        let id = new_id();
        let tmp = self.dir.join("tmp").join(format!("{id}.msg"));
        let file = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)?;
        Ok(Incoming {
            spool: self.clone(),
            id,
            tmp: Some(tmp),
            file: Some(BufWriter::with_capacity(64 * 1024, file)),
            size: 0,
        })
    }

    /// The ids of every accepted message, oldest first.
    pub fn ids(&self) -> io::Result<Vec<String>> {
        let mut ids = Vec::new();
        for entry in fs::read_dir(&self.dir)? {
            let name = entry?.file_name();
            if let Some(id) = name.to_str().and_then(|n| n.strip_suffix(".env")) {
                if valid_id(id) {
                    ids.push(id.to_owned());
                }
            }
        }
        ids.sort();
        Ok(ids)
    }

    /// Reads an accepted message's envelope, delivery log and size. `NotFound` when it was
    /// removed meanwhile; `InvalidData` when the envelope does not parse. `id` as for
    /// [`Spool::message_path`].
    pub fn load(&self, id: &str) -> io::Result<Entry> {
        let envelope = parse_envelope(&fs::read_to_string(self.path(id, "env"))?)
            .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "malformed envelope"))?;
        let state = match fs::read_to_string(self.path(id, "state")) {
            Ok(text) => parse_state(&text),
            Err(err) if err.kind() == io::ErrorKind::NotFound => State::default(),
            Err(err) => return Err(err),
        };
        let size = fs::metadata(self.path(id, "msg"))?.len();
        Ok(Entry {
            id: id.to_owned(),
            envelope,
            state,
            size,
        })
    }

    /// When the message's delivery log last changed (`None`: it has none yet). The delivery
    /// loop uses it to notice `inetkit queue flush` without re-reading every waiting message.
    pub fn state_modified(&self, id: &str) -> Option<SystemTime> {
        fs::metadata(self.path(id, "state"))
            .and_then(|m| m.modified())
            .ok()
    }

    /// Appends one line to the message's delivery log and fsyncs it.
    pub fn record(&self, id: &str, line: &str) -> io::Result<()> {
        self.record_lines(id, &[line])
    }

    /// Appends lines to the message's delivery log with one write and one fsync.
    pub fn record_lines(&self, id: &str, lines: &[&str]) -> io::Result<()> {
        debug_assert!(lines.iter().all(|line| !line.contains('\n')));
        if lines.is_empty() {
            return Ok(());
        }
        if !self.path(id, "env").exists() {
            return Err(io::Error::new(io::ErrorKind::NotFound, "no such message"));
        }
        let mut file = OpenOptions::new()
            .append(true)
            .create(true)
            .mode(0o600)
            .open(self.path(id, "state"))?;
        let mut text = lines.join("\n");
        text.push('\n');
        file.write_all(text.as_bytes())?;
        file.sync_data()
    }

    /// Removes a message: the envelope first, so what is left is an orphan, never a message.
    /// `durable`: fsync the directory, so the removal survives a crash. Not needed once every
    /// recipient is in a local mailbox: a message that comes back is recognised there and not
    /// delivered again.
    pub fn remove(&self, id: &str, durable: bool) -> io::Result<()> {
        match fs::remove_file(self.path(id, "env")) {
            Ok(()) => {}
            Err(err) if err.kind() == io::ErrorKind::NotFound => return Ok(()),
            Err(err) => return Err(err),
        }
        let _ = fs::remove_file(self.path(id, "state"));
        let _ = fs::remove_file(self.path(id, "msg"));
        if durable {
            sync_dir(&self.dir)?;
        }
        Ok(())
    }

    /// The message's header section (up to the empty line), at most `max` bytes.
    pub fn headers(&self, id: &str, max: usize) -> io::Result<Vec<u8>> {
        let mut buf = Vec::new();
        File::open(self.path(id, "msg"))?
            .take(max as u64)
            .read_to_end(&mut buf)?;
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            buf.truncate(end + 2);
        }
        Ok(buf)
    }
}

/// A message being received. Dropped without [`Incoming::commit`], it leaves nothing behind.
pub struct Incoming {
    spool: Spool,
    /// The id the message will have once committed.
    pub id: String,
    tmp: Option<PathBuf>,
    file: Option<BufWriter<File>>,
    /// Bytes passed to [`Incoming::write`] so far.
    pub size: u64,
}

impl Incoming {
    /// Appends bytes to the message file, exactly as they are to be delivered (the caller has
    /// added its headers and undone the dot-stuffing). Buffered: nothing is durable until
    /// [`Incoming::commit`].
    pub fn write(&mut self, data: &[u8]) -> io::Result<()> {
        self.size += data.len() as u64;
        match &mut self.file {
            Some(file) => file.write_all(data),
            None => Err(io::Error::other("message already committed")),
        }
    }

    /// Makes the message durable and accepted (see the module comment for the order).
    pub fn commit(mut self, envelope: &Envelope) -> io::Result<String> {
        let file = self
            .file
            .take()
            .ok_or_else(|| io::Error::other("message already committed"))?;
        let file = file.into_inner().map_err(|err| err.into_error())?;
        file.sync_all()?;
        drop(file);
        let tmp = self.tmp.clone().unwrap_or_default();
        fs::rename(&tmp, self.spool.path(&self.id, "msg"))?;
        self.tmp = None;
        let env_tmp = self.spool.dir.join("tmp").join(format!("{}.env", self.id));
        let written = (|| {
            let mut env = OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(&env_tmp)?;
            env.write_all(format_envelope(envelope).as_bytes())?;
            env.sync_all()?;
            fs::rename(&env_tmp, self.spool.path(&self.id, "env"))?;
            sync_dir(&self.spool.dir)
        })();
        if let Err(err) = written {
            // Not accepted: take everything back, so the client's retry is the only copy.
            let _ = fs::remove_file(&env_tmp);
            let _ = fs::remove_file(self.spool.path(&self.id, "env"));
            let _ = fs::remove_file(self.spool.path(&self.id, "msg"));
            return Err(err);
        }
        Ok(self.id.clone())
    }
}

impl Drop for Incoming {
    fn drop(&mut self) {
        self.file = None;
        if let Some(tmp) = &self.tmp {
            let _ = fs::remove_file(tmp);
        }
    }
}

fn format_envelope(envelope: &Envelope) -> String {
    let mut text = format!(
        "from {}\nuser {}\nreceived {}\n",
        envelope.from, envelope.user, envelope.received
    );
    for recipient in &envelope.recipients {
        match recipient {
            Recipient::Local { address, user } => {
                text.push_str(&format!("local {user} {address}\n"))
            }
            Recipient::Remote { address } => text.push_str(&format!("remote {address}\n")),
        }
    }
    text
}

fn parse_envelope(text: &str) -> Option<Envelope> {
    let mut envelope = Envelope {
        from: String::new(),
        user: String::new(),
        received: 0,
        recipients: Vec::new(),
    };
    for line in text.lines() {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "from" => envelope.from = value.to_owned(),
            "user" => envelope.user = value.to_owned(),
            "received" => envelope.received = value.parse().ok()?,
            "local" => {
                let (user, address) = value.split_once(' ')?;
                envelope.recipients.push(Recipient::Local {
                    address: address.to_owned(),
                    user: user.to_owned(),
                });
            }
            "remote" => envelope.recipients.push(Recipient::Remote {
                address: value.to_owned(),
            }),
            _ => return None,
        }
    }
    (!envelope.user.is_empty() && !envelope.recipients.is_empty()).then_some(envelope)
}

/// Replays the delivery log. A torn last line (a crash mid-append) is ignored.
fn parse_state(text: &str) -> State {
    let mut state = State::default();
    let complete = text
        .rsplit_once('\n')
        .map_or("", |(complete, _torn)| complete);
    for line in complete.lines() {
        let (key, value) = line.split_once(' ').unwrap_or((line, ""));
        match key {
            "delivered" => {
                state.delivered.insert(value.to_owned());
            }
            "relayed" => {
                state.relayed.insert(value.to_owned());
            }
            "failed" => {
                let (address, reason) = value.split_once(' ').unwrap_or((value, ""));
                if !state.is_failed(address) {
                    state.failed.push((address.to_owned(), reason.to_owned()));
                }
            }
            "deferred" => {
                let (next, reason) = value.split_once(' ').unwrap_or((value, ""));
                state.deferrals += 1;
                state.next_attempt = next.parse().unwrap_or(0);
                state.last_error = Some(reason.to_owned());
            }
            "flush" => state.next_attempt = 0,
            "bounced" => state.bounced = true,
            _ => {}
        }
    }
    state
}

#[cfg(test)]
mod tests {
    use super::*;

    fn envelope() -> Envelope {
        Envelope {
            from: "alice@example.org".into(),
            user: "alice".into(),
            received: 1700000000,
            recipients: vec![
                Recipient::Local {
                    address: "bob+x@example.org".into(),
                    user: "bob".into(),
                },
                Recipient::Remote {
                    address: "carol@far.example".into(),
                },
            ],
        }
    }

    #[test]
    fn envelope_round_trip() {
        let e = envelope();
        assert_eq!(parse_envelope(&format_envelope(&e)), Some(e));
        assert_eq!(parse_envelope("bogus line\n"), None);
    }

    #[test]
    fn state_replay_ignores_a_torn_line() {
        let state = parse_state(
            "delivered bob\ndeferred 123 4.4.1 down\nfailed x@y 5.1.1 no\nrelayed carol",
        );
        assert!(state.delivered.contains("bob"));
        assert_eq!(state.deferrals, 1);
        assert_eq!(state.next_attempt, 123);
        assert!(state.is_failed("x@y"));
        assert!(state.relayed.is_empty());
        // Smarthost replies and addresses are UTF-8 (SMTPUTF8); a torn multi-byte line too.
        let state = parse_state("failed jø@ex 5.1.1 ukjent mottaker ø\nrelayed 日本@€");
        let failed = ("jø@ex".to_owned(), "5.1.1 ukjent mottaker ø".to_owned());
        assert_eq!(state.failed, vec![failed]);
        assert!(state.relayed.is_empty());
    }

    #[test]
    fn commit_and_crash_cleanup() {
        let dir = std::env::temp_dir().join(format!("inetkit-spool-test-{}", new_id()));
        let spool = Spool::new(&dir);
        spool.prepare().expect("prepare");
        // An abandoned message leaves nothing.
        let mut incoming = spool.create().expect("create");
        incoming.write(b"partial").expect("write");
        drop(incoming);
        assert_eq!(fs::read_dir(dir.join("tmp")).expect("tmp").count(), 0);
        // A committed one is listed with its envelope and log.
        let mut incoming = spool.create().expect("create");
        incoming
            .write(b"Subject: x\r\n\r\nbody\r\n")
            .expect("write");
        let id = incoming.commit(&envelope()).expect("commit");
        assert_eq!(spool.ids().expect("ids"), vec![id.clone()]);
        spool.record(&id, "delivered bob").expect("record");
        let entry = spool.load(&id).expect("load");
        assert_eq!(entry.envelope, envelope());
        assert!(entry.state.delivered.contains("bob"));
        assert_eq!(
            spool.headers(&id, 1000).expect("headers"),
            b"Subject: x\r\n"
        );
        // A message file without an envelope is an orphan.
        fs::remove_file(dir.join(format!("{id}.env"))).expect("remove env");
        spool.prepare().expect("prepare");
        assert!(!dir.join(format!("{id}.msg")).exists());
        fs::remove_dir_all(&dir).expect("cleanup");
    }
}
