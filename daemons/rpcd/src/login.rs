//! HTTP Basic logins, remembered for the life of a keep-alive connection.
//!
//! A client sends the same `Authorization` value with every request, and checking an
//! ARGON2ID hash each time would cost far more than the call. So a connection remembers the
//! value that last logged in, and as whom, together with the identity of the users file it
//! was checked against (device, inode, size, modification and change times). While the
//! file is unchanged the user is only looked up (a deleted user is refused at once); once it
//! changed (a new password, a removed line) the password is checked again.

use std::path::Path;
use std::sync::Mutex;

use hyper::header::{self, HeaderValue};
use hyper::StatusCode;

use inetkit_auth::{sasl, AuthError, FileStamp, User};

use crate::http::{plain, unauthorized, Reply};
use crate::Rpcd;

/// The users file's stamp now; `None` when it cannot be read: then nothing is taken on trust.
fn users_file_stamp(path: &Path) -> Option<FileStamp> {
    std::fs::metadata(path)
        .ok()
        .map(|meta| FileStamp::of(&meta))
}

/// The last login of one connection.
struct Verified {
    credentials: HeaderValue,
    user: String,
    users_file: FileStamp,
}

/// A connection's memory of its login.
#[derive(Default)]
pub(crate) struct Logins {
    last: Mutex<Option<Verified>>,
}

impl Logins {
    /// The user `credentials` logged in as before on this connection, if the users file
    /// has not changed since.
    fn remembered(
        &self,
        credentials: &HeaderValue,
        users_file: Option<FileStamp>,
    ) -> Option<String> {
        let last = self.last.lock().unwrap_or_else(|e| e.into_inner());
        last.as_ref()
            .filter(|v| v.credentials == credentials && Some(v.users_file) == users_file)
            .map(|v| v.user.clone())
    }

    fn remember(&self, verified: Option<Verified>) {
        *self.last.lock().unwrap_or_else(|e| e.into_inner()) = verified;
    }
}

/// Checks HTTP Basic credentials; the error is the reply to send.
pub(crate) async fn login(
    rpcd: &Rpcd,
    value: &HeaderValue,
    logins: &Logins,
    peer: std::net::IpAddr,
    tls: bool,
) -> Result<User, Reply> {
    if !rpcd.auth.plaintext_allowed(peer, tls) {
        tracing::warn!(%peer, "credentials sent without TLS: refused");
        return Err(plain(
            StatusCode::FORBIDDEN,
            "credentials are not accepted without TLS here: use https",
        ));
    }
    let Some(creds) = value
        .to_str()
        .ok()
        .and_then(|v| sasl::decode_http_basic(v).ok())
    else {
        return Err(unauthorized("malformed Authorization header: use Basic"));
    };
    // Taken before the check, so a change made during it is seen on the next request. With a
    // directory there is no file to watch: every request is checked (its lookups are cached).
    let users_file = if rpcd.auth.has_directory() {
        None
    } else {
        users_file_stamp(rpcd.auth.users_file())
    };
    if let Some(name) = logins.remembered(value, users_file) {
        if let Ok(Some(user)) = rpcd.auth.find(&name).await {
            return Ok(user);
        }
    }
    logins.remember(None);
    match rpcd.auth.login(peer, &creds.name, &creds.password).await {
        Ok(user) => {
            logins.remember(users_file.map(|users_file| Verified {
                credentials: value.clone(),
                user: user.name.clone(),
                users_file,
            }));
            Ok(user)
        }
        Err(AuthError::Failed) => Err(unauthorized("authentication failed")),
        Err(AuthError::Throttled) => {
            let mut reply = plain(
                StatusCode::TOO_MANY_REQUESTS,
                "too many failed logins from this address; try again later",
            );
            let retry = rpcd.lockout.as_secs().to_string();
            if let Ok(v) = HeaderValue::from_str(&retry) {
                reply.headers_mut().insert(header::RETRY_AFTER, v);
            }
            Err(reply)
        }
        Err(AuthError::Unavailable { .. } | AuthError::DirectoryUnavailable(_)) => Err(plain(
            StatusCode::SERVICE_UNAVAILABLE,
            "logins are unavailable right now",
        )),
    }
}
