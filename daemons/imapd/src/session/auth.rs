//! The commands of any state and of the not-authenticated state (RFC 3501 §6.1, §6.2):
//! CAPABILITY, NOOP, LOGOUT, ID (RFC 2971), ENABLE (RFC 5161), STARTTLS, LOGIN and
//! AUTHENTICATE (PLAIN and LOGIN, with SASL-IR).

use std::borrow::Cow;

use imap_codec::imap_types::auth::AuthMechanism;
use imap_codec::imap_types::core::{AString, Atom, Tag, Vec1};
use imap_codec::imap_types::extensions::compress::CompressionAlgorithm;
use imap_codec::imap_types::response::{Capability, Code, Data, StatusKind};
use imap_codec::imap_types::secret::Secret;
use tokio::io::{AsyncRead, AsyncWrite};

use inetkit_auth::sasl::{self, Credentials, LineChallenger, Sasl};
use inetkit_auth::AuthError;
use inetkit_runtime::log::End;
use inetkit_runtime::proxy::{Proxy, Target};

use super::reply::{bad, no, no_code, ok, ok_code, Done};
use super::{blocking, Conn, Login, Session};
use crate::wire;

impl Session {
    pub(super) fn plaintext_allowed(&self) -> bool {
        self.imap
            .auth
            .plaintext_allowed(self.peer.addr.ip(), self.tls)
    }

    pub(super) fn capabilities(&self) -> Vec1<Capability<'static>> {
        // CHILDREN and SPECIAL-USE have no variant in imap-types: atoms.
        let other = |name: &'static str| Capability::from(Atom::unvalidated(name));
        let mut caps = vec![
            Capability::Imap4Rev1,
            // Behind ENABLE (RFC 9051 §6.3.1): a client that does not enable it sees rev1.
            other(super::rev2::CAPABILITY),
            Capability::LiteralPlus,
            Capability::SaslIr,
            Capability::Id,
            Capability::Enable,
            Capability::Idle,
            Capability::Namespace,
            Capability::Unselect,
            other("CHILDREN"),
            other("SPECIAL-USE"),
            // imap-mbox: folder and message extensions.
            Capability::ListExtended,
            other("LIST-STATUS"),
            other("CREATE-SPECIAL-USE"),
            Capability::StatusSize,
            Capability::Quota,
            other("QUOTA=RES-STORAGE"),
            other("QUOTA=RES-MESSAGE"),
            other("MULTIAPPEND"),
            other("CATENATE"),
            Capability::Binary,
            Capability::Compress {
                algorithm: CompressionAlgorithm::Deflate,
            },
            Capability::UidPlus,
            Capability::Move,
            Capability::CondStore,
            Capability::QResync,
            other("NOTIFY"),
        ];
        caps.extend(super::search::CAPABILITIES.iter().map(|&c| other(c)));
        if self.login.is_none() {
            if !self.tls && self.imap.tls.is_some() {
                caps.push(Capability::StartTls);
            }
            if self.plaintext_allowed() {
                caps.push(Capability::Auth(AuthMechanism::Plain));
                caps.push(Capability::Auth(AuthMechanism::Login));
            } else {
                caps.push(Capability::LoginDisabled);
            }
        }
        Vec1::try_from(caps).unwrap_or_else(|_| Vec1::from(Capability::Imap4Rev1))
    }

    /// CAPABILITY.
    pub(super) fn capability<S>(&self, conn: &mut Conn<S>) -> Done {
        wire::data(&mut conn.out, Data::Capability(self.capabilities()));
        ok("CAPABILITY completed.")
    }

    /// LOGOUT: the BYE and the tagged OK, then the connection closes.
    pub(super) fn logout<S>(&self, tag: &Tag<'_>, conn: &mut Conn<S>) -> Done {
        self.peer.log.ended(End::Quit);
        wire::status(&mut conn.out, wire::bye("Logging out."));
        let text = wire::text("LOGOUT completed.");
        let done = wire::tagged(tag.clone(), StatusKind::Ok, None, text);
        wire::send(&mut conn.out, &done);
        Done::Close
    }

    /// ID (RFC 2971): our name, whatever the client said.
    pub(super) fn id<S>(&self, conn: &mut Conn<S>) -> Done {
        let parameters = vec![(
            wire::istring(&b"name"[..]),
            wire::nstring(Some(&b"inetkit"[..])),
        )];
        let id = Data::Id {
            parameters: Some(parameters),
        };
        wire::data(&mut conn.out, id);
        ok("ID completed.")
    }

    /// STARTTLS: the go-ahead is queued here; the loop then hands the stream over.
    pub(super) fn starttls<S>(&self, tag: &Tag<'_>, conn: &mut Conn<S>) -> Done {
        if self.login.is_some() {
            bad("Already logged in.")
        } else if self.tls {
            bad("TLS is already active.")
        } else if self.imap.tls.is_none() {
            no("TLS is not configured.")
        } else {
            let text = wire::text("Begin TLS negotiation now.");
            let done = wire::tagged(tag.clone(), StatusKind::Ok, None, text);
            wire::send(&mut conn.out, &done);
            Done::StartTls
        }
    }

    /// LOGIN.
    pub(super) async fn login_command(
        &mut self,
        username: &AString<'_>,
        password: &Secret<AString<'_>>,
    ) -> Done {
        if !self.plaintext_allowed() {
            return no_code(
                wire::code("PRIVACYREQUIRED"),
                "Plaintext login is not allowed without TLS: use STARTTLS first.",
            );
        }
        let credentials = Credentials {
            name: String::from_utf8_lossy(username.as_ref()).into_owned(),
            password: password.declassify().as_ref().to_vec(),
            authzid: None,
        };
        self.login(credentials).await
    }

    /// AUTHENTICATE PLAIN or LOGIN, with or without an initial response (SASL-IR), through
    /// the exchange the other daemons share. `imap-codec` has decoded the initial response
    /// already: it is passed on as bytes.
    pub(super) async fn authenticate<S>(
        &mut self,
        mechanism: &AuthMechanism<'_>,
        initial_response: Option<Secret<Cow<'_, [u8]>>>,
        conn: &mut Conn<S>,
    ) -> Done
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        if !matches!(mechanism, AuthMechanism::Plain | AuthMechanism::Login) {
            return no_code(
                wire::code("CANNOT"),
                "Unsupported authentication mechanism.",
            );
        }
        if !self.plaintext_allowed() {
            return no_code(
                wire::code("PRIVACYREQUIRED"),
                "Plaintext authentication is not allowed without TLS.",
            );
        }
        let initial = initial_response.map(|ir| ir.declassify().to_vec());
        let mut challenger = LineChallenger { conn, prefix: "+ " };
        // A master user ([auth] master_users) may name another user as authzid.
        match sasl::exchange_decoded_for_master(&mut challenger, mechanism.as_ref(), initial).await
        {
            Sasl::Credentials(c) => self.login(c).await,
            // RFC 3501 §6.2.2: a cancelled exchange is answered BAD.
            Sasl::Cancelled => bad("Authentication cancelled."),
            Sasl::Malformed => bad("Malformed authentication response."),
            Sasl::Unsupported => no_code(
                wire::code("CANNOT"),
                "Unsupported authentication mechanism.",
            ),
            Sasl::Gone => Done::Close,
        }
    }

    async fn login(&mut self, credentials: Credentials) -> Done {
        let ip = self.peer.addr.ip();
        let user = match self.imap.auth.login_credentials(ip, &credentials).await {
            Ok(user) => user,
            Err(AuthError::Throttled) => {
                return no_code(
                    wire::code("UNAVAILABLE"),
                    "Too many failed logins from your address; try later.",
                )
            }
            Err(AuthError::Failed) => {
                self.failures += 1;
                return no_code(wire::code("AUTHENTICATIONFAILED"), "Authentication failed.");
            }
            Err(err) => {
                tracing::error!(error = %err, "authentication unavailable");
                return no_code(
                    wire::code("UNAVAILABLE"),
                    "Authentication is temporarily unavailable.",
                );
            }
        };
        if let Some(proxy) = &self.imap.proxy {
            match Target::from_fields(|key| user.extra_field(key), crate::proxy::PORTS) {
                Ok(Some(target)) => {
                    return self
                        .proxied(proxy.clone(), &user.name, &target, &credentials.password)
                        .await
                }
                Ok(None) => {}
                Err(err) => {
                    tracing::error!(user = %user.name, "cannot proxy: {err}");
                    return unavailable();
                }
            }
        }
        let store = self.imap.store.clone();
        let user_name = user.name.clone();
        // A mailbox's first login subscribes the folders it has (another program's Maildir, the
        // special-use ones); folders CREATEd later are the client's to subscribe.
        let opened = blocking(|| {
            let mailbox = store.mailbox(&user_name)?;
            super::mailboxes::seed_subscriptions(&mailbox);
            Ok::<_, inetkit_maildir::StoreError>(mailbox)
        });
        match opened {
            Ok(mailbox) => {
                self.peer.logged_in(&user.name);
                tracing::info!("logged in");
                let limits = crate::quota::user_limits(&user, self.imap.quota);
                self.login = Some(Login { mailbox, limits });
                ok_code(Code::Capability(self.capabilities()), "Logged in.")
            }
            Err(err) => {
                tracing::error!(user = %user.name, error = %err, "cannot open the mailbox");
                no_code(
                    wire::code("UNAVAILABLE"),
                    "Cannot open the mailbox; try again later.",
                )
            }
        }
    }

    /// Proxy mode: logs in on the user's backend; the session is then relayed. No mail store
    /// is touched here. A backend that cannot be reached or refuses is a temporary failure:
    /// the client keeps its password and tries again later.
    async fn proxied(
        &mut self,
        proxy: Proxy,
        user: &str,
        target: &Target,
        password: &[u8],
    ) -> Done {
        let login = proxy.login_for(target, user, password);
        match crate::proxy::login(&proxy, target, &login).await {
            Ok((backend, capabilities)) => {
                self.peer.logged_in(user);
                tracing::info!(backend = %target, backend_user = %login.user(), master = !login.authzid.is_empty(), "logged in, proxied");
                Done::Proxy(Box::new(backend), capabilities)
            }
            Err(err) => {
                tracing::error!(user, backend = %target, "proxy login failed: {err}");
                unavailable()
            }
        }
    }
}

/// Backend unreachable or refusing: RFC 5530's UNAVAILABLE, never "wrong password".
fn unavailable() -> Done {
    no_code(
        wire::code("UNAVAILABLE"),
        "The mail server is unavailable; try again later.",
    )
}
