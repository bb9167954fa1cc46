//! Passive data connections (PASV, EPSV): a listener on a port of the configured range, held
//! until the client connects or `data_timeout` passes, and at most a configured number of them
//! open at once per client address, so that neither idle sessions nor one client can take the
//! whole range.

use std::collections::HashMap;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::time::Instant;

/// The passive listeners open per client address, for the whole daemon.
#[derive(Debug)]
pub(crate) struct PassiveSlots {
    max_per_address: usize,
    open: Mutex<HashMap<IpAddr, usize>>,
}

impl PassiveSlots {
    pub(crate) fn new(max_per_address: usize) -> Arc<PassiveSlots> {
        Arc::new(PassiveSlots {
            max_per_address,
            open: Mutex::new(HashMap::new()),
        })
    }

    /// A slot for one more listener for `client`, unless it holds the most already.
    fn take(self: &Arc<Self>, client: IpAddr) -> Option<Slot> {
        let client = client.to_canonical();
        // A poisoned lock only means a panic elsewhere mid-update of a counter.
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        let count = open.entry(client).or_insert(0);
        if *count >= self.max_per_address {
            if *count == 0 {
                open.remove(&client);
            }
            return None;
        }
        *count += 1;
        Some(Slot {
            slots: self.clone(),
            client,
        })
    }
}

/// One open listener's place in [`PassiveSlots`], given back when dropped.
#[derive(Debug)]
struct Slot {
    slots: Arc<PassiveSlots>,
    client: IpAddr,
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut open = self.slots.open.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(count) = open.get_mut(&self.client) {
            *count = count.saturating_sub(1);
            if *count == 0 {
                open.remove(&self.client);
            }
        }
    }
}

/// Why no passive listener was opened.
#[derive(Debug, thiserror::Error)]
pub(crate) enum PassiveError {
    #[error("too many passive ports open for {0}")]
    TooMany(IpAddr),
    #[error("no passive port")]
    Listen(#[from] io::Error),
}

/// A passive listener waiting for the client's data connection, until `expires`.
#[derive(Debug)]
pub(crate) struct Passive {
    listener: TcpListener,
    port: u16,
    expires: Instant,
    _slot: Slot,
}

impl Passive {
    /// Listens on `ip` (the address the client reached) for `client`, on a port of `ports`,
    /// for at most `wait`.
    pub(crate) fn open(
        slots: &Arc<PassiveSlots>,
        client: IpAddr,
        ip: IpAddr,
        ports: [u16; 2],
        wait: Duration,
    ) -> Result<Passive, PassiveError> {
        let slot = slots.take(client).ok_or(PassiveError::TooMany(client))?;
        let listener = listen(ip, ports)?;
        let port = listener.local_addr()?.port();
        Ok(Passive {
            listener,
            port,
            expires: Instant::now() + wait,
            _slot: slot,
        })
    }

    pub(crate) fn port(&self) -> u16 {
        self.port
    }

    /// When the listener is closed if nobody has connected.
    pub(crate) fn expires(&self) -> Instant {
        self.expires
    }
}

/// A passive listener on `ip`, on a free port of `ports` (`[0, 0]`: 49152–65535).
fn listen(ip: IpAddr, ports: [u16; 2]) -> io::Result<TcpListener> {
    let [low, high] = ports;
    let bind = |port| {
        let socket = match ip {
            IpAddr::V4(_) => tokio::net::TcpSocket::new_v4()?,
            IpAddr::V6(_) => tokio::net::TcpSocket::new_v6()?,
        };
        // The data connections we closed first linger in TIME_WAIT on their passive port; without
        // SO_REUSEADDR those ports could not be listened on again for a minute, and a busy
        // server would run out of ports (as vsftpd does, for the same reason).
        socket.set_reuseaddr(true)?;
        socket.bind(SocketAddr::new(ip, port))?;
        socket.listen(1)
    };
    // "Any port" is the IANA dynamic range, tried from a random start like a configured range:
    // bind(0) would do, but the kernel's search for a free port grows with the ports held in
    // TIME_WAIT, and costs more than the transfer at a few thousand files a second.
    let (low, high) = if low == 0 && high == 0 {
        (49152, 65535)
    } else {
        (low, high)
    };
    // Start at a random port of the range so sessions do not race for the same one.
    let span = u32::from(high - low) + 1;
    let start = rand::random::<u32>() % span;
    let mut last = io::Error::new(io::ErrorKind::AddrInUse, "no free passive port");
    for i in 0..span.min(4096) {
        let port = low + ((start + i) % span) as u16;
        match bind(port) {
            Ok(listener) => return Ok(listener),
            Err(err) => last = err,
        }
    }
    Err(last)
}

/// Waits for the client's data connection. With `expect`, connections from other addresses
/// are closed and logged, and the wait goes on. The listener (and its slot) goes when this
/// returns.
pub(crate) async fn accept(
    passive: Passive,
    expect: Option<IpAddr>,
    timeout: Duration,
) -> io::Result<TcpStream> {
    let wait = async {
        loop {
            let (stream, addr) = passive.listener.accept().await?;
            match expect {
                Some(ip) if addr.ip().to_canonical() != ip.to_canonical() => {
                    tracing::warn!(from = %addr, "data connection from another address refused");
                }
                _ => return Ok(stream),
            }
        }
    };
    tokio::time::timeout(timeout, wait)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn passive_range_is_kept() {
        let listener = listen("127.0.0.1".parse().unwrap(), [40100, 40110]).expect("listen");
        let port = listener.local_addr().expect("addr").port();
        assert!((40100..=40110).contains(&port));
    }

    #[tokio::test]
    async fn a_listen_error_shows_its_cause_once() {
        // 192.0.2.1 (TEST-NET-1) is no address of this host: bind fails.
        let slots = Arc::new(PassiveSlots::new(1));
        let client: IpAddr = "127.0.0.1".parse().expect("ip");
        let opened = Passive::open(
            &slots,
            client,
            "192.0.2.1".parse().expect("ip"),
            [40120, 40120],
            Duration::from_secs(1),
        );
        let Err(err) = opened else {
            panic!("listened on an address the host does not have")
        };
        assert!(matches!(err, PassiveError::Listen(_)), "{err:?}");
        let cause = std::error::Error::source(&err).map(ToString::to_string);
        assert_eq!(err.to_string(), "no passive port");
        assert!(cause.is_some_and(|cause| !cause.is_empty()));
    }

    #[test]
    fn slots_are_capped_per_address_and_given_back() {
        let slots = PassiveSlots::new(2);
        let a: IpAddr = "192.0.2.1".parse().expect("ip");
        let b: IpAddr = "::ffff:192.0.2.2".parse().expect("ip");
        let first = slots.take(a).expect("first");
        let _second = slots.take(a).expect("second");
        assert!(slots.take(a).is_none());
        // Another address counts apart; an IPv4-mapped address is the IPv4 one.
        let _other = slots.take(b).expect("another address");
        drop(first);
        let _third = slots.take(a).expect("a slot given back");
        assert!(slots.take(a).is_none());
        let _mapped = slots
            .take("192.0.2.2".parse().expect("ip"))
            .expect("mapped");
        assert!(slots.take(b).is_none());
    }
}
