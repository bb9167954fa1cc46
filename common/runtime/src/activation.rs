//! Listening sockets: taken from systemd (`LISTEN_FDS`, `LISTEN_FDNAMES`) or bound from the
//! `[listen]` section of the config. Either way the daemon gets the same [`Listener`] list, so a
//! protocol never binds a socket itself.

use std::net::{SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use nix::sys::socket::{getsockopt, sockopt, SockType};
use socket2::{Domain, Protocol, Socket as RawSocket, Type};

use crate::config::{ListenConfig, Transport};

/// The first fd systemd passes (`SD_LISTEN_FDS_START`).
const LISTEN_FDS_START: RawFd = 3;

/// One socket the daemon serves, with the name that says which service runs on it.
#[derive(Debug)]
pub struct Listener {
    /// `FileDescriptorName=` of the socket unit, or the `[listen]` key.
    pub name: String,
    /// The socket.
    pub socket: Socket,
}

/// A socket as systemd passes it or the daemon binds it.
#[derive(Debug)]
pub enum Socket {
    /// A listening stream socket (Accept=no, or bound from the config).
    Tcp(TcpListener),
    /// A datagram socket.
    Udp(UdpSocket),
    /// One accepted connection (Accept=yes, inetd style): serve it and exit.
    Connected(TcpStream),
}

impl Socket {
    /// `tcp`, `udp` or `connection`, for logs.
    pub fn kind(&self) -> &'static str {
        match self {
            Socket::Tcp(_) => "tcp",
            Socket::Udp(_) => "udp",
            Socket::Connected(_) => "connection",
        }
    }

    /// TCP or UDP.
    pub fn transport(&self) -> Transport {
        match self {
            Socket::Udp(_) => Transport::Udp,
            Socket::Tcp(_) | Socket::Connected(_) => Transport::Tcp,
        }
    }

    /// The address the socket is bound to.
    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        match self {
            Socket::Tcp(s) => s.local_addr(),
            Socket::Udp(s) => s.local_addr(),
            Socket::Connected(s) => s.local_addr(),
        }
    }
}

/// Sockets that could not be taken over or bound. The cause, when there is one, is the
/// error's source, never repeated in its message.
#[derive(Debug, thiserror::Error)]
pub enum ActivationError {
    /// `LISTEN_FDS` is not a number.
    #[error("LISTEN_FDS={0:?} is not a number of file descriptors")]
    BadFdCount(String),
    /// An fd systemd passed could not be inspected or set up.
    #[error("fd {fd} passed by systemd")]
    Fd {
        /// The fd.
        fd: RawFd,
        /// What failed.
        #[source]
        source: nix::Error,
    },
    /// An fd systemd passed is neither TCP nor UDP (a Unix socket, a FIFO...).
    #[error("fd {fd} ({name}) is neither a TCP nor a UDP socket")]
    Unsupported {
        /// The fd.
        fd: RawFd,
        /// Its name.
        name: String,
    },
    /// A `[listen]` address that does not parse.
    #[error("listen address {0:?} is not tcp://ADDR:PORT, udp://ADDR:PORT or ADDR:PORT")]
    BadAddress(String),
    /// A `[listen]` address that could not be bound.
    #[error("cannot listen on {addr} for {name}")]
    Bind {
        /// The socket name.
        name: String,
        /// The address as the config spells it.
        addr: String,
        /// Why binding failed.
        #[source]
        source: std::io::Error,
    },
    /// Nothing to serve.
    #[error("no sockets: not socket-activated and the config's [listen] section is empty")]
    NoSockets,
}

/// The sockets a daemon serves, and where they came from.
#[derive(Debug)]
pub struct Activation {
    /// The sockets, never empty.
    pub listeners: Vec<Listener>,
    /// They came from systemd (and so stay with systemd while the daemon is gone).
    pub socket_activated: bool,
}

/// The sockets to serve: systemd's when it passed any, otherwise those of `listen` (the
/// config's `[listen]`), bound here.
///
/// Call it before any thread is started: it removes the `LISTEN_*` variables from the
/// environment, which is only sound while no other thread may read it.
pub fn listeners(listen: &ListenConfig) -> Result<Activation, ActivationError> {
    let activation = match from_systemd()? {
        Some(listeners) => Activation {
            listeners,
            socket_activated: true,
        },
        None => Activation {
            listeners: bind_all(listen)?,
            socket_activated: false,
        },
    };
    if activation.listeners.is_empty() {
        return Err(ActivationError::NoSockets);
    }
    Ok(activation)
}

/// The fds systemd passed, or `None` when the process was not socket-activated.
///
/// The variables are removed, so that programs the daemon runs do not take them too.
fn from_systemd() -> Result<Option<Vec<Listener>>, ActivationError> {
    let count = std::env::var("LISTEN_FDS");
    let pid = std::env::var("LISTEN_PID");
    let names = std::env::var("LISTEN_FDNAMES").unwrap_or_default();
    // Gone whatever they say, as sd_listen_fds(1) does: inherited ones must not confuse the
    // programs this daemon runs either.
    for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    let Ok(count) = count else {
        return Ok(None);
    };
    // LISTEN_PID guards against variables inherited from a parent that was activated.
    if let Ok(pid) = pid {
        if pid.parse::<u32>().ok() != Some(std::process::id()) {
            return Ok(None);
        }
    }
    let count: RawFd = count
        .parse()
        .map_err(|_| ActivationError::BadFdCount(count.clone()))?;
    let names = fd_names(&names, count as usize);
    let mut listeners = Vec::with_capacity(count as usize);
    for (i, name) in names.into_iter().enumerate() {
        let fd = LISTEN_FDS_START + i as RawFd;
        #[allow(unsafe_code)]
        // SAFETY: systemd hands fds LISTEN_FDS_START..+LISTEN_FDS to this process alone, and this
        // function runs once (it removes the variables), so each fd gets exactly one owner.
        let owned = unsafe { OwnedFd::from_raw_fd(fd) };
        listeners.push(classify(owned, fd, name)?);
    }
    Ok(Some(listeners))
}

/// One name per fd: `LISTEN_FDNAMES` split on `:`, padded with systemd's default "unknown".
pub fn fd_names(names: &str, count: usize) -> Vec<String> {
    let mut names: Vec<String> = if names.is_empty() {
        Vec::new()
    } else {
        names.split(':').map(str::to_owned).collect()
    };
    names.resize(count, "unknown".to_owned());
    names
}

/// Tells a listening TCP socket, a UDP socket and an accepted connection apart, and makes the
/// fd non-blocking as tokio needs.
fn classify(fd: OwnedFd, raw: RawFd, name: String) -> Result<Listener, ActivationError> {
    let err = |source| ActivationError::Fd { fd: raw, source };
    // systemd passes the fds inheritable; programs a daemon runs (rpcd's methods) must not
    // get its listening sockets.
    nix::fcntl::fcntl(
        std::os::fd::AsRawFd::as_raw_fd(&fd),
        nix::fcntl::FcntlArg::F_SETFD(nix::fcntl::FdFlag::FD_CLOEXEC),
    )
    .map_err(err)?;
    let sock_type = getsockopt(&fd, sockopt::SockType).map_err(err)?;
    let socket = match sock_type {
        SockType::Stream => {
            if getsockopt(&fd, sockopt::AcceptConn).map_err(err)? {
                Socket::Tcp(TcpListener::from(fd))
            } else {
                Socket::Connected(TcpStream::from(fd))
            }
        }
        SockType::Datagram => Socket::Udp(UdpSocket::from(fd)),
        _ => return Err(ActivationError::Unsupported { fd: raw, name }),
    };
    // Unix sockets would pass the checks above but are not served.
    if socket.local_addr().is_err() {
        return Err(ActivationError::Unsupported { fd: raw, name });
    }
    set_nonblocking(&socket).map_err(|e| ActivationError::Fd {
        fd: raw,
        source: nix::Error::from_raw(e.raw_os_error().unwrap_or(libc::EINVAL)),
    })?;
    Ok(Listener { name, socket })
}

fn set_nonblocking(socket: &Socket) -> std::io::Result<()> {
    match socket {
        Socket::Tcp(s) => s.set_nonblocking(true),
        Socket::Udp(s) => s.set_nonblocking(true),
        Socket::Connected(s) => s.set_nonblocking(true),
    }
}

/// A `[listen]` address: `tcp://ADDR:PORT`, `udp://ADDR:PORT`, or `ADDR:PORT` for TCP.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListenAddr {
    /// A TCP listener.
    Tcp(SocketAddr),
    /// A UDP socket.
    Udp(SocketAddr),
}

impl ListenAddr {
    /// TCP or UDP.
    pub fn transport(&self) -> Transport {
        match self {
            ListenAddr::Tcp(_) => Transport::Tcp,
            ListenAddr::Udp(_) => Transport::Udp,
        }
    }
}

impl std::str::FromStr for ListenAddr {
    type Err = ActivationError;

    fn from_str(spec: &str) -> Result<Self, Self::Err> {
        let bad = || ActivationError::BadAddress(spec.to_owned());
        let (udp, addr) = if let Some(rest) = spec.strip_prefix("udp://") {
            (true, rest)
        } else {
            (false, spec.strip_prefix("tcp://").unwrap_or(spec))
        };
        let addr: SocketAddr = addr.parse().map_err(|_| bad())?;
        Ok(if udp {
            ListenAddr::Udp(addr)
        } else {
            ListenAddr::Tcp(addr)
        })
    }
}

/// Binds every address of the `[listen]` section, in name order.
pub fn bind_all(config: &ListenConfig) -> Result<Vec<Listener>, ActivationError> {
    let mut listeners = Vec::new();
    for (name, addrs) in config {
        for spec in addrs {
            let addr: ListenAddr = spec.parse()?;
            let socket = bind(addr).map_err(|source| ActivationError::Bind {
                name: name.clone(),
                addr: spec.clone(),
                source,
            })?;
            listeners.push(Listener {
                name: name.clone(),
                socket,
            });
        }
    }
    Ok(listeners)
}

/// Binds one socket the way systemd would: SO_REUSEADDR, IPv6 sockets IPv6-only (so `[::]` and
/// `0.0.0.0` can both be listed), non-blocking.
pub fn bind(addr: ListenAddr) -> std::io::Result<Socket> {
    let (sock_addr, ty, proto) = match addr {
        ListenAddr::Tcp(a) => (a, Type::STREAM, Protocol::TCP),
        ListenAddr::Udp(a) => (a, Type::DGRAM, Protocol::UDP),
    };
    let socket = RawSocket::new(Domain::for_address(sock_addr), ty, Some(proto))?;
    if sock_addr.is_ipv6() {
        socket.set_only_v6(true)?;
    }
    socket.set_reuse_address(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&sock_addr.into())?;
    Ok(match addr {
        ListenAddr::Tcp(_) => {
            socket.listen(1024)?;
            Socket::Tcp(socket.into())
        }
        ListenAddr::Udp(_) => Socket::Udp(socket.into()),
    })
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    #[test]
    fn names_are_split_and_padded() {
        assert_eq!(fd_names("echo:echo", 2), vec!["echo", "echo"]);
        assert_eq!(fd_names("", 2), vec!["unknown", "unknown"]);
        assert_eq!(fd_names("a", 3), vec!["a", "unknown", "unknown"]);
        assert_eq!(fd_names("a:b:c", 2), vec!["a", "b"]);
    }

    #[test]
    fn listen_addresses_parse() {
        let tcp: ListenAddr = "127.0.0.1:7".parse().unwrap();
        assert_eq!(tcp, ListenAddr::Tcp("127.0.0.1:7".parse().unwrap()));
        let tcp6: ListenAddr = "tcp://[::1]:7".parse().unwrap();
        assert_eq!(tcp6, ListenAddr::Tcp("[::1]:7".parse().unwrap()));
        let udp: ListenAddr = "udp://0.0.0.0:53".parse().unwrap();
        assert_eq!(udp, ListenAddr::Udp("0.0.0.0:53".parse().unwrap()));
        assert!("localhost:7".parse::<ListenAddr>().is_err());
        assert!("sctp://127.0.0.1:7".parse::<ListenAddr>().is_err());
        assert!("127.0.0.1".parse::<ListenAddr>().is_err());
    }

    /// The classification systemd's fds go through, on sockets made here.
    #[test]
    fn fds_are_classified_by_type_and_listening_state() {
        let tcp = bind(ListenAddr::Tcp("127.0.0.1:0".parse().unwrap())).unwrap();
        let Socket::Tcp(listener) = tcp else {
            panic!("not tcp")
        };
        let addr = listener.local_addr().unwrap();
        let client = TcpStream::connect(addr).unwrap();
        let udp = UdpSocket::bind("127.0.0.1:0").unwrap();

        let l = classify(OwnedFd::from(listener), 0, "a".into()).unwrap();
        assert!(matches!(l.socket, Socket::Tcp(_)));
        let c = classify(OwnedFd::from(client), 0, "b".into()).unwrap();
        assert!(matches!(c.socket, Socket::Connected(_)));
        let u = classify(OwnedFd::from(udp), 0, "c".into()).unwrap();
        assert!(matches!(u.socket, Socket::Udp(_)));
        let Socket::Udp(udp) = &u.socket else {
            unreachable!()
        };
        let flags = nix::fcntl::fcntl(
            std::os::fd::AsRawFd::as_raw_fd(udp),
            nix::fcntl::FcntlArg::F_GETFD,
        )
        .unwrap();
        assert!(
            flags & libc::FD_CLOEXEC != 0,
            "passed sockets are close-on-exec"
        );
        assert_eq!(u.name, "c");

        let (unix, _other) = std::os::unix::net::UnixStream::pair().unwrap();
        assert!(matches!(
            classify(OwnedFd::from(unix), 0, "d".into()),
            Err(ActivationError::Unsupported { .. })
        ));
    }

    #[test]
    fn binding_from_config_keeps_names() {
        let mut config = BTreeMap::new();
        config.insert(
            "echo".to_owned(),
            vec!["127.0.0.1:0".to_owned(), "udp://127.0.0.1:0".to_owned()],
        );
        config.insert("daytime".to_owned(), vec!["tcp://[::1]:0".to_owned()]);
        let listeners = bind_all(&config);
        // ::1 may be missing in some sandboxes; the IPv4 part must work regardless.
        let listeners = match listeners {
            Ok(l) => l,
            Err(ActivationError::Bind { addr, .. }) if addr.contains("::1") => {
                config.remove("daytime");
                bind_all(&config).unwrap()
            }
            Err(e) => panic!("{e}"),
        };
        let kinds: Vec<_> = listeners
            .iter()
            .map(|l| (l.name.as_str(), l.socket.kind()))
            .collect();
        assert!(kinds.contains(&("echo", "tcp")));
        assert!(kinds.contains(&("echo", "udp")));
    }

    #[test]
    fn bind_errors_name_the_socket() {
        let taken = TcpListener::bind("127.0.0.1:0").unwrap();
        let mut config = BTreeMap::new();
        config.insert(
            "echo".to_owned(),
            vec![taken.local_addr().unwrap().to_string()],
        );
        let err = crate::config::chain(&bind_all(&config).unwrap_err());
        assert!(err.contains("echo"), "{err}");
        assert_eq!(err.matches("in use").count(), 1, "the cause once: {err}");
    }

    /// Inherited variables (another process's LISTEN_PID) are dropped too, so the programs a
    /// daemon runs never see them; no fd is taken.
    #[test]
    fn listen_variables_are_removed_even_when_not_ours() {
        std::env::set_var("LISTEN_FDS", "1");
        std::env::set_var("LISTEN_PID", "1");
        std::env::set_var("LISTEN_FDNAMES", "echo");
        assert!(matches!(from_systemd(), Ok(None)));
        for var in ["LISTEN_FDS", "LISTEN_PID", "LISTEN_FDNAMES"] {
            assert!(std::env::var_os(var).is_none(), "{var} is still set");
        }
    }
}
