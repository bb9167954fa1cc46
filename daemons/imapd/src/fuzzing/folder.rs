//! A selected folder for the targets that need one (sequence sets, SEARCH): made once per
//! process from a real Maildir, then given each input's messages (their UIDs, flags, sizes
//! and dates; SEARCH reads their content from the input, not from files).

use std::cell::RefCell;
use std::collections::HashSet;
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use inetkit_maildir::{Flags, MessageInfo, Store};

use crate::selected::Selected;
use crate::watch::Watches;

/// What a message of an input is, besides its content.
pub(super) struct Facts {
    pub(super) uid: u32,
    pub(super) flags: Flags,
    pub(super) vsize: u64,
    pub(super) days: u32,
    pub(super) recent: bool,
}

struct Fixture {
    selected: Selected,
    template: MessageInfo,
    _watches: Arc<Watches>,
    _dir: Removed,
}

/// The fixture's directory, removed when the thread ends.
struct Removed(PathBuf);

impl Drop for Removed {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

thread_local! {
    static FIXTURE: RefCell<Option<Fixture>> = const { RefCell::new(None) };
}

/// The keywords the fixture's folder defines (letters 0 and 1).
pub(super) const KEYWORDS: [&str; 2] = ["$Forwarded", "Junk"];

fn fixture() -> Fixture {
    // One per thread: tests replay the targets on threads of one process.
    static FIXTURES: AtomicUsize = AtomicUsize::new(0);
    let n = FIXTURES.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("inetkit-imapd-fuzz-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    let store = Store::new(&dir);
    store
        .deliver("u", &mut &b"Subject: template\r\n\r\nx\r\n"[..])
        .expect("a message delivered into the fixture");
    let folder = store.mailbox("u").expect("the fixture's mailbox").inbox();
    let keywords = KEYWORDS
        .iter()
        .enumerate()
        .map(|(n, name)| format!("{n} {name}\n"))
        .collect::<String>();
    std::fs::write(folder.path().join(crate::keywords::FILE), keywords)
        .expect("the fixture's keywords");
    let watches = Watches::new();
    let selected = Selected::open(folder, true, &watches).expect("the fixture selected");
    let template = selected
        .messages
        .first()
        .expect("the template message")
        .clone();
    Fixture {
        selected,
        template,
        _watches: watches,
        _dir: Removed(dir),
    }
}

/// Runs `f` on the fixture's folder holding these messages.
pub(super) fn with_messages<R>(messages: &[Facts], f: impl FnOnce(&Selected) -> R) -> R {
    FIXTURE.with(|cell| {
        let mut cell = cell.borrow_mut();
        let fixture = cell.get_or_insert_with(fixture);
        fixture.selected.messages = messages
            .iter()
            .map(|facts| {
                let mut msg = fixture.template.clone();
                msg.uid = facts.uid;
                msg.flags = facts.flags;
                msg.size = facts.vsize;
                msg.vsize = Some(facts.vsize);
                msg.internal_date =
                    SystemTime::UNIX_EPOCH + Duration::from_secs(u64::from(facts.days) * 86_400);
                msg.recent = facts.recent;
                msg
            })
            .collect();
        fixture.selected.recent = messages
            .iter()
            .filter(|m| m.recent)
            .map(|m| m.uid)
            .collect::<HashSet<u32>>();
        f(&fixture.selected)
    })
}

/// Flags from the bits of a byte: the system flags and the fixture's two keywords.
pub(super) fn flags(bits: u8) -> Flags {
    let all = [
        Some(Flags::SEEN),
        Some(Flags::REPLIED),
        Some(Flags::FLAGGED),
        Some(Flags::TRASHED),
        Some(Flags::DRAFT),
        Flags::keyword(0),
        Flags::keyword(1),
        Some(Flags::PASSED),
    ];
    let mut flags = Flags::EMPTY;
    for (bit, flag) in all.iter().enumerate() {
        if let Some(flag) = flag.filter(|_| bits & (1 << bit) != 0) {
            flags.insert(flag);
        }
    }
    flags
}
