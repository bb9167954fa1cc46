//! Delivery of spooled messages: local recipients into their INBOX, others to the smarthost,
//! retries with exponential backoff, and an RFC 3464 bounce into the sender's INBOX when a
//! recipient fails for good or the message expires.
//!
//! Exactly once into a local mailbox: a recipient is delivered, then `delivered <user>` is
//! logged (fsynced). A crash between the two is the only way to see an unlogged delivery, so a
//! message found in the spool at start is first looked for in each pending user's INBOX (its
//! first header carries ` id <spool id>;`) before being delivered again.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use lettre::address::{Address, Envelope as LettreEnvelope};
use tokio::sync::mpsc;

use inetkit_maildir::Store;

use crate::message::rfc2822_now;
use crate::relay::Relay;
use inetkit_spool::{now, Entry, Recipient, Spool};

/// How often the spool is re-read for due retries and `inetkit queue flush` requests.
const SCAN_INTERVAL: Duration = Duration::from_secs(5);
/// Messages delivered at once.
const PARALLEL: usize = 16;

#[derive(Debug, Clone)]
pub(crate) struct RetryPolicy {
    pub initial: Duration,
    pub max: Duration,
    pub lifetime: Duration,
}

impl RetryPolicy {
    /// The wait after the `n`th deferral (1-based): initial, 2×, 4×… up to `max`.
    pub(crate) fn delay(&self, n: u32) -> Duration {
        let factor = 1u32
            .checked_shl(n.saturating_sub(1).min(30))
            .unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.max)
    }
}

/// The handle sessions use to hand accepted messages over.
#[derive(Clone)]
pub struct Queue {
    tx: mpsc::UnboundedSender<String>,
}

impl Queue {
    pub fn accepted(&self, id: String) {
        let _ = self.tx.send(id);
    }
}

pub(crate) struct Deliverer {
    pub spool: Spool,
    pub store: Store,
    pub relay: Option<Relay>,
    pub hostname: String,
    pub retry: RetryPolicy,
    busy: Mutex<HashSet<String>>,
    /// Deferred messages: their next attempt and their log's mtime then. The periodic scan
    /// passes over them with one stat each until they are due or the log changes (a flush).
    waiting: Mutex<HashMap<String, (u64, Option<SystemTime>)>>,
    limit: tokio::sync::Semaphore,
}

impl Deliverer {
    pub(crate) fn new(
        spool: Spool,
        store: Store,
        relay: Option<Relay>,
        hostname: String,
        retry: RetryPolicy,
    ) -> Self {
        Deliverer {
            spool,
            store,
            relay,
            hostname,
            retry,
            busy: Mutex::new(HashSet::new()),
            waiting: Mutex::new(HashMap::new()),
            limit: tokio::sync::Semaphore::new(PARALLEL),
        }
    }
}

impl Deliverer {
    /// The ids worth an attempt now: all but deferred ones not yet due and not flushed.
    fn due(&self, ids: Vec<String>) -> Vec<String> {
        let Ok(waiting) = self.waiting.lock().map(|mut w| {
            // Deleted with `inetkit queue delete`: nothing to wait for.
            let present: HashSet<&String> = ids.iter().collect();
            w.retain(|id, _| present.contains(id));
            w.clone()
        }) else {
            return ids;
        };
        let now = now();
        ids.into_iter()
            .filter(|id| match waiting.get(id) {
                Some((next, mtime)) => *next <= now || self.spool.state_modified(id) != *mtime,
                None => true,
            })
            .collect()
    }

    fn wait_until(&self, id: &str, next: u64) {
        let mtime = self.spool.state_modified(id);
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.insert(id.to_owned(), (next, mtime));
        }
    }

    fn forget(&self, id: &str) {
        if let Ok(mut waiting) = self.waiting.lock() {
            waiting.remove(id);
        }
    }
}

/// Starts the delivery loop: the spool as found at start (with crash recovery), then new
/// messages as sessions accept them, and due retries.
pub(crate) fn start(
    deliverer: Arc<Deliverer>,
    shutdown: tokio_util::sync::CancellationToken,
) -> Queue {
    let (tx, mut rx) = mpsc::unbounded_channel::<String>();
    tokio::spawn(async move {
        let mut first = true;
        loop {
            // Everything in the spool that is due (at start, everything: it may need recovery).
            let d = deliverer.clone();
            let scan_all = first;
            let ids = tokio::task::spawn_blocking(move || {
                let ids = d.spool.ids()?;
                Ok::<_, std::io::Error>(if scan_all { ids } else { d.due(ids) })
            })
            .await;
            match ids {
                Ok(Ok(ids)) => {
                    for id in ids {
                        spawn_delivery(&deliverer, id, first);
                    }
                }
                Ok(Err(err)) => tracing::error!(error = %err, "cannot read the spool"),
                Err(_) => {}
            }
            first = false;
            let tick = tokio::time::sleep(SCAN_INTERVAL);
            tokio::pin!(tick);
            loop {
                tokio::select! {
                    id = rx.recv() => match id {
                        Some(id) => spawn_delivery(&deliverer, id, false),
                        None => return,
                    },
                    _ = &mut tick => break,
                    _ = shutdown.cancelled() => return,
                }
            }
        }
    });
    Queue { tx }
}

fn spawn_delivery(deliverer: &Arc<Deliverer>, id: String, recovering: bool) {
    {
        let Ok(mut busy) = deliverer.busy.lock() else {
            return;
        };
        if !busy.insert(id.clone()) {
            return;
        }
    }
    let deliverer = deliverer.clone();
    tokio::spawn(async move {
        let permit = deliverer.limit.acquire().await;
        if let Err(err) = deliver(&deliverer, &id, recovering).await {
            tracing::error!(id, error = %err, "delivery attempt failed");
        }
        drop(permit);
        if let Ok(mut busy) = deliverer.busy.lock() {
            busy.remove(&id);
        }
    });
}

/// Crash tests: `INETKIT_TEST_CRASH=before-delivery` or `after-delivery` makes the daemon die
/// at that point, as a kill -9 or power cut would, so tests can check recovery exactly there.
fn test_crash(point: &str) {
    if std::env::var("INETKIT_TEST_CRASH").is_ok_and(|p| p == point) {
        tracing::warn!(point, "INETKIT_TEST_CRASH: aborting");
        std::process::abort();
    }
}

async fn blocking<T, F>(f: F) -> std::io::Result<T>
where
    F: FnOnce() -> std::io::Result<T> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(std::io::Error::other)?
}

/// One delivery attempt for a spooled message.
async fn deliver(d: &Arc<Deliverer>, id: &str, recovering: bool) -> std::io::Result<()> {
    let spool = d.spool.clone();
    let owned = id.to_owned();
    let entry = match blocking(move || spool.load(&owned)).await {
        Ok(entry) => entry,
        // Removed meanwhile (`inetkit queue delete`, or done by an earlier attempt).
        Err(err) if err.kind() == std::io::ErrorKind::NotFound => {
            d.forget(id);
            return Ok(());
        }
        Err(err) => return Err(err),
    };
    if entry.state.next_attempt > now() && !recovering {
        d.wait_until(id, entry.state.next_attempt);
        return Ok(());
    }
    let mut state = entry.state.clone();
    let mut temporary: Option<String> = None;
    // What this attempt did, logged with one fsync when it ends. A local delivery not yet
    // logged is safe: after a crash the message is looked for in the mailbox (`recovering`).
    let mut log: Vec<String> = Vec::new();
    let mut relayed_now = false;

    // Local recipients, once per user.
    let users: BTreeSet<String> = entry
        .envelope
        .recipients
        .iter()
        .filter_map(|r| match r {
            Recipient::Local { user, .. } => Some(user.clone()),
            Recipient::Remote { .. } => None,
        })
        .collect();
    for user in users {
        if state.delivered.contains(&user) || state.is_failed(&user) {
            continue;
        }
        let (spool, store, owned, u) = (
            d.spool.clone(),
            d.store.clone(),
            id.to_owned(),
            user.clone(),
        );
        let result = blocking(move || {
            let marker = format!(" id {owned};");
            if recovering && already_delivered(&store, &u, &marker)? {
                tracing::info!(id = owned, user = u, "found delivered before a restart");
            } else {
                test_crash("before-delivery");
                let mut file = std::fs::File::open(spool.message_path(&owned))?;
                store
                    .deliver(&u, &mut file)
                    .map_err(std::io::Error::other)?;
                test_crash("after-delivery");
            }
            Ok(())
        })
        .await;
        match result {
            Ok(()) => {
                tracing::info!(id, user, "delivered");
                log.push(format!("delivered {user}"));
                state.delivered.insert(user);
            }
            Err(err) => {
                tracing::warn!(id, user, error = %err, "local delivery deferred");
                temporary = Some(format!("4.2.0 local delivery to {user} failed: {err}"));
            }
        }
    }

    // Remote recipients, all in one transaction with the smarthost.
    let remote: Vec<String> = entry
        .envelope
        .recipients
        .iter()
        .filter_map(|r| match r {
            Recipient::Remote { address } => Some(address.clone()),
            Recipient::Local { .. } => None,
        })
        .filter(|a| !state.relayed.contains(a) && !state.is_failed(a))
        .collect();
    if !remote.is_empty() {
        match relay(d, &entry, &remote).await {
            Ok(()) => {
                for address in &remote {
                    log.push(format!("relayed {address}"));
                    state.relayed.insert(address.clone());
                }
                relayed_now = true;
                tracing::info!(id, recipients = remote.len(), "relayed");
            }
            Err(RelayError::Permanent(reason)) => {
                tracing::warn!(id, reason, "relay refused the message");
                for address in &remote {
                    log.push(format!("failed {address} {reason}"));
                    state.failed.push((address.clone(), reason.clone()));
                }
            }
            Err(RelayError::Temporary(reason)) => {
                tracing::warn!(id, reason, "relay deferred");
                temporary = Some(reason);
            }
        }
    }

    // Still pending past the lifetime: everything left fails.
    if let Some(reason) = &temporary {
        let age = now().saturating_sub(entry.envelope.received);
        if age >= d.retry.lifetime.as_secs() {
            let reason = format!("4.4.7 delivery time expired; last error: {reason}");
            for address in pending(&entry, &state) {
                log.push(format!("failed {address} {reason}"));
                state.failed.push((address, reason.clone()));
            }
            temporary = None;
        }
    }
    if let Some(reason) = temporary {
        let next = now() + d.retry.delay(state.deferrals + 1).as_secs();
        let reason: String = reason.chars().filter(|c| !c.is_control()).collect();
        log.push(format!("deferred {next} {reason}"));
        record(d, id, log).await?;
        d.wait_until(id, next);
        return Ok(());
    }

    if !state.failed.is_empty() && !state.bounced {
        // The failures are logged before the bounce goes out, the bounce before removal.
        record(d, id, std::mem::take(&mut log)).await?;
        bounce(d, &entry, &state.failed, recovering).await?;
        record(d, id, vec!["bounced".to_owned()]).await?;
    }
    // Relayed mail cannot be recognised at the smarthost: its removal must survive a crash,
    // or the message would be sent twice.
    let spool = d.spool.clone();
    let owned = id.to_owned();
    blocking(move || spool.remove(&owned, relayed_now)).await?;
    d.forget(id);
    tracing::info!(id, "done");
    Ok(())
}

/// Recipients neither delivered, relayed nor failed.
fn pending(entry: &Entry, state: &inetkit_spool::State) -> Vec<String> {
    entry
        .envelope
        .recipients
        .iter()
        .filter_map(|r| match r {
            Recipient::Local { user, .. }
                if !state.delivered.contains(user) && !state.is_failed(user) =>
            {
                Some(user.clone())
            }
            Recipient::Remote { address }
                if !state.relayed.contains(address) && !state.is_failed(address) =>
            {
                Some(address.clone())
            }
            _ => None,
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect()
}

async fn record(d: &Arc<Deliverer>, id: &str, lines: Vec<String>) -> std::io::Result<()> {
    if lines.is_empty() {
        return Ok(());
    }
    let spool = d.spool.clone();
    let id = id.to_owned();
    blocking(move || {
        let lines: Vec<&str> = lines.iter().map(String::as_str).collect();
        spool.record_lines(&id, &lines)
    })
    .await
}

enum RelayError {
    Permanent(String),
    Temporary(String),
}

async fn relay(d: &Arc<Deliverer>, entry: &Entry, recipients: &[String]) -> Result<(), RelayError> {
    let Some(relay) = &d.relay else {
        return Err(RelayError::Permanent(
            "5.7.1 no smarthost is configured".to_owned(),
        ));
    };
    let parse = |a: &str| a.parse::<Address>();
    let from = if entry.envelope.from.is_empty() {
        None
    } else {
        Some(
            parse(&entry.envelope.from)
                .map_err(|e| RelayError::Permanent(format!("5.1.7 bad sender: {e}")))?,
        )
    };
    let to = recipients
        .iter()
        .map(|a| parse(a))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| RelayError::Permanent(format!("5.1.3 bad recipient: {e}")))?;
    let envelope =
        LettreEnvelope::new(from, to).map_err(|e| RelayError::Permanent(format!("5.1.3 {e}")))?;
    let path = d.spool.message_path(&entry.id);
    let message = tokio::fs::read(&path)
        .await
        .map_err(|e| RelayError::Temporary(format!("4.3.0 reading the spool: {e}")))?;
    match relay.send(&envelope, &message).await {
        Ok(_) => Ok(()),
        Err(err) if err.is_permanent() => Err(RelayError::Permanent(format!(
            "5.0.0 smarthost {} said: {}",
            relay.name,
            one_line(&err.to_string())
        ))),
        Err(err) => Err(RelayError::Temporary(format!(
            "4.4.1 smarthost {}: {}",
            relay.name,
            one_line(&err.to_string())
        ))),
    }
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Is a message carrying `marker` in its first header already in `user`'s INBOX?
fn already_delivered(store: &Store, user: &str, marker: &str) -> std::io::Result<bool> {
    let mailbox = store.mailbox(user).map_err(std::io::Error::other)?;
    for sub in ["new", "cur"] {
        let dir = mailbox.path().join(sub);
        let entries = match std::fs::read_dir(&dir) {
            Ok(entries) => entries,
            Err(err) if err.kind() == std::io::ErrorKind::NotFound => continue,
            Err(err) => return Err(err),
        };
        for entry in entries {
            let path = entry?.path();
            if first_header_contains(&path, marker) {
                return Ok(true);
            }
        }
    }
    Ok(false)
}

fn first_header_contains(path: &Path, marker: &str) -> bool {
    let Ok(file) = std::fs::File::open(path) else {
        return false;
    };
    let mut first = String::new();
    let mut reader = BufReader::new(file.take(4096));
    if reader.read_line(&mut first).is_err() || !first.starts_with("Received: ") {
        return false;
    }
    first.contains(marker)
}

/// Puts an RFC 3464 delivery status notification into the submitting user's INBOX.
async fn bounce(
    d: &Arc<Deliverer>,
    entry: &Entry,
    failed: &[(String, String)],
    recovering: bool,
) -> std::io::Result<()> {
    let spool = d.spool.clone();
    let store = d.store.clone();
    let hostname = d.hostname.clone();
    let entry = entry.clone();
    let failed = failed.to_vec();
    blocking(move || {
        let marker = format!(" id {}.dsn;", entry.id);
        if recovering && already_delivered(&store, &entry.envelope.user, &marker)? {
            return Ok(());
        }
        let headers = spool.headers(&entry.id, 64 * 1024)?;
        let dsn = dsn(&hostname, &entry, &failed, &headers);
        store
            .deliver(&entry.envelope.user, &mut dsn.as_slice())
            .map_err(std::io::Error::other)?;
        tracing::info!(
            id = entry.id,
            user = entry.envelope.user,
            "bounce delivered"
        );
        Ok(())
    })
    .await
}

fn dsn(hostname: &str, entry: &Entry, failed: &[(String, String)], headers: &[u8]) -> Vec<u8> {
    let boundary = format!("{}.dsn/{hostname}", entry.id);
    let date = rfc2822_now();
    let arrival = time::OffsetDateTime::from_unix_timestamp(entry.envelope.received as i64)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc2822)
                .ok()
        })
        .unwrap_or_else(|| date.clone());
    let to = if entry.envelope.from.is_empty() {
        entry.envelope.user.clone()
    } else {
        entry.envelope.from.clone()
    };
    let mut text = format!(
        "Received: by {hostname} (inetkit-smtp-submit) id {id}.dsn;\r\n\t{date}\r\n\
         From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n\
         To: <{to}>\r\n\
         Subject: Undelivered Mail Returned to Sender\r\n\
         Date: {date}\r\n\
         Message-ID: <{id}.dsn@{hostname}>\r\n\
         Auto-Submitted: auto-replied\r\n\
         MIME-Version: 1.0\r\n\
         Content-Type: multipart/report; report-type=delivery-status;\r\n\tboundary=\"{boundary}\"\r\n\
         \r\n\
         This is a MIME-encapsulated message.\r\n\
         \r\n\
         --{boundary}\r\n\
         Content-Type: text/plain; charset=utf-8\r\n\
         \r\n\
         This is the mail system at {hostname}.\r\n\
         \r\n\
         Your message could not be delivered to one or more recipients:\r\n\
         \r\n",
        id = entry.id,
    );
    for (address, reason) in failed {
        text.push_str(&format!("<{address}>: {reason}\r\n"));
    }
    text.push_str(&format!(
        "\r\n--{boundary}\r\n\
         Content-Type: message/delivery-status\r\n\
         \r\n\
         Reporting-MTA: dns; {hostname}\r\n\
         X-Inetkit-Queue-ID: {id}\r\n\
         Arrival-Date: {arrival}\r\n",
        id = entry.id,
    ));
    for (address, reason) in failed {
        let status = dsn_status(reason);
        let address = entry
            .envelope
            .recipients
            .iter()
            .find_map(|r| match r {
                Recipient::Local { address: a, user } if user == address => Some(a.clone()),
                _ => None,
            })
            .unwrap_or_else(|| address.clone());
        text.push_str(&format!(
            "\r\nFinal-Recipient: rfc822; {address}\r\n\
             Action: failed\r\n\
             Status: {status}\r\n\
             Diagnostic-Code: smtp; {reason}\r\n"
        ));
    }
    text.push_str(&format!(
        "\r\n--{boundary}\r\nContent-Type: text/rfc822-headers\r\n\r\n"
    ));
    let mut out = text.into_bytes();
    out.extend_from_slice(headers);
    out.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    out
}

/// The DSN `Status:` of a recipient that failed for good (RFC 3464 §2.3.4): the enhanced
/// code the reason starts with, in class 5 (`4.4.7 delivery time expired` becomes `5.4.7`),
/// or `5.0.0` when the reason does not start with one (RFC 3463: `class.subject.detail`,
/// one to three digits each after the class).
fn dsn_status(reason: &str) -> String {
    let code = reason.split_whitespace().next().unwrap_or_default();
    let is_number =
        |part: &str| (1..=3).contains(&part.len()) && part.bytes().all(|b| b.is_ascii_digit());
    match code.split_once('.') {
        Some((class, rest))
            if class.len() == 1
                && class.bytes().all(|b| b.is_ascii_digit())
                && rest
                    .split_once('.')
                    .is_some_and(|(subject, detail)| is_number(subject) && is_number(detail)) =>
        {
            format!("5.{rest}")
        }
        _ => "5.0.0".to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dsn_status_keeps_the_detail_in_class_5() {
        assert_eq!(dsn_status("4.4.7 delivery time expired"), "5.4.7");
        assert_eq!(dsn_status("5.1.1 no such user"), "5.1.1");
        assert_eq!(dsn_status("5.7.123 x"), "5.7.123");
        // Reasons replayed from the spool's state file are not trusted to carry a code.
        for reason in [
            "", "refused", "é.1.1 x", "4.é.1", "4.1.é", "4.1", "44.1.1", "4.1.1234",
        ] {
            assert_eq!(dsn_status(reason), "5.0.0", "{reason:?}");
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_maximum() {
        let policy = RetryPolicy {
            initial: Duration::from_secs(60),
            max: Duration::from_secs(600),
            lifetime: Duration::from_secs(3600),
        };
        assert_eq!(policy.delay(1), Duration::from_secs(60));
        assert_eq!(policy.delay(2), Duration::from_secs(120));
        assert_eq!(policy.delay(4), Duration::from_secs(480));
        assert_eq!(policy.delay(5), Duration::from_secs(600));
        assert_eq!(policy.delay(100), Duration::from_secs(600));
    }
}
