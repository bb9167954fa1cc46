//! A small bounded pool of directory connections: at most `size` exist at once; a
//! connection goes back only after a query that worked, so one that failed is dropped and
//! the next user of its slot connects afresh.

use std::future::Future;
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::DirectoryError;

pub(crate) struct Pool<C> {
    idle: Mutex<Vec<C>>,
    slots: std::sync::Arc<Semaphore>,
    size: usize,
    timeout: Duration,
}

/// A connection taken from the pool, with its slot.
pub(crate) struct Taken<'a, C> {
    pool: &'a Pool<C>,
    pub(crate) conn: Option<C>,
    _slot: OwnedSemaphorePermit,
}

impl<C> Pool<C> {
    pub(crate) fn new(size: usize, timeout: Duration) -> Pool<C> {
        let size = size.max(1);
        Pool {
            idle: Mutex::new(Vec::new()),
            slots: std::sync::Arc::new(Semaphore::new(size)),
            size,
            timeout,
        }
    }

    /// Waits (up to the timeout) for a free slot, then gives an idle connection or makes
    /// one with `connect` (which runs under the same timeout).
    pub(crate) async fn take<F, Fut>(&self, connect: F) -> Result<Taken<'_, C>, DirectoryError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<C, DirectoryError>>,
    {
        let slot = tokio::time::timeout(self.timeout, self.slots.clone().acquire_owned())
            .await
            .map_err(|_| DirectoryError::Busy(self.size))?
            .map_err(|_| DirectoryError::Busy(self.size))?;
        let idle = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop();
        let conn = match idle {
            Some(conn) => conn,
            None => super::within("connect", self.timeout, connect()).await?,
        };
        Ok(Taken {
            pool: self,
            conn: Some(conn),
            _slot: slot,
        })
    }

    /// Throws away every idle connection (after one of them failed: the others, made to
    /// the same server, likely have too).
    pub(crate) fn flush(&self) {
        self.idle.lock().unwrap_or_else(|p| p.into_inner()).clear();
    }
}

impl<C> Taken<'_, C> {
    /// The query worked: the connection may serve again.
    pub(crate) fn give_back(mut self) {
        if let Some(conn) = self.conn.take() {
            self.pool
                .idle
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .push(conn);
        }
    }
}
