//! Proxy mode's POP3 half: logging in on the user's backend once the front end has checked
//! the password. It reads the backend's greeting, upgrades with STLS when the record says
//! `starttls=yes`, and logs in with AUTH PLAIN (RFC 5034; the user's own credentials or the
//! master login acting as the user). The relay, the connection and the settings are
//! `inetkit_runtime::proxy`.

use inetkit_auth::sasl;
use inetkit_runtime::proxy::{
    Backend, BackendLogin, BackendTls, DefaultPorts, Proxy, ProxyError, Target,
};

/// POP3's ports, for a record without `port=`.
pub(crate) const PORTS: DefaultPorts = DefaultPorts {
    plain: 110,
    tls: 995,
};

/// Logs in on `target` as `login` says, within the proxy's login timeout: the connection,
/// ready to relay.
pub(crate) async fn login(
    proxy: &Proxy,
    target: &Target,
    login: &BackendLogin,
) -> Result<Backend, ProxyError> {
    proxy.log_in(target, exchange(proxy, target, login)).await
}

async fn exchange(
    proxy: &Proxy,
    target: &Target,
    login: &BackendLogin,
) -> Result<Backend, ProxyError> {
    let mut backend = proxy.connect(target).await?;
    expect_ok(&mut backend).await?;
    if target.tls == BackendTls::StartTls {
        backend.send_line("STLS").await?;
        expect_ok(&mut backend).await?;
        backend = backend.start_tls().await?;
    }
    // No initial response: every RFC 5034 server asks with "+ " first.
    backend.send_line("AUTH PLAIN").await?;
    let go_ahead = backend.read_line().await?;
    if !go_ahead.starts_with('+') || go_ahead.starts_with("+OK") {
        return Err(ProxyError::Refused(backend.name.clone(), shown(&go_ahead)));
    }
    backend
        .send_line(&sasl::encode(&login.plain_message()))
        .await?;
    expect_ok(&mut backend).await?;
    Ok(backend)
}

/// The next line must be `+OK`; `-ERR` is a refusal.
async fn expect_ok(backend: &mut Backend) -> Result<(), ProxyError> {
    let line = backend.read_line().await?;
    if line.starts_with("+OK") {
        Ok(())
    } else {
        Err(ProxyError::Refused(backend.name.clone(), shown(&line)))
    }
}

/// A backend's line as logged: escaped and cut short.
fn shown(line: &str) -> String {
    const MAX: usize = 200;
    let mut text: String = line
        .chars()
        .take(MAX)
        .flat_map(char::escape_debug)
        .collect();
    if line.chars().nth(MAX).is_some() {
        text.push('…');
    }
    text
}
