//! IMAP4rev2 dialogues in-process (see [`super::tests`]): what ENABLE IMAP4rev2 changes,
//! each beside what the same commands give a session that did not enable it.

use super::tests::{message, Client};

/// A logged-in session with two new messages in INBOX; `rev2` enables IMAP4rev2 first.
async fn session(rev2: bool) -> Client {
    let mut c = Client::logged_in(&[message(1), message(2)]).await;
    if rev2 {
        let reply = c.command("e", "ENABLE IMAP4rev2").await;
        assert_eq!(
            reply,
            ["* ENABLED IMAP4rev2\r\n", "e OK ENABLE completed.\r\n"]
        );
    }
    c
}

fn has(reply: &[String], needle: &str) -> bool {
    reply.iter().any(|l| l.contains(needle))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn capability_lists_rev2_and_enable_ignores_others() {
    let mut c = Client::logged_in(&[]).await;
    let reply = c.command("c", "CAPABILITY").await;
    assert!(
        reply[0].starts_with("* CAPABILITY IMAP4REV1 IMAP4rev2 "),
        "{reply:?}"
    );
    // Case-insensitive, beside a capability the server does not enable.
    let reply = c.command("e", "ENABLE X-UNKNOWN imap4REV2").await;
    assert_eq!(
        reply,
        ["* ENABLED imap4REV2\r\n", "e OK ENABLE completed.\r\n"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn select_without_recent_or_unseen_but_with_its_list_line() {
    let mut rev1 = session(false).await;
    let reply = rev1.command("s", "SELECT INBOX").await;
    assert!(has(&reply, "* 2 RECENT\r\n"), "{reply:?}");
    assert!(has(&reply, "[UNSEEN 1]"), "{reply:?}");
    assert!(!has(&reply, "* LIST"), "{reply:?}");

    let mut rev2 = session(true).await;
    rev2.command("c", "CREATE INBOX/sub").await;
    let reply = rev2.command("s", "SELECT INBOX").await;
    assert!(has(&reply, "* 2 EXISTS\r\n"), "{reply:?}");
    assert!(!has(&reply, "RECENT"), "{reply:?}");
    assert!(!has(&reply, "[UNSEEN"), "{reply:?}");
    assert!(
        has(&reply, "* LIST (\\HasChildren) \"/\" INBOX\r\n"),
        "{reply:?}"
    );
    assert!(has(&reply, "[UIDVALIDITY "), "{reply:?}");
    assert!(has(&reply, "[UIDNEXT 3]"), "{reply:?}");
    assert!(has(&reply, "[PERMANENTFLAGS ("), "{reply:?}");
    assert!(reply.last().unwrap().starts_with("s OK [READ-WRITE]"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_recent_in_flags_nor_for_new_mail() {
    for rev2 in [false, true] {
        let mut c = session(rev2).await;
        c.command("s", "SELECT INBOX").await;
        let reply = c.command("f", "FETCH 1 FLAGS").await;
        assert_eq!(reply.len(), 2, "{reply:?}");
        assert_eq!(reply[0].contains("\\Recent"), !rev2, "{reply:?}");
        c.deliver(&message(3));
        let reply = c.command("n", "NOOP").await;
        assert!(has(&reply, "* 3 EXISTS\r\n"), "{reply:?}");
        assert_eq!(has(&reply, "RECENT"), !rev2, "{reply:?}");
        // STORE's FETCH likewise.
        let reply = c.command("t", "STORE 3 +FLAGS (\\Flagged)").await;
        assert!(has(&reply, "FLAGS (\\Flagged"), "{reply:?}");
        assert_eq!(has(&reply, "\\Recent"), !rev2, "{reply:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn search_answers_esearch_and_refuses_recent_keys() {
    let mut rev1 = session(false).await;
    rev1.command("s", "SELECT INBOX").await;
    let reply = rev1.command("q", "SEARCH ALL").await;
    assert_eq!(reply[0], "* SEARCH 1 2\r\n");
    let reply = rev1.command("r", "SEARCH NEW").await;
    assert_eq!(reply[0], "* SEARCH 1 2\r\n");

    let mut c = session(true).await;
    c.command("s", "SELECT INBOX").await;
    let reply = c.command("q", "SEARCH ALL").await;
    assert_eq!(reply[0], "* ESEARCH (TAG \"q\") ALL 1:2\r\n");
    let reply = c.command("u", "UID SEARCH SUBJECT \"message 2\"").await;
    assert_eq!(reply[0], "* ESEARCH (TAG \"u\") UID ALL 2\r\n");
    // Nothing found: no ALL (RFC 4731 §3.1).
    let reply = c.command("n", "SEARCH DELETED").await;
    assert_eq!(reply[0], "* ESEARCH (TAG \"n\")\r\n");
    // RETURN as before.
    let reply = c.command("m", "SEARCH RETURN (MIN COUNT) ALL").await;
    assert_eq!(reply[0], "* ESEARCH (TAG \"m\") MIN 1 COUNT 2\r\n");
    for key in ["RECENT", "NEW", "OLD", "NOT (SEEN OR NEW FLAGGED)"] {
        let reply = c.command("b", &format!("SEARCH {key}")).await;
        assert!(reply[0].starts_with("b BAD "), "{key}: {reply:?}");
    }
    let reply = c.command("t", "SORT (DATE) UTF-8 RECENT").await;
    assert!(reply[0].starts_with("t BAD "), "{reply:?}");
    // SORT keeps its own answer.
    let reply = c.command("o", "SORT (SUBJECT) UTF-8 ALL").await;
    assert_eq!(reply[0], "* SORT 1 2\r\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_deleted_for_rev2_recent_for_rev1() {
    let mut rev1 = session(false).await;
    let reply = rev1.command("a", "STATUS INBOX (MESSAGES RECENT)").await;
    assert_eq!(reply[0], "* STATUS INBOX (MESSAGES 2 RECENT 2)\r\n");
    let reply = rev1.command("b", "STATUS INBOX (DELETED)").await;
    assert!(reply[0].starts_with("b BAD "), "{reply:?}");

    let mut c = session(true).await;
    c.command("s", "SELECT INBOX").await;
    c.command("d", "STORE 2 +FLAGS.SILENT (\\Deleted)").await;
    let reply = c.command("a", "STATUS INBOX (MESSAGES DELETED)").await;
    assert_eq!(reply[0], "* STATUS INBOX (MESSAGES 2 DELETED 1)\r\n");
    let reply = c.command("b", "STATUS INBOX (RECENT)").await;
    assert!(reply[0].starts_with("b BAD "), "{reply:?}");
    // LIST-STATUS takes the same items.
    let reply = c
        .command("l", "LIST \"\" INBOX RETURN (STATUS (DELETED))")
        .await;
    assert!(has(&reply, "* STATUS INBOX (DELETED 1)\r\n"), "{reply:?}");
    let reply = c
        .command("m", "LIST \"\" INBOX RETURN (STATUS (RECENT))")
        .await;
    assert!(reply[0].starts_with("m BAD "), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mailbox_names_are_utf8_on_the_wire_and_modified_utf7_on_disk() {
    let mut c = session(false).await;
    // Created by a rev1 client in modified UTF-7; a rev1 client cannot quote 8-bit bytes.
    c.command("c", "CREATE \"Entw&APw-rfe\"").await;
    let reply = c.command("x", "SELECT \"Entwürfe\"").await;
    assert!(reply[0].starts_with("x BAD "), "{reply:?}");
    assert!(c.maildir().join(".Entw&APw-rfe").is_dir());

    let reply = c.command("e", "ENABLE IMAP4rev2").await;
    assert_eq!(reply[0], "* ENABLED IMAP4rev2\r\n");
    // The same mailbox, by its UTF-8 name, quoted and as a literal.
    let reply = c.command("s", "SELECT \"Entwürfe\"").await;
    assert!(
        has(&reply, "* LIST (\\HasNoChildren) \"/\" {9}\r\n"),
        "{reply:?}"
    );
    assert!(reply.iter().any(|l| l == "Entwürfe"), "{reply:?}");
    assert!(reply.last().unwrap().starts_with("s OK"), "{reply:?}");
    c.send("t STATUS {9+}\r\nEntwürfe (MESSAGES)\r\n".as_bytes())
        .await;
    let reply = c.until("t").await;
    assert_eq!(reply[..2], ["* STATUS {9}\r\n", "Entwürfe"], "{reply:?}");
    // A rev2 client's `&` is a character: stored as modified UTF-7's `&-`.
    c.command("r", "CREATE \"R&D/Fußnoten\"").await;
    assert!(c.maildir().join(".R&-D.Fu&AN8-noten").is_dir());
    let reply = c.command("l", "LIST \"\" \"R&D/*\"").await;
    assert_eq!(
        reply[..2],
        ["* LIST (\\HasNoChildren) \"/\" {13}\r\n", "R&D/Fußnoten"],
        "{reply:?}"
    );
    let reply = c.command("p", "LIST \"\" \"Entw*\"").await;
    assert!(reply.iter().any(|l| l == "Entwürfe"), "{reply:?}");
    // Modified UTF-7 is no longer decoded: `&` matches itself.
    let reply = c.command("u", "LIST \"\" \"Entw&*\"").await;
    assert_eq!(reply, ["u OK LIST completed.\r\n"]);
    // MULTIAPPEND (which imapd parses itself) to the quoted name.
    c.send("m APPEND \"Entwürfe\" {1+}\r\na {1+}\r\nb\r\n".as_bytes())
        .await;
    let reply = c.until("m").await;
    assert!(has(&reply, "* 2 EXISTS\r\n"), "{reply:?}");
    assert!(
        reply.last().unwrap().starts_with("m OK [APPENDUID "),
        "{reply:?}"
    );
    let reply = c.command("k", "STATUS \"Entwürfe\" (MESSAGES)").await;
    assert_eq!(reply[2], " (MESSAGES 2)\r\n", "{reply:?}");
    // Invalid UTF-8 in a quoted string.
    c.send(b"v SELECT \"Entw\xfcrfe\"\r\n").await;
    let reply = c.until("v").await;
    assert_eq!(reply, ["v BAD Quoted string is not UTF-8.\r\n"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn utf8_in_search_strings_and_extension_commands() {
    let subject = "From: a@example.org\r\nSubject: Grüße\r\n\r\nHallo\r\n";
    let mut c = Client::logged_in(&[message(1), subject.as_bytes().to_vec()]).await;
    c.command("e", "ENABLE IMAP4rev2").await;
    c.command("s", "SELECT INBOX").await;
    let reply = c.command("q", "SEARCH SUBJECT \"Grüße\"").await;
    assert_eq!(reply[0], "* ESEARCH (TAG \"q\") ALL 2\r\n");
    // Our own parsers (LIST-EXTENDED, NOTIFY) get the same literal.
    c.command("c", "CREATE \"Ablage/Grüße\"").await;
    let reply = c.command("l", "LIST \"\" (\"Ablage/Grüße\" x)").await;
    assert!(reply.iter().any(|l| l == "Ablage/Grüße"), "{reply:?}");
    let reply = c
        .command(
            "n",
            "NOTIFY SET STATUS (mailboxes \"Ablage/Grüße\" (MessageNew))",
        )
        .await;
    assert_eq!(reply[0], "* STATUS {14}\r\n", "{reply:?}");
    assert_eq!(reply[1], "Ablage/Grüße");
    assert!(reply[2].starts_with(" (MESSAGES 0 UIDNEXT 1 UIDVALIDITY "));
}

/// RFC 9051 Appendix E: parameter value continuations (RFC 2231) are decoded in
/// BODYSTRUCTURE (in both revisions: mail-parser does it).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bodystructure_decodes_rfc2231_continuations() {
    let m = "From: a@example.org\r\nSubject: x\r\nMIME-Version: 1.0\r\n\
             Content-Type: text/plain; charset=us-ascii\r\n\
             Content-Disposition: attachment; filename*0=\"long-\"; filename*1=\"name.txt\"\r\n\
             \r\nbody\r\n";
    let mut c = Client::logged_in(&[m.as_bytes().to_vec()]).await;
    c.command("e", "ENABLE IMAP4rev2").await;
    c.command("s", "SELECT INBOX").await;
    let reply = c.command("f", "FETCH 1 BODYSTRUCTURE").await;
    assert!(
        has(&reply, "(\"ATTACHMENT\" (\"FILENAME\" \"long-name.txt\"))"),
        "{reply:?}"
    );
}
