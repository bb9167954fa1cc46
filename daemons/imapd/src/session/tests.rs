//! Whole IMAP dialogues with the session in-process, over `tokio::io::duplex` on raw bytes
//! (mini-redis `tests/server.rs` is the model): the real loop, store and authenticator, no
//! socket and no daemon, a few milliseconds each.

use std::sync::Arc;
use std::time::Duration;

use tokio::io::{
    AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, DuplexStream, ReadHalf, WriteHalf,
};
use tokio::task::JoinHandle;

use inetkit_auth::testing::{self, ALICE_PLAIN};
use inetkit_maildir::Store;
use inetkit_runtime::session::TlsSession;
use inetkit_runtime::testing::TempDir;

use super::input::{self, LiteralBudget};
use super::Session;
use crate::{watch, Imap};

/// A guard against a session that never answers: a test fails rather than hangs.
const NO_ANSWER: Duration = Duration::from_secs(20);

pub(super) fn message(n: u32) -> Vec<u8> {
    format!(
        "From: Sender <sender@example.org>\r\nTo: alice@localhost\r\nSubject: message {n}\r\n\
         Message-ID: <{n}@example.org>\r\n\r\nThis is message {n}.\r\n"
    )
    .into_bytes()
}

/// The client end of a session running in a task of its own.
pub(super) struct Client {
    reader: BufReader<ReadHalf<DuplexStream>>,
    writer: WriteHalf<DuplexStream>,
    session: JoinHandle<()>,
    root: TempDir,
}

impl Client {
    /// A session with `messages` in alice's INBOX; the greeting is read.
    pub(super) async fn start(messages: &[Vec<u8>]) -> Client {
        Client::start_with(messages, &input::LITERALS).await
    }

    /// [`Client::start`] with a budget of literal bytes of its own.
    pub(super) async fn start_with(
        messages: &[Vec<u8>],
        literals: &'static LiteralBudget,
    ) -> Client {
        let root = TempDir::new("imapd-session");
        let store = Store::new(root.path().join("mail"));
        for m in messages {
            store.deliver("alice", &mut &m[..]).expect("delivery");
        }
        let imap = Arc::new(Imap {
            auth: testing::authenticator(root.path()),
            store,
            tls: None,
            watches: watch::Watches::new(),
            structures: Arc::default(),
            quota: Default::default(),
            proxy: None,
        });
        let peer = inetkit_runtime::testing::peer();
        let (client, server) = tokio::io::duplex(64 * 1024);
        let session = tokio::spawn(async move {
            let mut session = Session::new(imap, peer);
            session.literals = literals;
            session.run(server, true).await;
        });
        let (reader, writer) = tokio::io::split(client);
        let mut client = Client {
            reader: BufReader::new(reader),
            writer,
            session,
            root,
        };
        let greeting = client.line().await;
        assert!(
            greeting.starts_with("* OK [CAPABILITY IMAP4REV1 "),
            "{greeting}"
        );
        client
    }

    /// A session with alice logged in.
    pub(super) async fn logged_in(messages: &[Vec<u8>]) -> Client {
        Client::logged_in_with(messages, &input::LITERALS).await
    }

    /// [`Client::logged_in`] with a budget of literal bytes of its own.
    pub(super) async fn logged_in_with(
        messages: &[Vec<u8>],
        literals: &'static LiteralBudget,
    ) -> Client {
        let mut c = Client::start_with(messages, literals).await;
        let reply = c
            .command("l1", &format!("LOGIN alice \"{}\"", testing::PASSWORD))
            .await;
        assert!(reply[0].starts_with("l1 OK [CAPABILITY "), "{reply:?}");
        c
    }

    /// Mail for alice delivered as another process would, while the session runs.
    pub(super) fn deliver(&self, message: &[u8]) {
        let store = Store::new(self.root.path().join("mail"));
        store.deliver("alice", &mut &message[..]).expect("delivery");
    }

    /// Where alice's mail is stored.
    pub(super) fn maildir(&self) -> std::path::PathBuf {
        self.root.path().join("mail").join("alice")
    }

    pub(super) async fn send(&mut self, bytes: &[u8]) {
        self.writer.write_all(bytes).await.expect("session reads");
    }

    /// The next line, with its CRLF; empty at the end of the stream.
    pub(super) async fn line(&mut self) -> String {
        let mut line = Vec::new();
        let read = self.reader.read_until(b'\n', &mut line);
        tokio::time::timeout(NO_ANSWER, read)
            .await
            .expect("the session answers")
            .expect("duplex read");
        String::from_utf8_lossy(&line).into_owned()
    }

    /// Everything up to and including the line tagged `tag`; a literal is one entry.
    pub(super) async fn until(&mut self, tag: &str) -> Vec<String> {
        let mut out = Vec::new();
        loop {
            let line = self.line().await;
            assert!(!line.is_empty(), "the session ended before {tag}: {out:?}");
            let literal = line
                .strip_suffix("}\r\n")
                .and_then(|l| l.rsplit_once('{'))
                .and_then(|(_, n)| n.parse::<usize>().ok());
            let tagged = line.starts_with(&format!("{tag} "));
            out.push(line);
            if let Some(n) = literal {
                let mut data = vec![0; n];
                let read = self.reader.read_exact(&mut data);
                tokio::time::timeout(NO_ANSWER, read)
                    .await
                    .expect("the session sends the literal")
                    .expect("duplex read");
                out.push(String::from_utf8_lossy(&data).into_owned());
            }
            if tagged {
                return out;
            }
        }
    }

    /// Sends `tag command` and returns the reply up to its tagged line.
    pub(super) async fn command(&mut self, tag: &str, command: &str) -> Vec<String> {
        self.send(format!("{tag} {command}\r\n").as_bytes()).await;
        self.until(tag).await
    }

    /// The session has ended (and closed its end).
    pub(super) async fn ended(mut self) {
        assert_eq!(self.line().await, "", "the session closes the stream");
        tokio::time::timeout(NO_ANSWER, &mut self.session)
            .await
            .expect("the session task ends")
            .expect("the session does not panic");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn login_select_fetch_store_logout() {
    let mut c = Client::start(&[message(1), message(2)]).await;
    let reply = c.command("a1", "LOGIN alice \"correct horse\"").await;
    // The extensions' capabilities follow the base ones (each extension's tests check its own).
    assert_eq!(reply.len(), 1, "{reply:?}");
    assert!(
        reply[0].starts_with(
            "a1 OK [CAPABILITY IMAP4REV1 IMAP4rev2 LITERAL+ SASL-IR ID ENABLE IDLE NAMESPACE UNSELECT \
             CHILDREN SPECIAL-USE "
        ) && reply[0].ends_with("] Logged in.\r\n"),
        "{reply:?}"
    );
    let reply = c.command("a2", "SELECT INBOX").await;
    let highest = reply[7]
        .strip_prefix("* OK [HIGHESTMODSEQ ")
        .and_then(|r| r.split_once(']'))
        .map(|(v, _)| v.to_owned())
        .expect("HIGHESTMODSEQ");
    let validity = reply[5]
        .strip_prefix("* OK [UIDVALIDITY ")
        .and_then(|r| r.split_once(']'))
        .map(|(v, _)| v.to_owned())
        .expect("UIDVALIDITY");
    assert_eq!(
        reply,
        [
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft)\r\n".to_owned(),
            "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft \\*)] \
             Flags permitted.\r\n"
                .to_owned(),
            "* 2 EXISTS\r\n".to_owned(),
            "* 2 RECENT\r\n".to_owned(),
            "* OK [UNSEEN 1] First unseen.\r\n".to_owned(),
            format!("* OK [UIDVALIDITY {validity}] UIDs valid.\r\n"),
            "* OK [UIDNEXT 3] Predicted next UID.\r\n".to_owned(),
            format!("* OK [HIGHESTMODSEQ {highest}] Highest\r\n"),
            "a2 OK [READ-WRITE] SELECT completed.\r\n".to_owned(),
        ]
    );
    let reply = c
        .command(
            "a3",
            "UID FETCH 1:* (FLAGS BODY.PEEK[HEADER.FIELDS (Subject)])",
        )
        .await;
    assert_eq!(
        reply,
        [
            "* 1 FETCH (UID 1 FLAGS (\\Recent) BODY[HEADER.FIELDS (SUBJECT)] {22}\r\n",
            "Subject: message 1\r\n\r\n",
            ")\r\n",
            "* 2 FETCH (UID 2 FLAGS (\\Recent) BODY[HEADER.FIELDS (SUBJECT)] {22}\r\n",
            "Subject: message 2\r\n\r\n",
            ")\r\n",
            "a3 OK FETCH completed.\r\n",
        ]
    );
    // $Label is new: announced before the FETCH that carries it (RFC 3501 §7.2.6).
    let reply = c.command("a4", "STORE 1 +FLAGS (\\Flagged $Label)").await;
    assert_eq!(
        reply,
        [
            "* FLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label)\r\n",
            "* OK [PERMANENTFLAGS (\\Answered \\Flagged \\Deleted \\Seen \\Draft $Label \\*)] \
             Flags permitted.\r\n",
            "* 1 FETCH (UID 1 FLAGS (\\Flagged \\Recent $Label))\r\n",
            "a4 OK STORE completed.\r\n",
        ]
    );
    // BODY[] (not PEEK) sets \Seen, and the new flags come with it.
    let body = String::from_utf8(message(2)).expect("ASCII");
    let reply = c.command("a5", "FETCH 2 (BODY[])").await;
    assert_eq!(
        reply,
        [
            format!(
                "* 2 FETCH (FLAGS (\\Seen \\Recent) BODY[] {{{}}}\r\n",
                body.len()
            ),
            body,
            ")\r\n".to_owned(),
            "a5 OK FETCH completed.\r\n".to_owned(),
        ]
    );
    let reply = c.command("a6", "UID SEARCH UNSEEN").await;
    assert_eq!(reply, ["* SEARCH 1\r\n", "a6 OK SEARCH completed.\r\n"]);
    let reply = c.command("a7", "LOGOUT").await;
    assert_eq!(
        reply,
        ["* BYE Logging out.\r\n", "a7 OK LOGOUT completed.\r\n"]
    );
    c.ended().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_before_login() {
    let mut c = Client::start(&[message(1)]).await;
    assert_eq!(
        c.command("b1", "SELECT INBOX").await,
        ["b1 BAD Not logged in.\r\n"]
    );
    c.send(b"\x00\xff garbage\r\n").await;
    assert_eq!(c.line().await, "* BAD Syntax error.\r\n");
    assert_eq!(c.command("b2", "FROB").await, ["b2 BAD Syntax error.\r\n"]);
    // Before login no literal of 16 KiB or more is taken: refused before it is sent.
    assert_eq!(
        c.command("b3", "LOGIN {20000}").await,
        ["b3 NO [TOOBIG] Literal too large.\r\n"]
    );
    // An overlong line loses its tag with it.
    let mut long = b"b4 NOOP ".to_vec();
    long.extend(std::iter::repeat_n(b'x', 70_000));
    long.extend_from_slice(b"\r\n");
    c.send(&long).await;
    assert_eq!(c.line().await, "* BAD Command line too long.\r\n");
    // A synchronising literal gets its continuation; LITERAL+ does not wait for one.
    c.send(b"b5 LOGIN {5}\r\n").await;
    assert_eq!(c.line().await, "+ Ready for literal data\r\n");
    c.send(b"alice {5+}\r\nwrong\r\n").await;
    assert_eq!(
        c.until("b5").await,
        ["b5 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"]
    );
    assert_eq!(
        c.command("b6", "LOGIN alice wrong").await,
        ["b6 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"]
    );
    // The third failure ends the session.
    c.send(b"b7 LOGIN alice wrong\r\n").await;
    assert_eq!(
        c.line().await,
        "b7 NO [AUTHENTICATIONFAILED] Authentication failed.\r\n"
    );
    assert_eq!(c.line().await, "* BYE Too many failed logins.\r\n");
    c.ended().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn errors_after_login() {
    let mut c = Client::logged_in(&[message(1)]).await;
    assert_eq!(
        c.command("c1", "LOGIN alice \"correct horse\"").await,
        ["c1 BAD Already logged in.\r\n"]
    );
    assert_eq!(
        c.command("c2", "FETCH 1 FLAGS").await,
        ["c2 BAD No mailbox selected.\r\n"]
    );
    assert_eq!(
        c.command("c3", "SELECT Nope").await,
        ["c3 NO [NONEXISTENT] No such mailbox.\r\n"]
    );
    assert_eq!(
        c.command("c4", "APPEND Nope {1+}\r\nx").await,
        ["c4 NO [TRYCREATE] No such mailbox.\r\n"]
    );
    let reply = c.command("c5", "EXAMINE INBOX").await;
    assert_eq!(
        reply.last().map(String::as_str),
        Some("c5 OK [READ-ONLY] EXAMINE completed.\r\n")
    );
    assert_eq!(
        c.command("c6", "FETCH 2 FLAGS").await,
        ["c6 BAD Invalid message sequence number.\r\n"]
    );
    assert_eq!(
        c.command("c7", "STORE 1 +FLAGS (\\Seen)").await,
        ["c7 NO [READ-ONLY] Mailbox is read-only.\r\n"]
    );
    assert_eq!(
        c.command("c8", "SEARCH CHARSET KOI8-R ALL").await,
        ["c8 NO [BADCHARSET (UTF-8 US-ASCII)] Unsupported charset.\r\n"]
    );
    // The client leaves in the middle of a literal: the session ends quietly.
    c.send(b"c9 APPEND INBOX {100}\r\n").await;
    assert_eq!(c.line().await, "+ Ready for literal data\r\n");
    c.send(b"short").await;
    c.writer.shutdown().await.expect("shutdown");
    c.ended().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn authenticate_login_and_plain() {
    let mut c = Client::start(&[]).await;
    c.send(b"d1 AUTHENTICATE LOGIN\r\n").await;
    assert_eq!(c.line().await, "+ VXNlcm5hbWU6\r\n");
    c.send(b"YWxpY2U=\r\n").await;
    assert_eq!(c.line().await, "+ UGFzc3dvcmQ6\r\n");
    // "correct horse"
    c.send(b"Y29ycmVjdCBob3JzZQ==\r\n").await;
    let reply = c.until("d1").await;
    assert!(reply[0].starts_with("d1 OK [CAPABILITY "), "{reply:?}");

    let mut c = Client::start(&[]).await;
    // SASL-IR.
    let reply = c
        .command("d2", &format!("AUTHENTICATE PLAIN {ALICE_PLAIN}"))
        .await;
    assert!(reply[0].starts_with("d2 OK [CAPABILITY "), "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn list_patterns_with_a_character_across_byte_five() {
    // "abcd&AOk-" is "abcdé": byte 5 is inside the é, where the INBOX check once sliced.
    let mut c = Client::logged_in(&[]).await;
    assert_eq!(
        c.command("e1", "LIST \"\" \"abcd&AOk-\"").await,
        ["e1 OK LIST completed.\r\n"]
    );
    assert_eq!(
        c.command("e2", "CREATE \"abcd&AOk-/x\"").await,
        ["e2 OK CREATE completed.\r\n"]
    );
    assert_eq!(
        c.command("e3", "LIST \"\" \"abcd&AOk-*\"").await,
        [
            "* LIST (\\Noselect \\HasChildren) \"/\" \"abcd&AOk-\"\r\n",
            "* LIST (\\HasNoChildren) \"/\" \"abcd&AOk-/x\"\r\n",
            "e3 OK LIST completed.\r\n",
        ]
    );
    assert_eq!(
        c.command("e4", "LSUB \"\" \"&AOk-\"").await,
        ["e4 OK LSUB completed.\r\n"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fetch_literals_and_the_response_budget() {
    let mut nul = b"Subject: nul\r\n\r\na\0b\r\n".to_vec();
    nul.extend(std::iter::repeat_n(b'x', 1000));
    let mut c = Client::logged_in(&[nul, message(2)]).await;
    c.command("f1", "SELECT INBOX").await;
    // A literal may not hold NUL: sent as 0x80 (shown here as U+FFFD).
    assert_eq!(
        c.command("f2", "FETCH 1 (BODY.PEEK[TEXT] BODY.PEEK[]<14.3>)")
            .await,
        [
            "* 1 FETCH (BODY[TEXT] {1005}\r\n",
            &format!("a\u{FFFD}b\r\n{}", "x".repeat(1000)),
            " BODY[]<14> {3}\r\n",
            "\r\na",
            ")\r\n",
            "f2 OK FETCH completed.\r\n",
        ]
    );
    // 200 copies of a 1 KiB message: over its response's budget, so nothing for it; the
    // other message's response, 200 copies of 130 bytes, goes out.
    let many = vec!["BODY.PEEK[]"; 200].join(" ");
    let reply = c.command("f3", &format!("FETCH 1:2 (UID {many})")).await;
    assert_eq!(
        reply.last().map(String::as_str),
        Some("f3 NO [LIMIT] FETCH response too large: fetch fewer items at once.\r\n")
    );
    assert!(
        !reply.iter().any(|l| l.starts_with("* 1 FETCH")),
        "{reply:?}"
    );
    assert!(
        reply[0].starts_with("* 2 FETCH (UID 2 BODY[] {"),
        "{reply:?}"
    );
    assert_eq!(reply.len(), 2 * 200 + 2, "{reply:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn literals_in_flight_share_one_budget() {
    let budget: &'static LiteralBudget = Box::leak(Box::new(LiteralBudget::new(100_000)));
    let mut a = Client::logged_in_with(&[], budget).await;
    let mut b = Client::logged_in_with(&[], budget).await;
    let busy = "NO [LIMIT] Too much data in flight from other clients; try again later.\r\n";
    // a sends most of an 80,000-byte literal and stalls: it holds that much of the budget.
    let message = [message(1), vec![b'x'; 80_000 - message(1).len()]].concat();
    a.send(b"a1 APPEND INBOX {80000+}\r\n").await;
    a.send(&message[..70_000]).await;
    tokio::time::timeout(NO_ANSWER, async {
        while budget.available() > 20_000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    })
    .await
    .expect("a's session reads the literal");
    // A synchronising literal larger than what is left is refused before it is sent.
    assert_eq!(
        b.command("b1", "APPEND INBOX {50000}").await,
        [format!("b1 {busy}")]
    );
    // A LITERAL+ one arrives anyway: read, dropped, refused; the session goes on.
    b.send(b"b2 APPEND INBOX {50000+}\r\n").await;
    b.send(&[b'y'; 50_000]).await;
    b.send(b"\r\n").await;
    assert_eq!(b.until("b2").await, [format!("b2 {busy}")]);
    assert_eq!(b.command("b3", "NOOP").await, ["b3 OK NOOP completed.\r\n"]);
    // a's command completes, and gives its share back.
    a.send(&message[70_000..]).await;
    a.send(b"\r\n").await;
    let reply = a.until("a1").await;
    assert!(reply[0].starts_with("a1 OK [APPENDUID "), "{reply:?}");
    assert_eq!(budget.available(), 100_000);
    b.send(b"b4 APPEND INBOX {50000}\r\n").await;
    assert_eq!(b.line().await, "+ Ready for literal data\r\n");
    b.send(&[b'z'; 50_000]).await;
    b.send(b"\r\n").await;
    let reply = b.until("b4").await;
    assert!(reply[0].starts_with("b4 OK [APPENDUID "), "{reply:?}");
}
