//! The expunge record of a folder's mod-sequences: up to [`MAX_VANISHED`](super::MAX_VANISHED)
//! (UID, mod-sequence) pairs, for `VANISHED (EARLIER)`.
//!
//! Every session holds its own copy of a folder's record, and every change makes one, so the
//! list lives in runs of at most [`RUN`] entries, each shared between the copies: an expunge
//! copies the last run only, and forgetting the oldest drops whole runs from the front. (One
//! flat list of 10,000 entries, with a set of its UIDs, was copied whole at every EXPUNGE: 8%
//! of imapd's CPU under imaptest's persistent sessions.)

use std::sync::Arc;

use rustc_hash::FxHashSet;

/// Entries per run: a copy of one stays small, and a look for a UID passes over
/// `len / RUN` runs with a binary search in each.
const RUN: usize = 256;

#[derive(Debug, Clone, Default)]
struct Run {
    /// Sorted by (mod-sequence, UID).
    entries: Vec<(u64, u32)>,
    /// The same UIDs, sorted.
    uids: Vec<u32>,
}

impl Run {
    fn new(entries: Vec<(u64, u32)>) -> Run {
        let mut uids: Vec<u32> = entries.iter().map(|&(_, uid)| uid).collect();
        uids.sort_unstable();
        Run { entries, uids }
    }

    fn insert(&mut self, entry: (u64, u32)) {
        let at = self.entries.partition_point(|&e| e < entry);
        self.entries.insert(at, entry);
        let at = self.uids.partition_point(|&u| u < entry.1);
        self.uids.insert(at, entry.1);
    }
}

/// Expunged UIDs with the mod-sequence of their expunge, oldest first, each UID once.
#[derive(Debug, Clone, Default)]
pub(super) struct Expunged {
    runs: Vec<Arc<Run>>,
    len: usize,
}

impl PartialEq for Expunged {
    fn eq(&self, other: &Expunged) -> bool {
        self.len == other.len && self.iter().eq(other.iter())
    }
}

impl Eq for Expunged {}

impl Expunged {
    /// From entries in any order (a UID named twice keeps its latest expunge).
    pub(super) fn from_entries(mut entries: Vec<(u64, u32)>) -> Expunged {
        entries.sort_unstable();
        let mut seen = FxHashSet::default();
        let mut list: Vec<(u64, u32)> = entries
            .into_iter()
            .rev()
            .filter(|&(_, uid)| seen.insert(uid))
            .collect();
        list.reverse();
        Expunged {
            len: list.len(),
            runs: list
                .chunks(RUN)
                .map(|run| Arc::new(Run::new(run.to_vec())))
                .collect(),
        }
    }

    #[cfg(test)]
    pub(super) fn insert(&mut self, uid: u32, modseq: u64) {
        self.extend([(uid, modseq)]);
    }

    /// Adds many (UID, mod-sequence) at once, a UID already there taking its new one. Each
    /// copies the run it goes into (the last one, for new UIDs expunged at the newest
    /// mod-sequence) and the run it leaves, if any: never the whole list.
    pub(super) fn extend(&mut self, added: impl IntoIterator<Item = (u32, u64)>) {
        let mut added: Vec<(u64, u32)> = added.into_iter().map(|(u, m)| (m, u)).collect();
        added.sort_unstable();
        if added
            .iter()
            .map(|&(_, u)| u)
            .collect::<FxHashSet<_>>()
            .len()
            < added.len()
        {
            // A UID named twice in one call: its latest expunge counts (never seen in use).
            let all: Vec<(u64, u32)> = self.iter().map(|(u, m)| (m, u)).chain(added).collect();
            *self = Expunged::from_entries(all);
            return;
        }
        for entry in added {
            self.remove(entry.1);
            self.insert_sorted(entry);
        }
    }

    /// Takes the UID out, if it is here.
    fn remove(&mut self, uid: u32) {
        let Some(at) = self
            .runs
            .iter()
            .position(|run| run.uids.binary_search(&uid).is_ok())
        else {
            return;
        };
        let run = Arc::make_mut(&mut self.runs[at]);
        run.entries.retain(|&(_, u)| u != uid);
        run.uids.retain(|&u| u != uid);
        if run.entries.is_empty() {
            self.runs.remove(at);
        }
        self.len -= 1;
    }

    /// Puts an entry (of a UID not here) where the order says: usually at the end.
    fn insert_sorted(&mut self, entry: (u64, u32)) {
        self.len += 1;
        let count = self.runs.len();
        // The first run that ends after it; past them all, the last run while it has room.
        let at = self
            .runs
            .partition_point(|run| run.entries.last().is_some_and(|&last| last < entry));
        let into = if at < count {
            Some(at)
        } else {
            count.checked_sub(1)
        };
        let Some((i, run)) = into.and_then(|i| Some((i, self.runs.get_mut(i)?))) else {
            self.runs.push(Arc::new(Run::new(vec![entry])));
            return;
        };
        if at == count && run.entries.len() >= RUN {
            self.runs.push(Arc::new(Run::new(vec![entry])));
            return;
        }
        let run = Arc::make_mut(run);
        run.insert(entry);
        if run.entries.len() > 2 * RUN {
            let upper = Run::new(run.entries.split_off(RUN));
            *run = Run::new(std::mem::take(&mut run.entries));
            self.runs.insert(i + 1, Arc::new(upper));
        }
    }

    /// Whether the UID is here: a binary search in each run.
    #[cfg(test)]
    pub(super) fn contains(&self, uid: u32) -> bool {
        self.runs
            .iter()
            .any(|run| run.uids.binary_search(&uid).is_ok())
    }

    /// Which of `uids` it holds, with the mod-sequence of their expunge: one pass, newest
    /// first (what is looked for was mostly expunged last), which stops once every one is
    /// found.
    pub(super) fn find(&self, uids: &[u32]) -> Vec<(u32, u64)> {
        let mut wanted: FxHashSet<u32> = uids.iter().copied().collect();
        let mut found = Vec::new();
        for run in self.runs.iter().rev() {
            if wanted.is_empty() {
                break;
            }
            // A run holding none of a few is skipped by its sorted UIDs (a look for a new
            // message's UID, which is never there, passes over no entry).
            if wanted.len() <= 16 && !wanted.iter().any(|u| run.uids.binary_search(u).is_ok()) {
                continue;
            }
            for &(modseq, uid) in run.entries.iter().rev() {
                if wanted.is_empty() {
                    return found;
                }
                if wanted.remove(&uid) {
                    found.push((uid, modseq));
                }
            }
        }
        found
    }

    /// The mod-sequence of a UID's expunge.
    #[cfg(test)]
    pub(super) fn get(&self, uid: u32) -> Option<u64> {
        self.find(&[uid]).first().map(|&(_, m)| m)
    }

    pub(super) fn len(&self) -> usize {
        self.len
    }

    pub(super) fn clear(&mut self) {
        *self = Expunged::default();
    }

    /// (UID, mod-sequence), oldest expunge first.
    pub(super) fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.runs
            .iter()
            .flat_map(|run| run.entries.iter().map(|&(m, u)| (u, m)))
    }

    /// The UIDs expunged after `modseq`, ascending.
    pub(super) fn since(&self, modseq: u64) -> Vec<u32> {
        // Runs are in mod-sequence order too: skip those that end at or below it.
        let first = self
            .runs
            .partition_point(|run| run.entries.last().is_some_and(|&(m, _)| m <= modseq));
        let mut uids: Vec<u32> = self.runs[first..]
            .iter()
            .flat_map(|run| run.entries.iter())
            .filter(|&&(m, _)| m > modseq)
            .map(|&(_, u)| u)
            .collect();
        uids.sort_unstable();
        uids
    }

    /// Forgets all but the newest `keep`; the mod-sequence of the newest forgotten.
    pub(super) fn keep_newest(&mut self, keep: usize) -> Option<u64> {
        let mut excess = self.len.saturating_sub(keep);
        let mut last = None;
        while excess > 0 {
            let Some(oldest) = self.runs.first_mut() else {
                break;
            };
            if oldest.entries.len() <= excess {
                excess -= oldest.entries.len();
                self.len -= oldest.entries.len();
                last = oldest.entries.last().map(|&(m, _)| m);
                self.runs.remove(0);
            } else {
                let kept = oldest.entries.get(excess..).unwrap_or_default().to_vec();
                last = oldest.entries.get(excess - 1).map(|&(m, _)| m);
                self.len -= excess;
                *oldest = Arc::new(Run::new(kept));
                excess = 0;
            }
        }
        last
    }

    /// Whether this list and `other` share their runs (no copy was made between them).
    #[cfg(test)]
    pub(super) fn shares_with(&self, other: &Expunged) -> bool {
        self.runs.len() == other.runs.len()
            && self
                .runs
                .iter()
                .zip(&other.runs)
                .all(|(a, b)| Arc::ptr_eq(a, b))
    }

    /// How many runs this list shares with `other` (the unchanged ones after a copy).
    #[cfg(test)]
    pub(super) fn runs_shared_with(&self, other: &Expunged) -> usize {
        self.runs
            .iter()
            .filter(|a| other.runs.iter().any(|b| Arc::ptr_eq(a, b)))
            .count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn numbered(n: u32) -> Expunged {
        let mut list = Expunged::default();
        list.extend((1..=n).map(|uid| (uid, 100 + u64::from(uid))));
        list
    }

    #[test]
    fn an_expunge_copies_only_the_last_run() {
        let shared = numbered(1000);
        let mut copy = shared.clone();
        copy.extend([(5000, 5000)]);
        assert_eq!(copy.runs_shared_with(&shared), 1000 / RUN);
        assert_eq!((shared.len(), copy.len()), (1000, 1001));
        assert_eq!(copy.iter().last(), Some((5000, 5000)));
    }

    #[test]
    fn forgetting_drops_whole_runs_and_trims_one() {
        let mut list = numbered(1000);
        // 1000 - 700 = 300: the first run whole, 44 of the second.
        assert_eq!(list.keep_newest(700), Some(100 + 300));
        assert_eq!(list.len(), 700);
        assert_eq!(list.iter().next(), Some((301, 401)));
        assert!(!list.contains(300) && list.contains(301) && list.contains(1000));
        assert_eq!(list.keep_newest(700), None);
        assert_eq!(list.iter().count(), 700);
    }

    #[test]
    fn since_skips_runs_and_sorts() {
        let mut list = numbered(600);
        list.extend([(3, 800), (2, 801)]);
        // UIDs 2 and 3 were named again: listed once, at their new place.
        assert_eq!(list.len(), 600);
        assert_eq!(list.since(700), vec![2, 3]);
        assert_eq!(list.since(695), vec![2, 3, 596, 597, 598, 599, 600]);
        assert_eq!(list.get(3), Some(800));
        assert_eq!(
            list,
            Expunged::from_entries(list.iter().map(|(u, m)| (m, u)).collect())
        );
    }

    #[test]
    fn a_uid_named_again_copies_two_runs_at_most() {
        let shared = numbered(1000);
        let mut copy = shared.clone();
        // As a session adopting an expunge its own record already had, at an older place.
        copy.extend([(3, 2000), (600, 2001)]);
        assert!(copy.runs_shared_with(&shared) >= 1000 / RUN - 2);
        assert_eq!(copy.len(), 1000);
        assert_eq!(copy.find(&[3, 600]), vec![(600, 2001), (3, 2000)]);
        assert_eq!(copy.iter().filter(|&(u, _)| u == 3).count(), 1);
    }

    #[test]
    fn many_older_entries_split_their_run_and_keep_the_order() {
        let mut list = numbered(10);
        list.extend((0..1000).map(|i| (10_000 + i, 50)));
        let order: Vec<(u64, u32)> = list.iter().map(|(u, m)| (m, u)).collect();
        assert!(order.is_sorted());
        assert_eq!((list.len(), order.len()), (1010, 1010));
        assert!(list.runs.iter().all(|run| run.entries.len() <= 2 * RUN));
        assert!(list.contains(10_999) && list.contains(1));
    }

    #[test]
    fn an_older_mod_sequence_keeps_the_order() {
        let mut list = numbered(10);
        list.extend([(50, 105)]);
        let order: Vec<u64> = list.iter().map(|(_, m)| m).collect();
        assert!(order.is_sorted(), "{order:?}");
        assert_eq!(list.len(), 11);
        assert_eq!(list.find(&[50, 7]), vec![(7, 107), (50, 105)]);
    }
}
