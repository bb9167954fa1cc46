//! The submission state machine driven in-process on raw bytes (no sockets, no binary): each
//! test is one dialogue over an in-memory pipe, in milliseconds. What needs a real client,
//! TLS, delivery or a smarthost is in tests/daemons/test_smtp_submit.py.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::sync::Arc;

use inetkit_auth::aliases::AliasesSource;
use inetkit_auth::testing::{self as users, ALICE_PLAIN};
use inetkit_maildir::Store;
use inetkit_runtime::server::Peer;
use inetkit_runtime::testing::{self, Client, TempDir};
use inetkit_spool::Spool;
use tokio_util::sync::CancellationToken;

use super::Session;
use crate::queue::{self, Deliverer};
use crate::relay::RelayConfig;
use crate::Submit;

/// A users file with alice and bob, a spool and a mail store, and the daemon's shared state
/// over them (its delivery queue running, no smarthost).
struct Home {
    dir: TempDir,
    submit: Arc<Submit>,
    stop: CancellationToken,
}

impl Home {
    fn new() -> Home {
        Home::with_senders(BTreeMap::new())
    }

    /// With extra envelope senders per user (`[smtp.senders]`).
    fn with_senders(senders: BTreeMap<String, Vec<String>>) -> Home {
        let dir = TempDir::new("smtp-submit-session");
        let spool = Spool::new(dir.path().join("spool"));
        if let Err(err) = spool.prepare() {
            panic!("spool: {err}");
        }
        let hostname = "mx.test".to_owned();
        let deliverer = Arc::new(Deliverer::new(
            spool.clone(),
            Store::new(dir.path().join("mail")),
            None,
            hostname.clone(),
            RelayConfig::default().retry_policy(),
        ));
        let stop = CancellationToken::new();
        let submit = Arc::new(Submit {
            auth: users::authenticator(dir.path())
                .with_local_domains(&["localhost".to_owned(), "example.org".to_owned()]),
            tls: None,
            hostname,
            aliases: AliasesSource::new(Some(dir.path().join("aliases"))),
            max_size: 10_000,
            max_recipients: 3,
            senders,
            check_from_header: true,
            relay_enabled: false,
            spool,
            queue: queue::start(deliverer, stop.clone()),
        });
        Home { dir, submit, stop }
    }

    /// A session from loopback, greeted and past EHLO.
    async fn connect(&self) -> Client {
        self.connect_from(testing::peer()).await
    }

    async fn connect_from(&self, peer: Peer) -> Client {
        let session = Session::new(self.submit.clone());
        let mut client = testing::serve(session, peer);
        assert_eq!(
            client.line().await,
            "220 mx.test ESMTP inetkit submission ready"
        );
        client
    }

    /// A session logged in as alice.
    async fn login(&self) -> Client {
        let mut client = self.connect().await;
        client.send("EHLO client.test\r\n").await;
        client.lines_until("250 HELP").await;
        assert_eq!(
            client.ask(&format!("AUTH PLAIN {ALICE_PLAIN}")).await,
            "235 2.7.0 Authentication successful."
        );
        client
    }
}

/// MAIL FROM alice, RCPT TO bob and DATA, each accepted: the client may send the message.
async fn start_message(client: &mut Client) {
    let replies = [
        ("MAIL FROM:<alice@example.org>", "250 2.1.0 Sender OK."),
        ("RCPT TO:<bob@localhost>", "250 2.1.5 Recipient OK."),
        ("DATA", "354 Start mail input; end with <CRLF>.<CRLF>"),
    ];
    for (command, reply) in replies {
        assert_eq!(client.ask(command).await, reply);
    }
}

impl Drop for Home {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

#[tokio::test]
async fn ehlo_auth_mail_rcpt_data_quit() {
    let home = Home::new();
    let mut client = home.connect().await;
    client.send("EHLO client.test\r\n").await;
    assert_eq!(
        client.lines_until("250 HELP").await,
        [
            "250-mx.test greets client.test",
            "250-PIPELINING",
            "250-SIZE 10000",
            "250-8BITMIME",
            "250-ENHANCEDSTATUSCODES",
            "250-SMTPUTF8",
            "250-AUTH PLAIN LOGIN",
            "250 HELP",
        ],
        "loopback may log in without TLS; no STARTTLS without a certificate"
    );
    assert_eq!(
        client.ask("MAIL FROM:<alice@example.org>").await,
        "530 5.7.0 Authentication required."
    );
    assert_eq!(
        client.ask(&format!("AUTH PLAIN {ALICE_PLAIN}")).await,
        "235 2.7.0 Authentication successful."
    );
    assert_eq!(
        client.ask("MAIL FROM:<alice@example.org> SIZE=100").await,
        "250 2.1.0 Sender OK."
    );
    assert_eq!(
        client.ask("RCPT TO:<bob+box@localhost>").await,
        "250 2.1.5 Recipient OK."
    );
    assert_eq!(
        client.ask("RCPT TO:<nobody@localhost>").await,
        "550 5.1.1 No such user here."
    );
    assert_eq!(
        client.ask("RCPT TO:<someone@elsewhere.test>").await,
        "550 5.7.1 Relaying denied: no smarthost is configured for non-local recipients."
    );
    assert_eq!(
        client.ask("DATA").await,
        "354 Start mail input; end with <CRLF>.<CRLF>"
    );
    client
        .send("From: alice@example.org\r\nSubject: hi\r\n\r\nHello Bob.\r\n..a dot\r\n.\r\n")
        .await;
    let reply = client.line().await;
    let id = reply.strip_prefix("250 2.0.0 Ok: queued as ");
    assert!(
        id.is_some_and(inetkit_spool::valid_id),
        "{reply}: a spool id"
    );
    // Someone else's From: is refused once the message is read.
    start_message(&mut client).await;
    client
        .send("From: Bob <bob@example.org>\r\nSubject: not me\r\n\r\nx\r\n.\r\n")
        .await;
    assert_eq!(
        client.line().await,
        "550 5.7.1 From: address <bob@example.org> does not belong to user alice."
    );
    assert_eq!(client.ask("QUIT").await, "221 2.0.0 Bye.");
    assert!(client.is_closed().await);
}

#[tokio::test]
async fn auth_login_and_failures() {
    let home = Home::new();
    let mut client = home.connect().await;
    assert_eq!(client.ask("AUTH LOGIN").await, "503 5.5.1 Send EHLO first.");
    client.send("EHLO client.test\r\n").await;
    client.lines_until("250 HELP").await;
    assert_eq!(client.ask("AUTH LOGIN").await, "334 VXNlcm5hbWU6");
    assert_eq!(client.ask("*").await, "501 5.0.0 Authentication cancelled.");
    assert_eq!(
        client.ask("AUTH PLAIN !!!").await,
        "501 5.5.2 Invalid base64 data."
    );
    assert_eq!(
        client.ask("AUTH CRAM-MD5").await,
        "504 5.5.4 Unsupported authentication mechanism."
    );
    // bob / wrong, three times: the connection is closed.
    for n in 1..=3 {
        assert_eq!(client.ask("AUTH LOGIN Ym9i").await, "334 UGFzc3dvcmQ6");
        assert_eq!(
            client.ask("d3Jvbmc=").await,
            "535 5.7.8 Authentication credentials invalid.",
            "attempt {n}"
        );
    }
    assert_eq!(
        client.line().await,
        "421 4.7.0 Too many failed logins; closing the connection."
    );
    assert!(client.is_closed().await);

    let mut client = home.connect().await;
    client.send("EHLO client.test\r\n").await;
    client.lines_until("250 HELP").await;
    assert_eq!(client.ask("AUTH LOGIN Ym9i").await, "334 UGFzc3dvcmQ6");
    assert_eq!(
        client.ask("Y29ycmVjdCBob3JzZQ==").await,
        "235 2.7.0 Authentication successful."
    );
    assert_eq!(
        client.ask("AUTH LOGIN").await,
        "503 5.5.1 Already authenticated."
    );
}

#[tokio::test]
async fn commands_out_of_order() {
    let home = Home::new();
    let mut client = home.connect().await;
    assert_eq!(
        client.ask("MAIL FROM:<alice@example.org>").await,
        "503 5.5.1 Send EHLO first."
    );
    drop(client);
    let mut client = home.login().await;
    assert_eq!(
        client.ask("RCPT TO:<bob@localhost>").await,
        "503 5.5.1 Send MAIL first."
    );
    assert_eq!(client.ask("DATA").await, "503 5.5.1 Send MAIL first.");
    assert_eq!(
        client.ask("MAIL FROM:<bob@example.org>").await,
        "553 5.7.1 Sender address <bob@example.org> does not belong to user alice."
    );
    assert_eq!(
        client.ask("MAIL FROM:<alice@example.org> SIZE=20000").await,
        "552 5.3.4 Message size exceeds the limit of 10000 bytes."
    );
    assert_eq!(
        client.ask("MAIL FROM:<alice@example.org>").await,
        "250 2.1.0 Sender OK."
    );
    assert_eq!(
        client.ask("MAIL FROM:<alice@example.org>").await,
        "503 5.5.1 Nested MAIL command."
    );
    assert_eq!(
        client.ask(&format!("AUTH PLAIN {ALICE_PLAIN}")).await,
        "503 5.5.1 Already authenticated."
    );
    assert_eq!(client.ask("DATA").await, "554 5.5.1 No valid recipients.");
    assert_eq!(client.ask("RSET").await, "250 2.0.0 Reset.");
    assert_eq!(
        client.ask("RCPT TO:<bob@localhost>").await,
        "503 5.5.1 Send MAIL first."
    );
    assert_eq!(
        client.ask("STARTTLS").await,
        "454 4.7.0 TLS is not available."
    );
    assert_eq!(client.ask("NOOP").await, "250 2.0.0 OK.");
    assert_eq!(
        client.ask("HELP").await,
        "214 2.0.0 See RFC 5321 and RFC 6409."
    );
}

#[tokio::test]
async fn overlong_unknown_and_malformed_commands() {
    let home = Home::new();
    let mut client = home.connect().await;
    client
        .send(format!("EHLO {}\r\nNOOP\r\n", "a".repeat(1 << 20)))
        .await;
    assert_eq!(client.line().await, "500 5.5.6 Line too long.");
    assert_eq!(client.line().await, "250 2.0.0 OK.");
    assert_eq!(
        client.ask("BDAT 10 LAST").await,
        "500 5.5.2 Command not recognized."
    );
    assert_eq!(
        client.ask("EHLO").await,
        "501 5.5.4 Syntax error: EHLO and HELO need a domain or address."
    );
    assert_eq!(
        client
            .ask("MAIL FROM:<alice@example.org> FOO=\u{7}bar")
            .await,
        "555 5.5.4 Unsupported parameter FOO=bar."
    );
    assert_eq!(
        client.ask("NOOP\u{0}").await,
        "501 5.5.4 Syntax error: NUL characters are not allowed."
    );
    // Bad commands count: the 20th closes the connection.
    for _ in 5..19 {
        assert_eq!(
            client.ask("XYZZY").await,
            "500 5.5.2 Command not recognized."
        );
    }
    assert_eq!(
        client.ask("XYZZY").await,
        "421 4.7.0 Too many errors; closing the connection."
    );
    assert!(client.is_closed().await);
}

#[tokio::test]
async fn pipelined_transaction_gets_replies_in_order() {
    let home = Home::new();
    let mut client = home.login().await;
    client
        .send(
            "MAIL FROM:<alice@example.org>\r\nRCPT TO:<bob@localhost>\r\n\
             RCPT TO:<nobody@localhost>\r\nDATA\r\nFrom: alice@example.org\r\n\r\nbody\r\n\
             .\r\nNOOP\r\n",
        )
        .await;
    assert_eq!(client.line().await, "250 2.1.0 Sender OK.");
    assert_eq!(client.line().await, "250 2.1.5 Recipient OK.");
    assert_eq!(client.line().await, "550 5.1.1 No such user here.");
    assert_eq!(
        client.line().await,
        "354 Start mail input; end with <CRLF>.<CRLF>"
    );
    assert!(client.line().await.starts_with("250 2.0.0 Ok: queued as "));
    assert_eq!(client.line().await, "250 2.0.0 OK.");
}

#[tokio::test]
async fn oversized_message_is_refused_after_the_dot() {
    let home = Home::new();
    let mut client = home.login().await;
    start_message(&mut client).await;
    let line = "x".repeat(998);
    client
        .send(format!(
            "Subject: big\r\n\r\n{}.\r\n",
            format!("{line}\r\n").repeat(20)
        ))
        .await;
    assert_eq!(
        client.line().await,
        "552 5.3.4 Message size exceeds the fixed limit."
    );
    assert_eq!(client.ask("NOOP").await, "250 2.0.0 OK.");
}

#[tokio::test]
async fn no_auth_in_the_clear_from_another_host() {
    let home = Home::new();
    let remote: IpAddr = [192, 0, 2, 1].into();
    let mut client = home.connect_from(testing::peer_at(remote)).await;
    client.send("EHLO client.test\r\n").await;
    let extensions = client.lines_until("250 HELP").await;
    assert!(
        !extensions.iter().any(|e| e.contains("AUTH")),
        "{extensions:?}"
    );
    assert_eq!(
        client.ask(&format!("AUTH PLAIN {ALICE_PLAIN}")).await,
        "538 5.7.11 Encryption required: use STARTTLS first."
    );
}

#[tokio::test]
async fn shutdown_says_goodbye() {
    let home = Home::new();
    let peer = testing::peer();
    let stop = peer.shutdown.clone();
    let mut client = home.connect_from(peer).await;
    assert_eq!(client.ask("NOOP").await, "250 2.0.0 OK.");
    stop.cancel();
    assert_eq!(
        client.line().await,
        "421 4.3.2 Server shutting down; try again later."
    );
    assert!(client.is_closed().await);
    assert!(home.dir.path().join("spool").is_dir());
}

/// `RCPT TO:<@a:@b>` (a source route and no mailbox) was taken as the address `@b`, and
/// `MAIL FROM:<@a>` as the null sender: both are address syntax errors (RFC 5321 §4.1.2).
#[tokio::test]
async fn a_source_route_without_a_mailbox_is_a_syntax_error() {
    let home = Home::with_senders(BTreeMap::from([("alice".to_owned(), vec![String::new()])]));
    let mut client = home.login().await;
    assert_eq!(
        client.ask("MAIL FROM:<@relay.example>").await,
        "501 5.5.4 Syntax error: a source route must end with a colon and a mailbox."
    );
    assert_eq!(client.ask("MAIL FROM:<>").await, "250 2.1.0 Sender OK.");
    assert_eq!(
        client.ask("RCPT TO:<@a:@b>").await,
        "501 5.5.4 Syntax error: a source route must be followed by a mailbox."
    );
    assert_eq!(
        client.ask("RCPT TO:<@a,b:bob@localhost>").await,
        "501 5.5.4 Syntax error: a source route is @domain hops separated by commas."
    );
    assert_eq!(
        client.ask("RCPT TO:<@relay.example:bob@localhost>").await,
        "250 2.1.5 Recipient OK."
    );
}

/// `From: <>` was read as the address "", which passes the From: check for a user who may
/// use the null sender: the null sender is nobody's author address.
#[tokio::test]
async fn an_empty_from_address_is_refused() {
    let home = Home::with_senders(BTreeMap::from([("alice".to_owned(), vec![String::new()])]));
    let mut client = home.login().await;
    for from in ["<>", "Alice <>", "alice@example.org, <>"] {
        start_message(&mut client).await;
        client
            .send(&format!(
                "From: {from}\r\nSubject: nobody\r\n\r\nx\r\n.\r\n"
            ))
            .await;
        assert_eq!(
            client.line().await,
            "550 5.7.1 The From: header cannot be checked: an address is empty.",
            "{from}"
        );
    }
    start_message(&mut client).await;
    client
        .send("From: Alice <alice@example.org>\r\nSubject: me\r\n\r\nx\r\n.\r\n")
        .await;
    assert!(client.line().await.starts_with("250 2.0.0 Ok: queued as "));
}

#[tokio::test]
async fn addresses_in_any_case_aliases_and_expn() {
    let home = Home::new();
    let aliases = home.dir.path().join("aliases");
    if let Err(err) = std::fs::write(&aliases, "postmaster: bob\nstaff: alice, bob\n") {
        panic!("{}: {err}", aliases.display());
    }
    let mut client = home.login().await;
    let replies = [
        ("EXPN staff", "502 5.5.1 EXPN is not available."),
        ("MAIL FROM:<Alice+x@EXAMPLE.org>", "250 2.1.0 Sender OK."),
        ("RCPT TO:<BOB@LocalHost>", "250 2.1.5 Recipient OK."),
        ("RCPT TO:<Staff+news@localhost>", "250 2.1.5 Recipient OK."),
        // Three RCPTs are max_recipients, however many users the alias had.
        ("RCPT TO:<Postmaster>", "250 2.1.5 Recipient OK."),
        (
            "RCPT TO:<alice@localhost>",
            "452 4.5.3 Too many recipients.",
        ),
        ("RSET", "250 2.0.0 Reset."),
        ("MAIL FROM:<alice@localhost>", "250 2.1.0 Sender OK."),
        (
            "RCPT TO:<a@b@localhost>",
            "501 5.1.3 Bad recipient address syntax: an address has exactly one '@'.",
        ),
    ];
    for (command, reply) in replies {
        assert_eq!(client.ask(command).await, reply, "{command}");
    }
}
