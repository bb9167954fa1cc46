//! Users from a PostgreSQL database:
//!
//! ```toml
//! [auth.directory]
//! type = "postgresql"
//! # libpq's key=value form or a postgres:// URL; host=/run/postgresql for the Unix socket
//! connection = "host=db.example.org dbname=mail user=inetkit sslmode=require"
//! password_file = "/etc/inetkit/postgresql.secret"   # the connection's password, if any
//! ca_file = "/etc/ssl/certs/example-ca.pem"          # default: the system's CAs
//! query = "SELECT name, password, home, quota FROM users WHERE name = $1"
//! ```
//!
//! The query gets the login name (lower case) as `$1` and returns at most one row whose
//! columns are named like a users-file line's fields: `password` (`{SCHEME}hash`), `name`,
//! `uid`, `gid`, `home`; every other column becomes an extra field `column=value` (e.g.
//! `quota`, `groups`). NULLs are left out. Columns must be text, integers or booleans.

use std::path::PathBuf;
use std::str::FromStr;

use serde::Deserialize;
use tokio_postgres::types::Type;
use tokio_postgres::{Client, Row, Statement};

use super::pool::Pool;
use super::{within, DirectoryError, DirectoryLimits, Found};
use crate::hash::StoredPassword;
use crate::users::{check_name, Entry, User};

/// `[auth.directory]` with `type = "postgresql"`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// The connection string (libpq `key=value` form or a `postgres://` URL).
    pub connection: String,
    /// A file holding the connection's password (first line), kept out of the config.
    #[serde(default)]
    pub password_file: Option<PathBuf>,
    /// The CAs to trust for the server's certificate (`sslmode=require`); default: the system's.
    #[serde(default)]
    pub ca_file: Option<PathBuf>,
    /// The query, with `$1` for the login name.
    pub query: String,
}

/// A connection and the query prepared on it.
pub(crate) struct Conn {
    client: Client,
    query: Statement,
}

pub(crate) struct Postgres {
    config: PostgresConfig,
    connect: tokio_postgres::Config,
    tls: tokio_postgres_rustls::MakeRustlsConnect,
    limits: DirectoryLimits,
    pool: Pool<Conn>,
}

fn query_error(err: tokio_postgres::Error) -> DirectoryError {
    DirectoryError::Query(err.to_string())
}

impl Postgres {
    pub(crate) fn new(
        config: PostgresConfig,
        limits: DirectoryLimits,
    ) -> Result<Postgres, DirectoryError> {
        let mut connect = tokio_postgres::Config::from_str(&config.connection)
            .map_err(|e| DirectoryError::Config(format!("connection: {e}")))?;
        connect.connect_timeout(limits.timeout);
        if !config.query.contains("$1") {
            return Err(DirectoryError::Config(
                "query: $1 (the login name) is missing".into(),
            ));
        }
        let tls = super::tls_client_config(config.ca_file.as_ref())?;
        Ok(Postgres {
            tls: tokio_postgres_rustls::MakeRustlsConnect::new((*tls).clone()),
            pool: Pool::new(limits.connections, limits.timeout),
            connect,
            config,
            limits,
        })
    }

    /// Where it connects (host and database; never the password).
    pub(crate) fn target(&self) -> String {
        let hosts: Vec<String> = self
            .connect
            .get_hosts()
            .iter()
            .map(|h| match h {
                tokio_postgres::config::Host::Tcp(name) => name.clone(),
                tokio_postgres::config::Host::Unix(path) => path.display().to_string(),
            })
            .collect();
        format!(
            "{} database {}",
            hosts.join(","),
            self.connect.get_dbname().unwrap_or("(default)")
        )
    }

    async fn open(&self) -> Result<Conn, DirectoryError> {
        let mut connect = self.connect.clone();
        if let Some(file) = &self.config.password_file {
            connect.password(super::read_secret(file)?);
        }
        let (client, connection) = connect
            .connect(self.tls.clone())
            .await
            .map_err(|e| DirectoryError::Connect(e.to_string()))?;
        tokio::spawn(async move {
            if let Err(err) = connection.await {
                tracing::debug!("PostgreSQL connection ended: {err}");
            }
        });
        let query = client
            .prepare(&self.config.query)
            .await
            .map_err(|e| DirectoryError::Config(format!("query cannot be prepared: {e}")))?;
        Ok(Conn { client, query })
    }

    /// Queries once on a pooled connection; on failure once more on a fresh one.
    pub(crate) async fn lookup(&self, name: &str) -> Result<Option<Found>, DirectoryError> {
        match self.query(name).await {
            Err(DirectoryError::Query(_)) => {
                self.pool.flush();
                self.query(name).await
            }
            other => other,
        }
    }

    async fn query(&self, name: &str) -> Result<Option<Found>, DirectoryError> {
        let taken = self.pool.take(|| self.open()).await?;
        let Some(conn) = taken.conn.as_ref() else {
            return Err(DirectoryError::Query("no connection".into()));
        };
        let rows = within("query", self.limits.timeout, async {
            conn.client
                .query(&conn.query, &[&name])
                .await
                .map_err(query_error)
        })
        .await?;
        taken.give_back();
        if rows.len() > 1 {
            tracing::warn!(
                user = name,
                "directory query returns several rows: login refused"
            );
            return Ok(None);
        }
        match rows.first() {
            Some(row) => entry(name, row).map(Some),
            None => Ok(None),
        }
    }

    /// Connects (or takes a pooled connection) and runs `SELECT 1`.
    pub(crate) async fn ping(&self) -> Result<(), DirectoryError> {
        let taken = self.pool.take(|| self.open()).await?;
        let Some(conn) = taken.conn.as_ref() else {
            return Err(DirectoryError::Query("no connection".into()));
        };
        within("query", self.limits.timeout, async {
            conn.client
                .simple_query("SELECT 1")
                .await
                .map_err(query_error)
        })
        .await?;
        taken.give_back();
        Ok(())
    }
}

/// Column `index` as text; `None` for NULL.
fn text(row: &Row, index: usize) -> Result<Option<String>, DirectoryError> {
    let column = &row.columns()[index];
    let wrong = |e: tokio_postgres::Error| {
        DirectoryError::Config(format!("query column {}: {e}", column.name()))
    };
    Ok(match *column.type_() {
        Type::TEXT | Type::VARCHAR | Type::BPCHAR | Type::NAME => {
            row.try_get::<_, Option<String>>(index).map_err(wrong)?
        }
        Type::INT2 => row
            .try_get::<_, Option<i16>>(index)
            .map_err(wrong)?
            .map(|v| v.to_string()),
        Type::INT4 => row
            .try_get::<_, Option<i32>>(index)
            .map_err(wrong)?
            .map(|v| v.to_string()),
        Type::INT8 => row
            .try_get::<_, Option<i64>>(index)
            .map_err(wrong)?
            .map(|v| v.to_string()),
        Type::BOOL => row
            .try_get::<_, Option<bool>>(index)
            .map_err(wrong)?
            .map(|v| v.to_string()),
        ref other => {
            return Err(DirectoryError::Config(format!(
                "query column {} is {other}: cast it to text",
                column.name()
            )))
        }
    })
}

/// The users-file record a row makes.
fn entry(login: &str, row: &Row) -> Result<Found, DirectoryError> {
    let mut user = User {
        name: login.to_owned(),
        uid: None,
        gid: None,
        home: None,
        extra: Vec::new(),
    };
    let mut password = None;
    for (index, column) in row.columns().iter().enumerate() {
        let Some(value) = text(row, index)? else {
            continue;
        };
        let number = |what: &str| {
            value
                .parse::<u32>()
                .map_err(|_| DirectoryError::Config(format!("query column {what}: not a number")))
        };
        match column.name() {
            "password" => match StoredPassword::parse(&value) {
                Ok(p) => password = Some(p),
                Err(err) => tracing::warn!(user = login, "unusable password column: {err}"),
            },
            "name" | "user" | "username" => user.name = value.to_ascii_lowercase(),
            "uid" => user.uid = Some(number("uid")?),
            "gid" => user.gid = Some(number("gid")?),
            "home" if value.starts_with('/') => user.home = Some(PathBuf::from(value)),
            "home" => {}
            field => user
                .extra
                .push(format!("{field}={}", value.replace(' ', "_"))),
        }
    }
    if let Err(err) = check_name(&user.name) {
        return Err(DirectoryError::Config(format!(
            "the query's name column cannot be a user name: {err}"
        )));
    }
    Ok(Found {
        entry: Entry { user, password },
        bind_dn: None,
    })
}
