//! CONDSTORE and QRESYNC dialogues, in-process.

use super::super::tests::{message, Client};

/// The number after `MODSEQ (` or `HIGHESTMODSEQ ` in a line.
fn modseq(line: &str) -> u64 {
    let rest = line
        .split_once("MODSEQ (")
        .or_else(|| line.split_once("HIGHESTMODSEQ "))
        .map(|(_, r)| r)
        .unwrap_or_else(|| panic!("no modseq in {line:?}"));
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().expect("a number")
}

fn line_with<'a>(reply: &'a [String], needle: &str) -> &'a str {
    reply
        .iter()
        .find(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("no {needle:?} in {reply:?}"))
}

async fn select(c: &mut Client, command: &str) -> (Vec<String>, u64) {
    let reply = c.command("s", command).await;
    assert!(reply.last().unwrap().starts_with("s OK"), "{reply:?}");
    let highest = modseq(line_with(&reply, "[HIGHESTMODSEQ "));
    (reply, highest)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn condstore_fetch_store_search_status() {
    let mut c = Client::logged_in(&[message(1), message(2), message(3)]).await;
    let reply = c.command("e", "ENABLE CONDSTORE").await;
    assert_eq!(
        reply,
        ["* ENABLED CONDSTORE\r\n", "e OK ENABLE completed.\r\n"]
    );
    let (_, h0) = select(&mut c, "SELECT INBOX").await;

    let reply = c.command("f", "FETCH 1:* (MODSEQ)").await;
    assert_eq!(reply.len(), 4, "{reply:?}");
    assert!(reply[..3].iter().all(|l| modseq(l) == h0), "{reply:?}");

    // A flag change moves the message's MODSEQ and the folder's.
    let reply = c.command("s1", "STORE 2 +FLAGS (\\Seen)").await;
    let changed = line_with(&reply, "* 2 FETCH");
    assert!(
        changed.starts_with("* 2 FETCH (UID 2 FLAGS (\\Seen \\Recent) MODSEQ ("),
        "{changed}"
    );
    let h1 = modseq(changed);
    assert!(h1 > h0);

    // CHANGEDSINCE: only what changed, with its MODSEQ.
    let reply = c
        .command("f2", &format!("FETCH 1:* (FLAGS) (CHANGEDSINCE {h0})"))
        .await;
    assert_eq!(
        reply,
        [
            format!("* 2 FETCH (FLAGS (\\Seen \\Recent) MODSEQ ({h1}))\r\n"),
            "f2 OK FETCH completed.\r\n".to_owned()
        ]
    );
    let reply = c
        .command("f3", &format!("UID FETCH 1:* (FLAGS) (CHANGEDSINCE {h1})"))
        .await;
    assert_eq!(reply, ["f3 OK FETCH completed.\r\n"]);

    // UNCHANGEDSINCE: message 2 changed after h0, so it is left alone and named.
    let reply = c
        .command(
            "s2",
            &format!("STORE 1:2 (UNCHANGEDSINCE {h0}) +FLAGS (\\Flagged)"),
        )
        .await;
    assert!(
        reply[0].starts_with("* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent) MODSEQ ("),
        "{reply:?}"
    );
    assert_eq!(
        reply.last().unwrap(),
        "s2 OK [MODIFIED 2] Conditional STORE failed.\r\n"
    );
    let h2 = modseq(&reply[0]);
    assert!(h2 > h1);
    let reply = c.command("f4", "FETCH 2 (FLAGS)").await;
    assert_eq!(reply[0], "* 2 FETCH (FLAGS (\\Seen \\Recent))\r\n");
    let reply = c
        .command(
            "s3",
            &format!("UID STORE 2 (UNCHANGEDSINCE {h0}) +FLAGS (\\Flagged)"),
        )
        .await;
    assert_eq!(
        reply.last().unwrap(),
        "s3 OK [MODIFIED 2] Conditional STORE failed.\r\n"
    );

    // .SILENT still tells the new MODSEQ once CONDSTORE is on.
    let reply = c.command("s4", "STORE 3 +FLAGS.SILENT (\\Answered)").await;
    assert!(
        reply[0].starts_with("* 3 FETCH (UID 3 MODSEQ ("),
        "{reply:?}"
    );
    let h3 = modseq(&reply[0]);

    let reply = c.command("q", &format!("SEARCH MODSEQ {h2}")).await;
    assert_eq!(reply[0], format!("* SEARCH 1 3 (MODSEQ {h3})\r\n"));
    let reply = c.command("q2", "SEARCH MODSEQ 1 UNSEEN").await;
    assert_eq!(reply[0], format!("* SEARCH 1 3 (MODSEQ {h3})\r\n"));
    let reply = c.command("q3", "SEARCH SEEN").await;
    assert_eq!(reply[0], "* SEARCH 2\r\n");

    let reply = c
        .command("st", "STATUS INBOX (MESSAGES HIGHESTMODSEQ)")
        .await;
    assert_eq!(
        reply[0],
        format!("* STATUS INBOX (MESSAGES 3 HIGHESTMODSEQ {h3})\r\n")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn modseq_survives_a_new_session_and_select_condstore_turns_it_on() {
    let mut c = Client::logged_in(&[message(1), message(2)]).await;
    // Without CONDSTORE on: no MODSEQ in STORE's FETCH, and .SILENT says nothing.
    let (_, h0) = select(&mut c, "SELECT INBOX").await;
    let reply = c.command("s1", "STORE 1 +FLAGS (\\Seen)").await;
    assert_eq!(reply[0], "* 1 FETCH (UID 1 FLAGS (\\Seen \\Recent))\r\n");
    let reply = c.command("s2", "STORE 1 -FLAGS.SILENT (\\Seen)").await;
    assert_eq!(reply, ["s2 OK STORE completed.\r\n"]);
    // SELECT (CONDSTORE), and the folder kept its numbers.
    let (reply, h1) = select(&mut c, "SELECT INBOX (CONDSTORE)").await;
    assert_eq!(reply[0], "* OK [CLOSED] Closed.\r\n");
    assert_eq!(
        reply.iter().filter(|l| l.contains("HIGHESTMODSEQ")).count(),
        1,
        "{reply:?}"
    );
    assert!(h1 > h0);
    let reply = c.command("s3", "STORE 2 +FLAGS (\\Seen)").await;
    assert!(modseq(&reply[0]) > h1, "{reply:?}");
    // FETCH MODSEQ turns CONDSTORE on when it was off: told the HIGHESTMODSEQ once.
    let (_, _) = select(&mut c, "EXAMINE INBOX").await;
    let reply = c.command("f", "FETCH 2 (MODSEQ)").await;
    assert!(
        reply.iter().any(|l| l.starts_with("* 2 FETCH (MODSEQ (")),
        "{reply:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qresync_select_fetch_vanished_and_expunge() {
    let mut c = Client::logged_in(&[message(1), message(2), message(3), message(4)]).await;
    let reply = c.command("b1", "SELECT INBOX (QRESYNC (1 1))").await;
    assert!(reply[0].starts_with("b1 BAD"), "{reply:?}");
    let reply = c.command("e", "ENABLE QRESYNC").await;
    assert_eq!(reply[0], "* ENABLED QRESYNC\r\n");
    let (reply, h0) = select(&mut c, "SELECT INBOX").await;
    let validity = modseq_free_number(line_with(&reply, "[UIDVALIDITY "), "[UIDVALIDITY ");

    let reply = c
        .command("b2", "FETCH 1 (FLAGS) (CHANGEDSINCE 1 VANISHED)")
        .await;
    assert!(reply[0].starts_with("b2 BAD"), "{reply:?}");
    let reply = c.command("b3", "UID FETCH 1 (FLAGS) (VANISHED)").await;
    assert!(reply[0].starts_with("b3 BAD"), "{reply:?}");

    c.command("s1", "STORE 2 +FLAGS (\\Seen)").await;
    c.command("s2", "STORE 1,3 +FLAGS (\\Deleted)").await;
    // Expunges are VANISHED once QRESYNC is on.
    let reply = c.command("x", "EXPUNGE").await;
    assert_eq!(reply[0], "* VANISHED 1,3\r\n");
    assert!(reply[1].starts_with("x OK [HIGHESTMODSEQ "), "{reply:?}");
    let after_expunge = modseq(&reply[1]);
    assert!(after_expunge > h0);

    let reply = c
        .command(
            "f",
            &format!("UID FETCH 1:* (FLAGS) (CHANGEDSINCE {h0} VANISHED)"),
        )
        .await;
    assert_eq!(reply[0], "* VANISHED (EARLIER) 1,3\r\n");
    assert!(
        reply[1].starts_with("* 1 FETCH (UID 2 FLAGS (\\Seen \\Recent) MODSEQ ("),
        "{reply:?}"
    );
    assert_eq!(reply.len(), 3, "{reply:?}");
    // Only what the UID set names.
    let reply = c
        .command(
            "f2",
            &format!("UID FETCH 2:3 (FLAGS) (CHANGEDSINCE {h0} VANISHED)"),
        )
        .await;
    assert_eq!(reply[0], "* VANISHED (EARLIER) 3\r\n");

    // A client coming back with what it knew at h0.
    let (reply, h1) = select(
        &mut c,
        &format!("SELECT INBOX (QRESYNC ({validity} {h0} 1:4))"),
    )
    .await;
    assert_eq!(h1, after_expunge);
    let vanished = reply
        .iter()
        .position(|l| l == "* VANISHED (EARLIER) 1,3\r\n");
    let fetch = reply
        .iter()
        .position(|l| l.starts_with("* 1 FETCH (UID 2 FLAGS (\\Seen) MODSEQ ("));
    assert!(vanished.is_some() && fetch > vanished, "{reply:?}");
    assert_eq!(
        reply.iter().filter(|l| l.contains(" FETCH ")).count(),
        1,
        "{reply:?}"
    );
    // Known UIDs limit what is told; another UIDVALIDITY gets nothing to resync.
    let (reply, _) = select(
        &mut c,
        &format!("SELECT INBOX (QRESYNC ({validity} {h0} 3:4))"),
    )
    .await;
    assert!(
        reply.contains(&"* VANISHED (EARLIER) 3\r\n".to_owned()),
        "{reply:?}"
    );
    let other = validity.wrapping_add(1).max(1);
    let (reply, _) = select(&mut c, &format!("SELECT INBOX (QRESYNC ({other} {h0}))")).await;
    assert!(
        !reply
            .iter()
            .any(|l| l.contains("VANISHED") || l.contains("FETCH")),
        "{reply:?}"
    );
    // A mod-sequence from before the record began: every UID not in the folder.
    let (reply, _) = select(&mut c, &format!("SELECT INBOX (QRESYNC ({validity} 1))")).await;
    assert!(
        reply.contains(&"* VANISHED (EARLIER) 1,3\r\n".to_owned()),
        "{reply:?}"
    );
}

/// The number after `prefix` in a line.
fn modseq_free_number(line: &str, prefix: &str) -> u32 {
    let rest = line.split_once(prefix).map(|(_, r)| r).unwrap_or_default();
    let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
    digits.parse().expect("a number")
}
