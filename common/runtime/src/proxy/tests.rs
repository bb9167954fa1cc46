use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use super::*;
use crate::conn::{Farewell, LineConn};

const IMAP: DefaultPorts = DefaultPorts {
    plain: 143,
    tls: 993,
};

fn target(fields: &[(&str, &str)]) -> Result<Option<Target>, ProxyError> {
    Target::from_fields(
        |key| fields.iter().find(|(k, _)| *k == key).map(|(_, v)| *v),
        IMAP,
    )
}

#[test]
fn a_record_without_host_is_served_here() {
    assert_eq!(target(&[("proxy", "")]).unwrap(), None);
    assert_eq!(target(&[]).unwrap(), None);
}

#[test]
fn dovecot_fields_pick_the_port_and_tls() {
    let t = target(&[("host", "mail-a.example.org")]).unwrap().unwrap();
    assert_eq!((t.port, t.tls), (143, BackendTls::Plaintext));
    let t = target(&[("host", "192.0.2.1"), ("ssl", "yes")])
        .unwrap()
        .unwrap();
    assert_eq!((t.port, t.tls), (993, BackendTls::Implicit));
    let t = target(&[("host", "[::1]"), ("starttls", "yes"), ("port", "10143")])
        .unwrap()
        .unwrap();
    assert_eq!((t.port, t.tls), (10143, BackendTls::StartTls));
    assert_eq!(t.to_string(), "[::1]:10143");
    let t = target(&[("host", "b"), ("destuser", "robert")])
        .unwrap()
        .unwrap();
    assert_eq!(t.destuser.as_deref(), Some("robert"));
}

#[test]
fn nonsense_fields_are_errors_not_guesses() {
    for fields in [
        &[("host", "")][..],
        &[("host", "a"), ("port", "0")],
        &[("host", "a"), ("port", "70000")],
        &[("host", "a"), ("ssl", "any-cert")],
        &[("host", "a"), ("ssl", "yes"), ("starttls", "yes")],
    ] {
        assert!(
            matches!(target(fields), Err(ProxyError::Field(_))),
            "{fields:?}"
        );
    }
}

#[test]
fn the_master_login_acts_for_the_user_and_the_own_login_is_the_users() {
    let dir = std::env::temp_dir().join(format!("inetkit-proxy-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let secret = dir.join("master.secret");
    std::fs::write(&secret, "s3cret\nignored\n").unwrap();
    let t = target(&[("host", "b")]).unwrap().unwrap();
    let config = ProxyConfig {
        enabled: true,
        master_user: Some("proxy".into()),
        master_password_file: Some(secret.clone()),
        ..ProxyConfig::default()
    };
    let proxy = Proxy::new(&config).unwrap().unwrap();
    let login = proxy.login_for(&t, "alice", b"pw");
    assert_eq!(login.plain_message(), b"alice\0proxy\0s3cret");
    let own = Proxy::new(&ProxyConfig {
        enabled: true,
        ..ProxyConfig::default()
    })
    .unwrap()
    .unwrap();
    assert_eq!(
        own.login_for(&t, "alice", b"pw").plain_message(),
        b"\0alice\0pw"
    );
    // Off: no proxy at all; half a master login: refused at start.
    assert!(Proxy::new(&ProxyConfig::default()).unwrap().is_none());
    let half = ProxyConfig {
        enabled: true,
        master_user: Some("proxy".into()),
        ..ProxyConfig::default()
    };
    assert!(matches!(Proxy::new(&half), Err(ProxyError::Config(_))));
    std::fs::remove_dir_all(&dir).unwrap();
}

fn plaintext_proxy() -> Proxy {
    Proxy::new(&ProxyConfig {
        enabled: true,
        ..ProxyConfig::default()
    })
    .unwrap()
    .unwrap()
}

#[tokio::test]
async fn an_unreachable_backend_is_a_connect_error() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    drop(listener);
    let t = target(&[("host", "127.0.0.1"), ("port", &port.to_string())])
        .unwrap()
        .unwrap();
    let err = plaintext_proxy().connect(&t).await.unwrap_err();
    assert!(matches!(err, ProxyError::Connect(..)), "{err}");
}

#[tokio::test]
async fn the_relay_passes_pipelined_input_and_leftovers_and_counts_the_backend_bytes() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let t = target(&[("host", "127.0.0.1"), ("port", &port.to_string())])
        .unwrap()
        .unwrap();
    let backend_side = tokio::spawn(async move {
        let (mut s, _) = listener.accept().await.unwrap();
        // The greeting and, in the same write, the first bytes after the login.
        s.write_all(b"+OK hi\r\nEXTRA\r\n").await.unwrap();
        let mut got = vec![0u8; 10];
        s.read_exact(&mut got).await.unwrap();
        assert_eq!(got, b"PIPELINED\n");
        s.write_all(b"answer\r\n").await.unwrap();
        // The client leaves: the relay sees it and closes this side.
        let mut rest = Vec::new();
        s.read_to_end(&mut rest).await.unwrap();
        rest
    });
    let mut backend = plaintext_proxy().connect(&t).await.unwrap();
    assert_eq!(backend.read_line().await.unwrap(), "+OK hi");

    let peer = crate::testing::peer();
    let log = peer.log.clone();
    let (server, mut client) = tokio::io::duplex(1024);
    let farewell = Farewell {
        idle: "idle",
        shutdown: "bye",
        login: "late",
    };
    let mut conn = LineConn::new(server, peer, 100, farewell);
    // The login command and, in the same write, a command pipelined after it.
    client.write_all(b"LOGIN\r\nPIPELINED\n").await.unwrap();
    let mut line = Vec::new();
    conn.next_line(&mut line).await.unwrap();
    assert_eq!(line, b"LOGIN");
    conn.reply("+OK proxied");
    let relay = tokio::spawn(relay(conn, backend));
    let mut got = vec![0u8; "+OK proxied\r\nEXTRA\r\nanswer\r\n".len()];
    tokio::time::timeout(Duration::from_secs(30), client.read_exact(&mut got))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, b"+OK proxied\r\nEXTRA\r\nanswer\r\n");
    drop(client);
    relay.await.unwrap();
    let rest = backend_side.await.unwrap();
    assert_eq!(rest, b"");
    assert_eq!(log.end(), Some(crate::log::End::Disconnected));
}
