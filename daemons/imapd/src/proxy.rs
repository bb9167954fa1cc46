//! Proxy mode's IMAP half: logging in on the user's backend. The front end has checked the
//! password already; here it reads the backend's greeting, upgrades with STARTTLS when the
//! record says `starttls=yes`, logs in with AUTHENTICATE PLAIN (the user's own credentials,
//! or the master login acting as the user) and learns the backend's capabilities, which the
//! client then gets in its tagged OK, as Dovecot's proxy does. The relay itself, the
//! connection and the settings are `inetkit_runtime::proxy`.

use inetkit_auth::sasl;
use inetkit_runtime::proxy::{
    Backend, BackendLogin, BackendTls, DefaultPorts, Proxy, ProxyError, Target,
};

/// IMAP's ports, for a record without `port=`.
pub(crate) const PORTS: DefaultPorts = DefaultPorts {
    plain: 143,
    tls: 993,
};

/// Untagged lines a backend may send before the tagged answer to one of our commands.
const MAX_UNTAGGED: usize = 32;

/// The longest capability list passed on to the client.
const MAX_CAPABILITIES: usize = 4096;

/// Logs in on `target` as `login` says, within the proxy's login timeout: the connection,
/// ready to relay, and the backend's capabilities (space-separated atoms).
pub(crate) async fn login(
    proxy: &Proxy,
    target: &Target,
    login: &BackendLogin,
) -> Result<(Backend, String), ProxyError> {
    proxy.log_in(target, exchange(proxy, target, login)).await
}

async fn exchange(
    proxy: &Proxy,
    target: &Target,
    login: &BackendLogin,
) -> Result<(Backend, String), ProxyError> {
    let mut backend = proxy.connect(target).await?;
    let greeting = backend.read_line().await?;
    if !greeting.starts_with("* OK") {
        return Err(ProxyError::Refused(backend.name.clone(), shown(&greeting)));
    }
    let mut capabilities = capability_code(&greeting);
    if target.tls == BackendTls::StartTls {
        backend.send_line("P1 STARTTLS").await?;
        let answer = tagged(&mut backend, "P1", &mut capabilities).await?;
        if !answer.ok {
            return Err(ProxyError::Refused(backend.name.clone(), answer.text));
        }
        backend = backend.start_tls().await?;
    }
    // A continuation request first (no SASL-IR needed), then the PLAIN message.
    backend.send_line("P2 AUTHENTICATE PLAIN").await?;
    let go_ahead = backend.read_line().await?;
    if !go_ahead.starts_with('+') {
        return Err(ProxyError::Refused(backend.name.clone(), shown(&go_ahead)));
    }
    backend
        .send_line(&sasl::encode(&login.plain_message()))
        .await?;
    // Capabilities from before the login no longer hold.
    capabilities = None;
    let answer = tagged(&mut backend, "P2", &mut capabilities).await?;
    if !answer.ok {
        return Err(ProxyError::Refused(backend.name.clone(), answer.text));
    }
    if capabilities.is_none() {
        backend.send_line("P3 CAPABILITY").await?;
        let answer = tagged(&mut backend, "P3", &mut capabilities).await?;
        if !answer.ok {
            return Err(ProxyError::Protocol(backend.name.clone(), answer.text));
        }
    }
    let capabilities = capabilities
        .ok_or_else(|| ProxyError::Protocol(backend.name.clone(), "no capability list".into()))?;
    Ok((backend, capabilities))
}

/// The backend's tagged answer.
struct Answer {
    ok: bool,
    /// The whole line, for the log.
    text: String,
}

/// Reads to the tagged answer to `tag`, noting a capability list on the way (an untagged
/// CAPABILITY, or a `[CAPABILITY …]` code in the answer).
async fn tagged(
    backend: &mut Backend,
    tag: &str,
    capabilities: &mut Option<String>,
) -> Result<Answer, ProxyError> {
    for _ in 0..=MAX_UNTAGGED {
        let line = backend.read_line().await?;
        if let Some(list) = line.strip_prefix("* CAPABILITY ") {
            *capabilities = clean(list).or(capabilities.take());
        } else if let Some(status) = line.strip_prefix(tag).and_then(|l| l.strip_prefix(' ')) {
            if let Some(list) = capability_code(&line) {
                *capabilities = Some(list);
            }
            let ok = status
                .split(' ')
                .next()
                .is_some_and(|s| s.eq_ignore_ascii_case("OK"));
            return Ok(Answer {
                ok,
                text: shown(&line),
            });
        } else if !line.starts_with("* ") {
            return Err(ProxyError::Protocol(backend.name.clone(), shown(&line)));
        }
    }
    Err(ProxyError::Protocol(
        backend.name.clone(),
        format!("more than {MAX_UNTAGGED} untagged lines before the answer to {tag}"),
    ))
}

/// The list in a `[CAPABILITY …]` response code anywhere in `line`.
fn capability_code(line: &str) -> Option<String> {
    let (_, rest) = line.split_once("[CAPABILITY ")?;
    let (list, _) = rest.split_once(']')?;
    clean(list)
}

/// A capability list fit to pass on: atoms of printable ASCII (no `]`), single spaces,
/// bounded in length, and IMAP4rev1 among them; else `None`.
fn clean(list: &str) -> Option<String> {
    let list = list.trim();
    let fits = !list.is_empty()
        && list.len() <= MAX_CAPABILITIES
        && list
            .bytes()
            .all(|b| b == b' ' || (b.is_ascii_graphic() && b != b']'));
    let atoms: Vec<&str> = list.split(' ').filter(|a| !a.is_empty()).collect();
    (fits && atoms.iter().any(|a| a.eq_ignore_ascii_case("IMAP4rev1"))).then(|| atoms.join(" "))
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn capability_lists_are_taken_from_codes_and_checked() {
        assert_eq!(
            capability_code("P2 OK [CAPABILITY IMAP4rev1 IDLE  MOVE] Logged in"),
            Some("IMAP4rev1 IDLE MOVE".into())
        );
        assert_eq!(capability_code("P2 OK Logged in"), None);
        // Not IMAP, or bytes a client must not get in a response code.
        assert_eq!(clean("IDLE MOVE"), None);
        assert_eq!(clean("IMAP4rev1 \u{1b}[31m"), None);
        assert_eq!(clean(&format!("IMAP4rev1 {}", "X".repeat(5000))), None);
    }

    #[test]
    fn backend_lines_are_logged_escaped_and_short() {
        assert_eq!(shown("a\u{7}b"), "a\\u{7}b");
        assert!(shown(&"x".repeat(500)).ends_with('…'));
    }
}
