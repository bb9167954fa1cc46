//! Unit tests of NOTIFY's session side: which changes are told with which STATUS items, the
//! forwarders, the overflow bound, the filters.

use super::*;

fn state(messages: u32, uid_next: u32, unseen: u32, highest: u64) -> State {
    State {
        messages,
        uid_next,
        uid_validity: 7,
        unseen,
        highest,
    }
}

fn events(new: bool, flags: bool) -> Events {
    Events {
        new,
        expunge: new,
        flags,
        ..Events::default()
    }
}

#[test]
fn only_asked_changes_are_told() {
    let old = state(2, 3, 1, 10);
    let flagged = state(2, 3, 0, 11);
    assert!(!relevant(events(true, false), &old, &flagged));
    assert!(relevant(events(true, true), &old, &flagged));
    let arrived = state(3, 4, 2, 12);
    assert!(relevant(events(true, false), &old, &arrived));
    let expunged = state(1, 3, 1, 12);
    assert!(relevant(events(true, false), &old, &expunged));
    assert!(!relevant(Events::default(), &old, &arrived));
}

#[test]
fn status_items_follow_the_events() {
    let s = state(2, 3, 1, 10);
    let names = |items: Vec<StatusDataItem>| -> Vec<&'static str> {
        items
            .iter()
            .map(|i| match i {
                StatusDataItem::Messages(_) => "MESSAGES",
                StatusDataItem::UidNext(_) => "UIDNEXT",
                StatusDataItem::UidValidity(_) => "UIDVALIDITY",
                StatusDataItem::Unseen(_) => "UNSEEN",
                StatusDataItem::HighestModSeq(_) => "HIGHESTMODSEQ",
                _ => "?",
            })
            .collect()
    };
    let expunge = Events {
        expunge: true,
        ..Events::default()
    };
    assert_eq!(names(items(expunge, &s, false, true)), ["MESSAGES"]);
    let new = Events {
        new: true,
        ..Events::default()
    };
    assert_eq!(
        names(items(new, &s, false, true)),
        ["MESSAGES", "UIDNEXT", "UIDVALIDITY"]
    );
    let flags = Events {
        flags: true,
        ..Events::default()
    };
    assert_eq!(
        names(items(flags, &s, false, true)),
        ["UIDVALIDITY", "HIGHESTMODSEQ"]
    );
    assert_eq!(
        names(items(flags, &s, false, false)),
        ["UIDVALIDITY", "UNSEEN"]
    );
    assert_eq!(
        names(items(flags, &s, true, false)),
        ["UIDVALIDITY", "UNSEEN", "HIGHESTMODSEQ"]
    );
}

/// Folders that come and go under `personal` each get a watch and a task passing its
/// wake-ups on; a folder gone takes its task with it, so their number stays bounded.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_folder_gone_stops_its_forwarder() {
    let mut c = super::super::tests::Client::logged_in(&[]).await;
    let metrics = tokio::runtime::Handle::current().metrics();
    let lines = c
        .command("n", "NOTIFY SET (personal (MessageNew MessageExpunge))")
        .await;
    assert!(
        lines.last().is_some_and(|l| l.starts_with("n OK")),
        "{lines:?}"
    );
    let before = metrics.num_alive_tasks();
    for i in 0..40 {
        c.command("c", &format!("CREATE f{i}")).await;
        c.command("d", &format!("DELETE f{i}")).await;
    }
    // Aborted tasks end at their next poll: wait for them, within a bound.
    let mut alive = metrics.num_alive_tasks();
    for _ in 0..200 {
        if alive <= before {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        alive = metrics.num_alive_tasks();
    }
    assert!(alive <= before, "{alive} tasks alive, {before} before");
}

#[test]
fn too_much_at_once_is_an_overflow() {
    let mut out = Vec::new();
    assert!(deliver(b"* STATUS a (MESSAGES 1)\r\n", &mut out));
    assert_eq!(out, b"* STATUS a (MESSAGES 1)\r\n");
    let mut out = Vec::new();
    assert!(!deliver(&vec![b'x'; MAX_QUEUED + 1], &mut out));
    assert!(out.starts_with(b"* OK [NOTIFICATIONOVERFLOW] "), "{out:?}");
}

#[test]
fn filters_cover_their_mailboxes() {
    let subs: BTreeSet<String> = ["a".to_owned()].into();
    assert!(covers(&Filter::Inboxes, "INBOX", &subs));
    assert!(!covers(&Filter::Inboxes, "a", &subs));
    assert!(covers(&Filter::Subscribed, "a", &subs));
    assert!(!covers(&Filter::Subscribed, "b", &subs));
    let tree = Filter::Subtree(vec![b"a".to_vec()]);
    assert!(covers(&tree, "a", &subs));
    assert!(covers(&tree, "a/b", &subs));
    assert!(!covers(&tree, "ab", &subs));
    let boxes = Filter::Mailboxes(vec![b"inbox".to_vec()]);
    assert!(covers(&boxes, "INBOX", &subs));
    assert!(!covers(&Filter::Selected, "INBOX", &subs));
    let groups = vec![
        (Filter::Inboxes, Events::default()),
        (Filter::Personal, events(true, true)),
    ];
    assert_eq!(events_for(&groups, "INBOX", &subs), Some(Events::default()));
    assert_eq!(events_for(&groups, "x", &subs), Some(events(true, true)));
}
