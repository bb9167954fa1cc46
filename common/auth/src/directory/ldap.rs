//! Users from an LDAP server (OpenLDAP's slapd, Active Directory, 389-ds):
//!
//! ```toml
//! [auth.directory]
//! type = "ldap"
//! url = "ldaps://ldap.example.org"      # or ldap://…, with starttls = true
//! starttls = false
//! ca_file = "/etc/ssl/certs/example-ca.pem"   # default: the system's CAs
//! base = "ou=people,dc=example,dc=org"
//! filter = "(&(objectClass=posixAccount)(uid=%u))"   # %u: the login name, escaped
//! bind_dn = "cn=inetkit,dc=example,dc=org"           # the service login ("" : anonymous)
//! bind_password_file = "/etc/inetkit/ldap.secret"   # or bind_password = "…"
//! auth_bind = false                # true: bind as the user; false: read password_attribute
//! password_attribute = "userPassword"   # {SCHEME}hash, checked as in the users file
//! name_attribute = "uid"
//! home_attribute = "homeDirectory"
//! extra_attributes = { quota = "mailQuota", groups = "memberOf" }
//! ```
//!
//! The search runs as the service login under `base` (subtree); exactly one entry must match
//! (none: unknown user; more: refused, and logged, as the filter is then too loose).

use std::collections::BTreeMap;
use std::path::PathBuf;

use ldap3::{Ldap as Handle, LdapConnAsync, LdapConnSettings, Scope, SearchEntry};
use serde::Deserialize;

use super::pool::Pool;
use super::{within, DirectoryError, DirectoryLimits, Found};
use crate::hash::StoredPassword;
use crate::users::{check_name, Entry, User};

/// LDAP's invalidCredentials result code (RFC 4511).
const INVALID_CREDENTIALS: u32 = 49;

/// `[auth.directory]` with `type = "ldap"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LdapConfig {
    /// `ldap://host[:port]` or `ldaps://host[:port]`.
    pub url: String,
    /// Upgrade an `ldap://` connection with StartTLS before anything else is sent.
    #[serde(default)]
    pub starttls: bool,
    /// The CAs to trust for the server's certificate; default: the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// Where users are searched (subtree).
    pub base: String,
    /// The search filter; `%u` stands for the login name (escaped).
    #[serde(default = "default_filter")]
    pub filter: String,
    /// The service DN that searches; empty for an anonymous search.
    #[serde(default)]
    pub bind_dn: String,
    /// Its password, here…
    #[serde(default)]
    pub bind_password: Option<String>,
    /// …or in a file only the daemons can read (first line).
    #[serde(default)]
    pub bind_password_file: Option<PathBuf>,
    /// Check passwords by binding as the user's DN, not by reading `password_attribute`.
    #[serde(default)]
    pub auth_bind: bool,
    /// The attribute holding `{SCHEME}hash`.
    #[serde(default = "default_password_attribute")]
    pub password_attribute: String,
    /// The attribute whose value is the user's name (lower-cased); absent: the login name.
    #[serde(default = "default_name_attribute")]
    pub name_attribute: String,
    /// The attribute holding the home directory, if any.
    #[serde(default = "default_home_attribute")]
    pub home_attribute: String,
    /// Extra fields (`quota=`, `groups=`, …) and the attributes they come from; several
    /// values are joined with `,`.
    #[serde(default)]
    pub extra_attributes: BTreeMap<String, String>,
}

fn default_filter() -> String {
    "(&(objectClass=posixAccount)(uid=%u))".into()
}
fn default_password_attribute() -> String {
    "userPassword".into()
}
fn default_name_attribute() -> String {
    "uid".into()
}
fn default_home_attribute() -> String {
    "homeDirectory".into()
}

pub(crate) struct Ldap {
    config: LdapConfig,
    limits: DirectoryLimits,
    tls: Option<std::sync::Arc<rustls::ClientConfig>>,
    pool: Pool<Handle>,
}

fn query_error(err: ldap3::LdapError) -> DirectoryError {
    DirectoryError::Query(err.to_string())
}

impl Ldap {
    pub(crate) fn new(config: LdapConfig, limits: DirectoryLimits) -> Result<Ldap, DirectoryError> {
        let secure = config.url.starts_with("ldaps://");
        if !secure && !config.url.starts_with("ldap://") {
            return Err(DirectoryError::Config(format!(
                "url {}: expected ldap:// or ldaps://",
                config.url
            )));
        }
        if secure && config.starttls {
            return Err(DirectoryError::Config(
                "starttls is for ldap:// URLs; ldaps:// is TLS already".into(),
            ));
        }
        if config.bind_password.is_some() && config.bind_password_file.is_some() {
            return Err(DirectoryError::Config(
                "bind_password and bind_password_file: set one".into(),
            ));
        }
        if !config.filter.contains("%u") {
            return Err(DirectoryError::Config(
                "filter: %u (the login name) is missing".into(),
            ));
        }
        let tls = if secure || config.starttls {
            Some(super::tls_client_config(config.ca_file.as_ref())?)
        } else {
            None
        };
        Ok(Ldap {
            pool: Pool::new(limits.connections, limits.timeout),
            config,
            limits,
            tls,
        })
    }

    pub(crate) fn url(&self) -> &str {
        &self.config.url
    }

    /// A new connection, bound as the service login.
    async fn connect(&self) -> Result<Handle, DirectoryError> {
        let mut settings = LdapConnSettings::new()
            .set_conn_timeout(self.limits.timeout)
            .set_starttls(self.config.starttls);
        if let Some(tls) = &self.tls {
            settings = settings.set_config(tls.clone());
        }
        let (conn, mut ldap) = LdapConnAsync::with_settings(settings, &self.config.url)
            .await
            .map_err(|e| DirectoryError::Connect(e.to_string()))?;
        ldap3::drive!(conn);
        ldap.with_timeout(self.limits.timeout);
        self.bind_service(&mut ldap).await?;
        Ok(ldap)
    }

    async fn bind_service(&self, ldap: &mut Handle) -> Result<(), DirectoryError> {
        if self.config.bind_dn.is_empty() {
            return Ok(());
        }
        let password = match (&self.config.bind_password, &self.config.bind_password_file) {
            (Some(p), _) => p.clone(),
            (None, Some(file)) => super::read_secret(file)?,
            (None, None) => String::new(),
        };
        ldap.simple_bind(&self.config.bind_dn, &password)
            .await
            .map_err(|e| DirectoryError::Connect(e.to_string()))?
            .success()
            .map_err(|e| DirectoryError::Connect(format!("service bind refused: {e}")))?;
        Ok(())
    }

    fn attributes(&self) -> Vec<&str> {
        let mut attrs = vec![
            self.config.name_attribute.as_str(),
            self.config.home_attribute.as_str(),
        ];
        if !self.config.auth_bind {
            attrs.push(&self.config.password_attribute);
        }
        attrs.extend(self.config.extra_attributes.values().map(String::as_str));
        attrs
    }

    /// Searches once on a pooled connection; on failure once more on a fresh one (the
    /// pooled one may have been closed by the server since).
    pub(crate) async fn lookup(&self, name: &str) -> Result<Option<Found>, DirectoryError> {
        match self.search(name).await {
            Err(DirectoryError::Query(_)) => {
                self.pool.flush();
                self.search(name).await
            }
            other => other,
        }
    }

    async fn search(&self, name: &str) -> Result<Option<Found>, DirectoryError> {
        let filter = self.config.filter.replace("%u", &ldap3::ldap_escape(name));
        let mut taken = self.pool.take(|| self.connect()).await?;
        let Some(ldap) = taken.conn.as_mut() else {
            return Err(DirectoryError::Query("no connection".into()));
        };
        let attrs = self.attributes();
        let search = ldap.search(&self.config.base, Scope::Subtree, &filter, attrs);
        let (entries, _) = within("search", self.limits.timeout, async {
            search
                .await
                .map_err(query_error)?
                .success()
                .map_err(query_error)
        })
        .await?;
        taken.give_back();
        if entries.len() > 1 {
            tracing::warn!(
                user = name,
                "LDAP filter matches several entries: login refused"
            );
            return Ok(None);
        }
        let Some(first) = entries.into_iter().next() else {
            return Ok(None);
        };
        Ok(self.entry(name, SearchEntry::construct(first)))
    }

    /// The users-file record an LDAP entry makes.
    pub(super) fn entry(&self, login: &str, found: SearchEntry) -> Option<Found> {
        let first = |attr: &str| -> Option<&str> {
            found
                .attrs
                .iter()
                .find(|(k, _)| k.eq_ignore_ascii_case(attr))
                .and_then(|(_, v)| v.first())
                .map(String::as_str)
        };
        let name = first(&self.config.name_attribute)
            .map(str::to_ascii_lowercase)
            .unwrap_or_else(|| login.to_owned());
        if let Err(err) = check_name(&name) {
            tracing::warn!(dn = %found.dn, "LDAP entry's name cannot be a user name ({err}): login refused");
            return None;
        }
        let home = first(&self.config.home_attribute)
            .filter(|h| h.starts_with('/'))
            .map(PathBuf::from);
        let mut extra = Vec::new();
        for (field, attr) in &self.config.extra_attributes {
            let values: Vec<&str> = found
                .attrs
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(attr))
                .flat_map(|(_, v)| v.iter().map(String::as_str))
                .collect();
            if !values.is_empty() {
                // Extra fields are space-separated: a value's own spaces would split it.
                extra.push(format!("{field}={}", values.join(",").replace(' ', "_")));
            }
        }
        let password = if self.config.auth_bind {
            None
        } else {
            let text = first(&self.config.password_attribute)
                .map(str::to_owned)
                .or_else(|| {
                    found
                        .bin_attrs
                        .iter()
                        .find(|(k, _)| k.eq_ignore_ascii_case(&self.config.password_attribute))
                        .and_then(|(_, v)| v.first())
                        .and_then(|b| String::from_utf8(b.clone()).ok())
                });
            text.and_then(|t| match StoredPassword::parse(&t) {
                Ok(p) => Some(p),
                Err(err) => {
                    tracing::warn!(dn = %found.dn, "unusable {}: {err}", self.config.password_attribute);
                    None
                }
            })
        };
        let user = User {
            name,
            uid: None,
            gid: None,
            home,
            extra,
        };
        Some(Found {
            entry: Entry { user, password },
            bind_dn: self.config.auth_bind.then(|| found.dn.clone()),
        })
    }

    /// Binds as `dn` with `password` on a pooled connection, then binds it back to the
    /// service login (or drops it). `Ok(false)`: invalid credentials.
    pub(crate) async fn check_bind(
        &self,
        dn: &str,
        password: &[u8],
    ) -> Result<bool, DirectoryError> {
        // An empty password would be an unauthenticated bind, which "succeeds".
        let Ok(password) = std::str::from_utf8(password) else {
            return Ok(false);
        };
        if password.is_empty() {
            return Ok(false);
        }
        let taken = self.pool.take(|| self.connect()).await?;
        let mut ldap = match taken.conn {
            Some(ref l) => l.clone(),
            None => return Err(DirectoryError::Query("no connection".into())),
        };
        let result = within("bind", self.limits.timeout, async {
            ldap.simple_bind(dn, password).await.map_err(query_error)
        })
        .await?;
        // Back to the service identity before the connection serves a search again.
        let restored = within("bind", self.limits.timeout, self.bind_service(&mut ldap)).await;
        if restored.is_ok() {
            taken.give_back();
        }
        match result.rc {
            0 => Ok(true),
            INVALID_CREDENTIALS => Ok(false),
            rc => Err(DirectoryError::Query(format!(
                "bind as the user: result {rc} {}",
                result.text
            ))),
        }
    }

    /// Binds the service login and reads the base entry: does the directory answer?
    pub(crate) async fn ping(&self) -> Result<(), DirectoryError> {
        let mut taken = self.pool.take(|| self.connect()).await?;
        let Some(ldap) = taken.conn.as_mut() else {
            return Err(DirectoryError::Query("no connection".into()));
        };
        let search = ldap.search(
            &self.config.base,
            Scope::Base,
            "(objectClass=*)",
            vec!["1.1"],
        );
        within("search", self.limits.timeout, async {
            search
                .await
                .map_err(query_error)?
                .success()
                .map_err(query_error)
        })
        .await?;
        taken.give_back();
        Ok(())
    }
}
