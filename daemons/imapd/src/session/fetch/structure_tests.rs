//! FETCH's ENVELOPE, BODY and BODYSTRUCTURE come from the process's structure cache
//! (`crate::structures`) once a message was parsed: shown by rewriting the file in place
//! behind the cache's back (a change a Maildir message never gets), which the cached items do
//! not see and the items read from the file do.

use std::path::PathBuf;

use crate::session::tests::{message, Client};

/// The one message file in alice's INBOX.
fn the_message_file(c: &Client) -> PathBuf {
    let cur = c.maildir().join("cur");
    let mut files: Vec<_> = std::fs::read_dir(&cur)
        .expect("cur/")
        .map(|e| e.expect("entry").path())
        .collect();
    assert_eq!(files.len(), 1, "{files:?}");
    files.remove(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structures_are_parsed_once_and_kept() {
    let mut c = Client::logged_in(&[message(1)]).await;
    c.command("s", "SELECT INBOX").await;
    let first = c
        .command("f1", "FETCH 1 (ENVELOPE BODY BODYSTRUCTURE)")
        .await;
    assert!(first[0].contains("\"message 1\""), "{first:?}");
    assert!(
        first[0].contains("BODYSTRUCTURE (\"TEXT\" \"PLAIN\""),
        "{first:?}"
    );

    // The same length, another subject.
    let path = the_message_file(&c);
    let text = std::fs::read_to_string(&path).expect("message");
    std::fs::write(&path, text.replace("message 1", "massage 1")).expect("rewrite");

    let again = c
        .command("f2", "FETCH 1 (ENVELOPE BODY BODYSTRUCTURE)")
        .await;
    assert_eq!(again[0], first[0], "answered from the cache");
    let header = c
        .command("f3", "FETCH 1 (BODY.PEEK[HEADER.FIELDS (SUBJECT)])")
        .await;
    assert!(header.concat().contains("Subject: massage 1"), "{header:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_envelope_alone_does_not_stand_for_the_bodies() {
    let mut c = Client::logged_in(&[message(1)]).await;
    c.command("s", "SELECT INBOX").await;
    // Only the header is read for ENVELOPE: BODYSTRUCTURE must still come from the whole
    // message, whose body (its line count) differs from the header's.
    let envelope = c.command("f1", "FETCH 1 (ENVELOPE)").await;
    assert!(envelope[0].contains("\"message 1\""), "{envelope:?}");
    let path = the_message_file(&c);
    let text = std::fs::read_to_string(&path).expect("message");
    let lines = text
        .split("\r\n\r\n")
        .nth(1)
        .expect("a body")
        .matches("\r\n")
        .count();
    let both = c.command("f2", "FETCH 1 (ENVELOPE BODYSTRUCTURE)").await;
    assert!(
        both[0].contains(&format!(
            "\"7BIT\" {} {lines} ",
            "This is message 1.\r\n".len()
        )),
        "{both:?}"
    );
    assert!(both[0].contains("\"message 1\""), "{both:?}");
}
