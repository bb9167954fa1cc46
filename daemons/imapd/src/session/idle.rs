//! IDLE (RFC 2177): the session waits for the client's DONE and meanwhile tells it what
//! changes in the selected folder, woken by the folder's watch or a poll.

use std::time::Duration;

use tokio::io::{AsyncBufReadExt, AsyncRead, AsyncWrite};

use inetkit_runtime::log::End;

use super::reply::{bad, ok, Done, IDLE_TEXT, SHUTDOWN_TEXT};
use super::{quick, Conn, Session, MAX_LINE};
use crate::selected::Selected;
use crate::wire;

/// How often IDLE looks at the folder.
const IDLE_POLL: Duration = Duration::from_secs(1);

impl Session {
    pub(super) async fn idle<S>(&mut self, conn: &mut Conn<S>) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        wire::continuation(&mut conn.out, "idling");
        if conn.flush().await.is_err() {
            return Done::Close;
        }
        let started = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(IDLE_POLL);
        // The client's DONE line, gathered with `fill_buf` (which loses nothing when the
        // poll timer interrupts it) rather than a line reader that would drop a partial line.
        let mut line: Vec<u8> = Vec::new();
        let shutdown = self.peer.shutdown.clone();
        let changed = self.selected.as_ref().and_then(Selected::notifier);
        // NOTIFY's followed mailboxes (session/notify.rs).
        let followed = self.notifying.as_ref().map(|n| n.changed.clone());
        loop {
            let other = async {
                match &followed {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            let woken = async {
                match &changed {
                    Some(n) => n.notified().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = woken => {
                    if !self.idle_update(conn).await {
                        return Done::Close;
                    }
                }
                _ = other => {
                    if !self.idle_update(conn).await {
                        return Done::Close;
                    }
                }
                read = conn.reader.fill_buf() => {
                    let (used, complete) = match read {
                        Ok([]) => {
                            self.peer.log.ended(End::Disconnected);
                            return Done::Close;
                        }
                        Err(err) => {
                            self.peer.log.ended(End::from_io(&err));
                            return Done::Close;
                        }
                        Ok(bytes) => match bytes.iter().position(|&b| b == b'\n') {
                            Some(i) => {
                                line.extend_from_slice(&bytes[..i]);
                                (i + 1, true)
                            }
                            None => {
                                line.extend_from_slice(bytes);
                                (bytes.len(), false)
                            }
                        },
                    };
                    conn.reader.consume(used);
                    if complete {
                        let text = line.strip_suffix(b"\r").unwrap_or(&line);
                        return if text.eq_ignore_ascii_case(b"DONE") {
                            ok("IDLE terminated.")
                        } else {
                            bad("Expected DONE.")
                        };
                    }
                    if line.len() > MAX_LINE {
                        self.peer.log.ended(End::Closed("overlong line during IDLE"));
                        return Done::Close;
                    }
                }
                _ = tick.tick() => {
                    if started.elapsed() > self.peer.idle_timeout {
                        self.peer.log.ended(End::IdleTimeout);
                        wire::status(&mut conn.out, wire::bye(IDLE_TEXT));
                        let _ = conn.flush().await;
                        return Done::Close;
                    }
                    if !self.idle_update(conn).await {
                        return Done::Close;
                    }
                }
                _ = shutdown.cancelled() => {
                    self.peer.log.ended(End::Shutdown);
                    wire::status(&mut conn.out, wire::bye(SHUTDOWN_TEXT));
                    let _ = conn.flush().await;
                    return Done::Close;
                }
            }
        }
    }

    /// Sends what changed in the selected folder during IDLE, then NOTIFY's updates (the new
    /// messages fetched, other mailboxes' STATUS and LIST); false when the session must end.
    async fn idle_update<S>(&mut self, conn: &mut Conn<S>) -> bool
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let last_uid = self.selected_last_uid();
        if let Some(sel) = self.selected.as_mut() {
            let mut updates = Vec::new();
            let refreshed = quick(|| sel.refresh(&mut updates, true));
            conn.out.extend_from_slice(&updates);
            if refreshed.is_err() {
                return false;
            }
        }
        if let Some(last) = last_uid {
            self.notify_fetch(last, conn).await;
        }
        let mut updates = Vec::new();
        self.notify_updates(&mut updates);
        conn.out.extend_from_slice(&updates);
        conn.flush().await.is_ok()
    }
}
