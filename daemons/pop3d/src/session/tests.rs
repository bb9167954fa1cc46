//! The POP3 state machine driven in-process on raw bytes (no sockets, no binary): each test
//! is one dialogue over an in-memory pipe, in milliseconds. What needs a real client or TLS
//! is in tests/daemons/test_pop3.py.

use std::net::IpAddr;
use std::sync::Arc;

use inetkit_auth::testing::{self as users, ALICE_PLAIN, PASSWORD};
use inetkit_maildir::Store;
use inetkit_runtime::server::Peer;
use inetkit_runtime::testing::{self, Client, TempDir};

use super::Session;
use crate::Pop3;

/// A users file with alice and bob, and alice's INBOX holding `messages`.
struct Home {
    dir: TempDir,
    pop3: Arc<Pop3>,
}

impl Home {
    fn new(messages: &[&str]) -> Home {
        let dir = TempDir::new("pop3d-session");
        let auth = users::authenticator(dir.path());
        let store = Store::new(dir.path().join("mail"));
        for message in messages {
            if let Err(err) = store.deliver("alice", &mut message.as_bytes()) {
                panic!("delivering: {err}");
            }
        }
        let pop3 = Arc::new(Pop3 {
            auth,
            store,
            tls: None,
            proxy: None,
        });
        Home { dir, pop3 }
    }

    /// A session from loopback, greeted.
    async fn connect(&self) -> Client {
        self.connect_from(testing::peer()).await
    }

    async fn connect_from(&self, peer: Peer) -> Client {
        let session = Session::new(self.pop3.clone());
        let mut client = testing::serve(session, peer);
        assert_eq!(client.line().await, "+OK inetkit POP3 ready.");
        client
    }

    /// A session logged in as alice.
    async fn login(&self) -> Client {
        let mut client = self.connect().await;
        assert_eq!(client.ask("USER alice").await, "+OK");
        let reply = client.ask(&format!("PASS {PASSWORD}")).await;
        assert!(reply.starts_with("+OK Logged in: "), "{reply}");
        client
    }
}

fn message(n: u32) -> String {
    format!("Subject: message {n}\r\n\r\nThis is message {n}.\r\n")
}

#[tokio::test]
async fn capa_login_stat_list_retr_top_uidl_quit() {
    let (one, two) = (message(1), message(2));
    let home = Home::new(&[&one, &two]);
    let mut client = home.connect().await;
    client.send("CAPA\r\n").await;
    assert_eq!(
        client.lines_until(".").await,
        [
            "+OK Capability list follows",
            "TOP",
            "UIDL",
            "RESP-CODES",
            "AUTH-RESP-CODE",
            "PIPELINING",
            "USER",
            "SASL PLAIN LOGIN",
            "IMPLEMENTATION inetkit",
            ".",
        ],
        "loopback may log in without TLS; no STLS without a certificate"
    );
    assert_eq!(client.ask("USER alice").await, "+OK");
    let size = one.len() + two.len();
    assert_eq!(
        client.ask(&format!("PASS {PASSWORD}")).await,
        format!("+OK Logged in: 2 messages ({size} octets).")
    );
    assert_eq!(client.ask("STAT").await, format!("+OK 2 {size}"));
    client.send("LIST\r\n").await;
    assert_eq!(
        client.lines_until(".").await,
        [
            format!("+OK 2 messages ({size} octets)"),
            format!("1 {}", one.len()),
            format!("2 {}", two.len()),
            ".".to_owned(),
        ]
    );
    assert_eq!(client.ask("LIST 2").await, format!("+OK 2 {}", two.len()));
    client.send("RETR 1\r\n").await;
    assert_eq!(
        client.lines_until(".").await,
        [
            &format!("+OK {} octets", one.len()),
            "Subject: message 1",
            "",
            "This is message 1.",
            ".",
        ]
    );
    client.send("TOP 2 0\r\n").await;
    assert_eq!(
        client.lines_until(".").await,
        ["+OK", "Subject: message 2", "", "."]
    );
    client.send("UIDL\r\n").await;
    let uidls = client.lines_until(".").await;
    assert_eq!(uidls.len(), 4, "{uidls:?}");
    let second = uidls[2].split_once(' ').map(|(_, uid)| uid.to_owned());
    let reply = client.ask("UIDL 2").await;
    assert_eq!(reply.strip_prefix("+OK 2 ").map(str::to_owned), second);
    assert_eq!(client.ask("NOOP").await, "+OK");
    assert_eq!(
        client.ask("QUIT").await,
        "+OK Logging out, 0 messages deleted."
    );
    assert!(client.is_closed().await);
}

#[tokio::test]
async fn dele_is_applied_at_quit_and_undone_by_rset() {
    let (one, two, three) = (message(1), message(2), message(3));
    let home = Home::new(&[&one, &two, &three]);
    let mut client = home.login().await;
    assert_eq!(client.ask("DELE 1").await, "+OK Marked to be deleted.");
    assert_eq!(client.ask("DELE 1").await, "-ERR There is no such message.");
    assert_eq!(client.ask("RETR 1").await, "-ERR There is no such message.");
    let rest = two.len() + three.len();
    assert_eq!(client.ask("STAT").await, format!("+OK 2 {rest}"));
    let all = one.len() + rest;
    assert_eq!(
        client.ask("RSET").await,
        format!("+OK 3 messages ({all} octets).")
    );
    assert_eq!(client.ask("DELE 2").await, "+OK Marked to be deleted.");
    assert_eq!(
        client.ask("QUIT").await,
        "+OK Logging out, 1 messages deleted."
    );
    assert!(client.is_closed().await);

    let mut client = home.login().await;
    let left = one.len() + three.len();
    assert_eq!(client.ask("STAT").await, format!("+OK 2 {left}"));
    // Without QUIT there is no UPDATE: a vanished client deletes nothing.
    assert_eq!(client.ask("DELE 1").await, "+OK Marked to be deleted.");
    drop(client);
    let mut client = loop {
        // Until the server has noticed the other session is gone, the maildrop is in use.
        let mut client = home.connect().await;
        assert_eq!(client.ask("USER alice").await, "+OK");
        let reply = client.ask(&format!("PASS {PASSWORD}")).await;
        if reply.starts_with("+OK") {
            break client;
        }
        assert!(reply.starts_with("-ERR [IN-USE]"), "{reply}");
        tokio::task::yield_now().await;
    };
    assert_eq!(client.ask("STAT").await, format!("+OK 2 {left}"));
}

#[tokio::test]
async fn second_session_gets_in_use() {
    let one = message(1);
    let home = Home::new(&[&one]);
    let mut first = home.login().await;
    let mut second = home.connect().await;
    assert_eq!(second.ask("USER alice").await, "+OK");
    assert_eq!(
        second.ask(&format!("PASS {PASSWORD}")).await,
        "-ERR [IN-USE] Mailbox is locked by another POP3 session."
    );
    assert_eq!(
        first.ask("QUIT").await,
        "+OK Logging out, 0 messages deleted."
    );
}

#[tokio::test]
async fn auth_plain_and_login() {
    let home = Home::new(&[]);
    let mut client = home.connect().await;
    client.send("AUTH\r\n").await;
    assert_eq!(
        client.lines_until(".").await,
        ["+OK Mechanisms follow", "PLAIN", "LOGIN", "."]
    );
    assert_eq!(
        client.ask(&format!("AUTH PLAIN {ALICE_PLAIN}")).await,
        "+OK Logged in: 0 messages (0 octets)."
    );
    assert_eq!(client.ask("AUTH PLAIN").await, "-ERR Already logged in.");
    assert_eq!(
        client.ask("QUIT").await,
        "+OK Logging out, 0 messages deleted."
    );

    let mut client = home.connect().await;
    assert_eq!(client.ask("AUTH LOGIN").await, "+ VXNlcm5hbWU6");
    // bob / correct horse
    assert_eq!(client.ask("Ym9i").await, "+ UGFzc3dvcmQ6");
    assert_eq!(
        client.ask("Y29ycmVjdCBob3JzZQ==").await,
        "+OK Logged in: 0 messages (0 octets)."
    );

    let mut client = home.connect().await;
    assert_eq!(client.ask("AUTH PLAIN").await, "+ ");
    assert_eq!(client.ask("*").await, "-ERR Authentication cancelled.");
    assert_eq!(
        client.ask("AUTH PLAIN !!!").await,
        "-ERR [AUTH] Invalid base64 data in the response."
    );
    assert_eq!(
        client.ask("AUTH CRAM-MD5").await,
        "-ERR Unsupported authentication mechanism."
    );
}

#[tokio::test]
async fn wrong_passwords_close_the_connection_after_three() {
    let home = Home::new(&[]);
    let mut client = home.connect().await;
    for _ in 0..2 {
        assert_eq!(client.ask("USER alice").await, "+OK");
        assert_eq!(
            client.ask("PASS wrong").await,
            "-ERR [AUTH] Authentication failed."
        );
    }
    // (An unknown user would fail the same way, after a dummy hash that costs as much as
    // a real one: too slow for here.)
    assert_eq!(client.ask("USER bob").await, "+OK");
    assert_eq!(
        client.ask("PASS wrong").await,
        "-ERR [AUTH] Authentication failed."
    );
    assert!(client.is_closed().await);
}

#[tokio::test]
async fn overlong_unknown_and_malformed_commands_keep_the_session() {
    let home = Home::new(&[]);
    let mut client = home.connect().await;
    client
        .send(format!("USER {}\r\nNOOP\r\n", "a".repeat(1 << 20)))
        .await;
    assert_eq!(client.line().await, "-ERR Command line too long.");
    assert_eq!(client.line().await, "-ERR Not logged in.");
    assert_eq!(client.ask("APOP alice 0123").await, "-ERR Unknown command.");
    assert_eq!(
        client.ask("\u{0}\u{ff}garbage").await,
        "-ERR Unknown command."
    );
    assert_eq!(client.ask("").await, "-ERR Unknown command.");
    let reply = client.ask("RETR one").await;
    assert!(reply.starts_with("-ERR Syntax error: "), "{reply}");
    for command in ["STAT", "LIST", "RETR 1", "DELE 1", "UIDL", "NOOP"] {
        assert_eq!(
            client.ask(command).await,
            "-ERR Not logged in.",
            "{command}"
        );
    }
    assert_eq!(
        client.ask("PASS x").await,
        "-ERR No user name given: send USER first."
    );
    assert_eq!(client.ask("STLS").await, "-ERR TLS is not configured.");
    assert_eq!(client.ask("QUIT").await, "+OK Bye.");
    assert!(client.is_closed().await);
}

#[tokio::test]
async fn commands_of_the_wrong_state_after_login() {
    let home = Home::new(&[]);
    let mut client = home.login().await;
    assert_eq!(client.ask("USER bob").await, "-ERR Already logged in.");
    assert_eq!(
        client.ask("STLS").await,
        "-ERR STLS is only allowed before login."
    );
    client.send("CAPA\r\n").await;
    let capabilities = client.lines_until(".").await;
    assert!(
        !capabilities.iter().any(|c| c == "USER"),
        "{capabilities:?}"
    );
}

#[tokio::test]
async fn pipelined_commands_are_answered_in_order() {
    let one = message(1);
    let home = Home::new(&[&one]);
    let mut client = home.connect().await;
    client
        .send(format!(
            "USER alice\r\nPASS {PASSWORD}\r\nSTAT\r\nLIST 1\r\nNOOP\r\nRETR 9\r\nQUIT\r\n"
        ))
        .await;
    let size = one.len();
    assert_eq!(client.line().await, "+OK");
    assert!(client.line().await.starts_with("+OK Logged in: 1 messages"));
    assert_eq!(client.line().await, format!("+OK 1 {size}"));
    assert_eq!(client.line().await, format!("+OK 1 {size}"));
    assert_eq!(client.line().await, "+OK");
    assert_eq!(client.line().await, "-ERR There is no such message.");
    assert_eq!(client.line().await, "+OK Logging out, 0 messages deleted.");
    assert!(client.is_closed().await);
}

#[tokio::test]
async fn dots_and_bare_line_feeds_go_out_stuffed_with_crlf() {
    let home = Home::new(&["Subject: dots\n\n.starts with a dot\n..two\nend"]);
    let mut client = home.login().await;
    client.send("RETR 1\r\n").await;
    let lines = client.lines_until(".").await;
    assert_eq!(
        lines.get(1..),
        Some(
            &[
                "Subject: dots",
                "",
                "..starts with a dot",
                "...two",
                "end",
                "."
            ]
            .map(str::to_owned)[..]
        )
    );
}

#[tokio::test]
async fn no_password_in_the_clear_from_another_host() {
    let home = Home::new(&[]);
    let remote: IpAddr = [192, 0, 2, 1].into();
    let mut client = home.connect_from(testing::peer_at(remote)).await;
    client.send("CAPA\r\n").await;
    let capabilities = client.lines_until(".").await;
    assert!(
        !capabilities
            .iter()
            .any(|c| c == "USER" || c.starts_with("SASL")),
        "{capabilities:?}"
    );
    let refused =
        "-ERR [AUTH] Plaintext authentication is not allowed without TLS: use STLS first.";
    assert_eq!(client.ask("USER alice").await, refused);
    assert_eq!(
        client.ask(&format!("AUTH PLAIN {ALICE_PLAIN}")).await,
        refused
    );
    // Listing the mechanisms gives nothing away.
    assert_eq!(client.ask("AUTH").await, "+OK Mechanisms follow");
}

#[tokio::test]
async fn shutdown_says_goodbye() {
    let home = Home::new(&[]);
    let peer = testing::peer();
    let stop = peer.shutdown.clone();
    let mut client = home.connect_from(peer).await;
    assert_eq!(client.ask("NOOP").await, "-ERR Not logged in.");
    stop.cancel();
    assert_eq!(client.line().await, "-ERR [SYS/TEMP] Server shutting down.");
    assert!(client.is_closed().await);
    drop(home.dir);
}
