//! Sizes with CRLF line ends (POP3 LIST, IMAP RFC822.SIZE), measured when asked for: a folder
//! another program filled is numbered from its directory listing alone, and a message is read
//! for its size only when a client wants it (the first SELECT of 10,000 such messages read
//! every one before).

use std::fs::File;
use std::io::{ErrorKind, Read};

use std::sync::Arc;

use crate::maildir::SizeCounter;
use crate::uidlist::{Loaded, UidList};
use crate::StoreError;

use super::{Folder, MessageInfo, FILES_READ};

/// Measured at once, this many are written into the uid list (see [`Folder::measure`]).
const RECORD_AT: usize = 16;

impl Folder {
    /// Fills in [`MessageInfo::vsize`] where it is `None`, reading each such file once, and
    /// keeps the values, so that later snapshots carry them (written into the uid list when
    /// 16 or more are measured at once, or when it is next written whole). A message gone
    /// meanwhile, or that cannot be read, keeps `None`; an error only when the list cannot be
    /// locked or read.
    pub fn measure(&self, msgs: &mut [MessageInfo]) -> Result<(), StoreError> {
        self.measure_until(msgs, &mut || false)
    }

    /// [`measure`](Self::measure), asking `stop` before each file it reads: once it says so,
    /// what was measured is kept and the rest stay `None` (a search's time limit, a client
    /// gone: a folder another program filled can have many thousands to read).
    pub fn measure_until(
        &self,
        msgs: &mut [MessageInfo],
        stop: &mut dyn FnMut() -> bool,
    ) -> Result<(), StoreError> {
        self.measured_before(msgs);
        let mut measured = Vec::new();
        let mut buf = Vec::new();
        for msg in msgs.iter_mut().filter(|m| m.vsize.is_none()) {
            if stop() {
                break;
            }
            // One that cannot be read (gone, unreadable) stays unmeasured; the others are not
            // held up by it.
            let read = self.open(msg).and_then(|mut file| {
                vsize_of(&mut file, &mut buf)
                    .map_err(|err| StoreError::io("reading", &self.path.join(msg.file()), err))
            });
            match read {
                Ok(vsize) => {
                    msg.vsize = Some(vsize);
                    measured.push((msg.uid, msg.base.clone(), vsize));
                }
                Err(StoreError::MessageGone { .. }) => {}
                Err(err) => tracing::warn!(error = %err, "cannot measure a message"),
            }
        }
        if measured.is_empty() {
            return Ok(());
        }
        // Kept in this process's copy of the list; written down (the list rewritten whole)
        // when many were measured at once, as a client's first sync of a folder does, so that
        // no later process reads them again: not for each message a client opens. Should that
        // fail (a full disk), they are measured again next time: nothing else depends on it.
        if measured.len() < RECORD_AT {
            self.keep_measured(&measured);
            return Ok(());
        }
        if let Err(err) = self.record_measured(&measured) {
            tracing::warn!(folder = %self.path.display(), error = %err,
                "cannot record measured sizes in the uid list");
        }
        Ok(())
    }

    /// Takes the sizes this process measured (or read in the uid list) since these messages'
    /// snapshot.
    fn measured_before(&self, msgs: &mut [MessageInfo]) {
        let index = self.index();
        let Some(cached) = index.list.as_ref() else {
            return;
        };
        let list = &cached.list;
        for msg in msgs.iter_mut().filter(|m| m.vsize.is_none()) {
            if let Some(at) = list.position(msg.uid, &msg.base) {
                msg.vsize = list.entries[at].facts().1;
            }
        }
    }

    /// In this process's copy of the uid list only (written with it when it is next written
    /// whole).
    fn keep_measured(&self, measured: &[(u32, Arc<str>, u64)]) {
        if let Some(cached) = self.index().list.as_mut() {
            Arc::make_mut(&mut cached.list).measured(measured);
        }
    }

    fn record_measured(&self, measured: &[(u32, Arc<str>, u64)]) -> Result<(), StoreError> {
        let _lock = self.lock()?;
        let mut index = self.index();
        if let Loaded::Ok(mut list) = UidList::load_cached(&self.path, &mut index.list)? {
            if Arc::make_mut(&mut list).measured(measured) {
                list.save(&self.path, self.owner, &mut index.list)?;
            }
        }
        Ok(())
    }
}

/// The size of what `file` holds with every bare LF counted as CRLF.
fn vsize_of(file: &mut File, buf: &mut Vec<u8>) -> std::io::Result<u64> {
    FILES_READ.with(|n| n.set(n.get() + 1));
    let mut sizes = SizeCounter::default();
    buf.resize(64 * 1024, 0);
    loop {
        match file.read(buf) {
            Ok(0) => return Ok(sizes.vsize),
            Ok(n) => sizes.update(buf.get(..n).unwrap_or_default()),
            Err(err) if err.kind() == ErrorKind::Interrupted => {}
            Err(err) => return Err(err),
        }
    }
}
