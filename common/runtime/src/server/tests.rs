//! Admission (connection caps, sessions not logged in), busy replies and the memory budget.

use super::*;
use tokio::io::AsyncReadExt;

fn limits(max: usize, per_ip: usize) -> LimitsConfig {
    LimitsConfig {
        max_connections: max,
        max_connections_per_ip: per_ip,
        ..LimitsConfig::default()
    }
}

#[test]
fn admission_counts_and_releases() {
    let server = Server::new(limits(3, 2), false);
    let a: IpAddr = "127.0.0.1".parse().unwrap();
    let b: IpAddr = "127.0.0.2".parse().unwrap();
    let open = Admission::Open;
    let s1 = server.inner.admit(a, open).unwrap();
    let _s2 = server.inner.admit(a, open).unwrap();
    assert!(server.inner.admit(a, open).is_err(), "per-address limit");
    let _s3 = server.inner.admit(b, open).unwrap();
    assert!(server.inner.admit(b, open).is_err(), "global limit");
    assert_eq!(server.active(), 3);
    drop(s1);
    assert_eq!(server.active(), 2);
    assert!(server.inner.admit(a, open).is_ok());
}

/// Sessions not logged in have a cap of their own per address; logging in (or ending)
/// leaves it, and sessions without a login never count.
#[test]
fn unauthenticated_sessions_are_capped_per_address() {
    let server = Server::new(
        LimitsConfig {
            max_unauthenticated_per_ip: 2,
            ..limits(100, 10)
        },
        false,
    );
    let a: IpAddr = "127.0.0.1".parse().unwrap();
    let b: IpAddr = "127.0.0.2".parse().unwrap();
    let login = Admission::Login;
    let s1 = server.inner.admit(a, login).unwrap();
    let s2 = server.inner.admit(a, login).unwrap();
    assert!(server.inner.admit(a, login).is_err(), "cap reached");
    assert!(server.inner.admit(b, login).is_ok(), "another address");
    assert!(server.inner.admit(a, Admission::Open).is_ok(), "no login");

    s1.login.logged_in();
    s1.login.logged_in();
    let s3 = server.inner.admit(a, login).unwrap();
    assert!(
        server.inner.admit(a, login).is_err(),
        "logged in once, left once"
    );
    drop(s2);
    let _s4 = server.inner.admit(a, login).unwrap();
    drop(s1);
    assert!(
        server.inner.admit(a, login).is_err(),
        "a logged-in session ending frees none"
    );
    assert!(s3.login.deadline().is_some());
    s3.login.logged_in();
    assert!(s3.login.deadline().is_none());
    let per_ip = *server.inner.per_ip.lock().unwrap().get(&a).unwrap();
    assert_eq!((per_ip.sessions, per_ip.unauthenticated), (2, 1));
}

#[tokio::test]
async fn refused_connection_gets_busy_reply_and_close() {
    let server = Server::new(limits(1, 1), false);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let (release_tx, release_rx) = tokio::sync::watch::channel(false);
    server
        .serve_tcp(
            "test",
            listener,
            Some(b"busy\r\n"),
            move |mut stream, _peer| {
                let mut release = release_rx.clone();
                async move {
                    let _ = stream.write_all(b"hello\r\n").await;
                    let _ = release.wait_for(|r| *r).await;
                }
            },
        )
        .unwrap();
    let mut first = TcpStream::connect(addr).await.unwrap();
    let mut line = [0u8; 7];
    first.read_exact(&mut line).await.unwrap();
    assert_eq!(&line, b"hello\r\n");

    let mut second = TcpStream::connect(addr).await.unwrap();
    let mut reply = Vec::new();
    second.read_to_end(&mut reply).await.unwrap();
    assert_eq!(reply, b"busy\r\n");
    release_tx.send(true).unwrap();
}

/// Over the soft limit, a new connection gets the busy reply and is counted as refused;
/// the session that was already running goes on.
#[tokio::test]
async fn memory_over_soft_limit_refuses_new_connections_only() {
    let resident = memory::resident_bytes().expect("/proc/self/status has VmRSS");
    let server = Server::new(
        LimitsConfig {
            memory_soft_limit: Some((resident >> 20) + 32),
            ..LimitsConfig::default()
        },
        false,
    );
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    server
        .serve_tcp(
            "test",
            listener,
            Some(b"busy\r\n"),
            |mut stream, _peer| async move {
                // Echoes lines until the client is gone.
                let mut buf = [0u8; 64];
                while let Ok(n @ 1..) = stream.read(&mut buf).await {
                    let _ = stream.write_all(&buf[..n]).await;
                }
            },
        )
        .unwrap();
    let mut running = TcpStream::connect(addr).await.unwrap();
    running.write_all(b"one\r\n").await.unwrap();
    let mut line = [0u8; 5];
    running.read_exact(&mut line).await.unwrap();
    assert_eq!(&line, b"one\r\n");

    // Resident memory 64 MiB past what it was: well over the limit.
    let ballast = std::hint::black_box(vec![1u8; 64 << 20]);
    tokio::time::sleep(memory::MEMORY_RECHECK * 2).await;
    let mut refused = TcpStream::connect(addr).await.unwrap();
    let mut reply = Vec::new();
    // Bounded so that a connection wrongly admitted fails the test instead of hanging it.
    tokio::time::timeout(Duration::from_secs(30), refused.read_to_end(&mut reply))
        .await
        .expect("the refused connection is closed")
        .unwrap();
    assert_eq!(reply, b"busy\r\n");
    assert!(
        server.inner.status().contains("1 refused"),
        "{}",
        server.inner.status()
    );

    running.write_all(b"two\r\n").await.unwrap();
    running.read_exact(&mut line).await.unwrap();
    assert_eq!(&line, b"two\r\n", "the running session goes on");
    drop(ballast);
}
