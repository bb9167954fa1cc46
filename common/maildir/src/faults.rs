//! Failures that unit tests inject at named steps of the store, to check what a full disk in
//! the middle of an operation leaves behind. Outside `cfg(test)` every check is a no-op.

use std::io::{self, Write};

/// A step of the store that can be made to fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Step {
    /// Creating a message file in `tmp/` and writing it.
    WriteTmp,
    /// Renaming a written message from `tmp/` into `new/` or `cur/`.
    Place,
    /// Renaming a message from one folder into another.
    Move,
    /// Appending lines to a uid list.
    UidListAppend,
}

#[cfg(test)]
pub(crate) use armed::fail_at;

/// Fails with ENOSPC when a test armed this step; otherwise (and always outside tests) `Ok`.
#[inline]
pub(crate) fn check(step: Step) -> io::Result<()> {
    #[cfg(test)]
    if armed::hit(step) {
        return Err(io::Error::from_raw_os_error(libc::ENOSPC));
    }
    let _ = step;
    Ok(())
}

/// `out.write_all(bytes)`, except that when a test armed `step` only the first half is
/// written before ENOSPC, as when the disk fills up in the middle of a write.
pub(crate) fn write_all(step: Step, out: &mut impl Write, bytes: &[u8]) -> io::Result<()> {
    if let Err(err) = check(step) {
        out.write_all(bytes.get(..bytes.len() / 2).unwrap_or_default())?;
        return Err(err);
    }
    out.write_all(bytes)
}

#[cfg(test)]
mod armed {
    use std::cell::RefCell;

    use super::Step;

    thread_local! {
        /// Each armed step and how many passes through it are left before the one that fails.
        static ARMED: RefCell<Vec<(Step, u32)>> = const { RefCell::new(Vec::new()) };
    }

    /// Makes the `nth` pass (from 1) through `step` on this thread fail with ENOSPC.
    pub(crate) fn fail_at(step: Step, nth: u32) {
        ARMED.with(|a| a.borrow_mut().push((step, nth)));
    }

    /// Whether this pass through `step` is the one to fail (then it is disarmed).
    pub(super) fn hit(step: Step) -> bool {
        ARMED.with(|a| {
            let mut armed = a.borrow_mut();
            let Some(at) = armed.iter().position(|(s, _)| *s == step) else {
                return false;
            };
            armed[at].1 -= 1;
            if armed[at].1 == 0 {
                armed.remove(at);
                true
            } else {
                false
            }
        })
    }
}
