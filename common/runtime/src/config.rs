//! Configuration: one TOML file per daemon, `/etc/inetkit/<name>.toml`.
//!
//! Every daemon's config has the shared sections `[listen]`, `[tls]`, `[limits]` and `[log]`
//! beside its own. Unknown keys are refused, and every error names the file, line and column.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Deserialize;

/// A config that could not be read or understood, with where.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}:{line}:{column}: {message}")]
    Invalid {
        path: PathBuf,
        line: usize,
        column: usize,
        message: String,
    },
}

/// Reads and parses a config file.
pub fn load<T: DeserializeOwned>(path: &Path) -> Result<T, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
        path: path.to_owned(),
        source,
    })?;
    parse(&text, path)
}

/// Parses config text; `path` is only used in error messages.
pub fn parse<T: DeserializeOwned>(text: &str, path: &Path) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|err| {
        let (line, column) = err
            .span()
            .map(|span| line_column(text, span.start))
            .unwrap_or((1, 1));
        ConfigError::Invalid {
            path: path.to_owned(),
            line,
            column,
            message: err.message().trim_end().to_owned(),
        }
    })
}

/// 1-based line and column (in characters) of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, before[line_start..].chars().count() + 1)
}

/// `[listen]`: socket name → addresses, used when not socket-activated.
/// Addresses are `tcp://ADDR:PORT`, `udp://ADDR:PORT` or `ADDR:PORT` (TCP).
pub type ListenConfig = BTreeMap<String, Vec<String>>;

/// `[tls]`: the certificate chain and key, as PEM files.
///
/// When unset, the files systemd hands over with `LoadCredential=tls-cert:…` and
/// `LoadCredential=tls-key:…` are used.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    pub cert: Option<PathBuf>,
    pub key: Option<PathBuf>,
}

/// `[limits]`: connection limits and timeouts, in seconds.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Sessions served at once; more are refused.
    pub max_connections: usize,
    /// Sessions at once from one client address.
    pub max_connections_per_ip: usize,
    /// A session that sends nothing for this long is closed. Each protocol has its own
    /// default (the least its RFC allows: POP3 10 minutes, IMAP 30).
    pub idle_timeout: Option<u64>,
    /// A session whose client does not take our output for this long is closed.
    pub write_timeout: u64,
    /// On SIGTERM, how long running sessions may go on before the daemon exits anyway.
    pub shutdown_timeout: u64,
    /// Exit after this long with no session (socket activation restarts the daemon on the
    /// next connection). 0 keeps the daemon running.
    pub idle_exit: u64,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        LimitsConfig {
            max_connections: 1000,
            max_connections_per_ip: 64,
            idle_timeout: None,
            write_timeout: 60,
            shutdown_timeout: 30,
            idle_exit: 0,
        }
    }
}

impl LimitsConfig {
    pub fn idle_timeout(&self) -> Duration {
        Duration::from_secs(self.idle_timeout.unwrap_or(300))
    }
    pub fn write_timeout(&self) -> Duration {
        Duration::from_secs(self.write_timeout)
    }
    pub fn shutdown_timeout(&self) -> Duration {
        Duration::from_secs(self.shutdown_timeout)
    }
    pub fn idle_exit(&self) -> Option<Duration> {
        (self.idle_exit > 0).then(|| Duration::from_secs(self.idle_exit))
    }
}

/// `[log]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// error, warn, info, debug or trace.
    pub level: LogLevel,
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            level: LogLevel::Info,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

/// What every daemon's config has; implemented with [`crate::shared_sections!`].
pub trait DaemonConfig: DeserializeOwned + Default {
    /// The idle timeout when `[limits] idle_timeout` is not set, in seconds.
    const IDLE_TIMEOUT: u64 = 300;

    fn listen(&self) -> &ListenConfig;
    fn tls(&self) -> &TlsConfig;
    fn limits(&self) -> &LimitsConfig;
    fn log(&self) -> &LogConfig;
}

/// Implements [`DaemonConfig`] for a config struct with fields `listen`, `tls`, `limits`, `log`.
#[macro_export]
macro_rules! shared_sections {
    ($config:ty) => {
        $crate::shared_sections!($config, idle_timeout = 300);
    };
    ($config:ty, idle_timeout = $idle:expr) => {
        impl $crate::config::DaemonConfig for $config {
            const IDLE_TIMEOUT: u64 = $idle;

            fn listen(&self) -> &$crate::config::ListenConfig {
                &self.listen
            }
            fn tls(&self) -> &$crate::config::TlsConfig {
                &self.tls
            }
            fn limits(&self) -> &$crate::config::LimitsConfig {
                &self.limits
            }
            fn log(&self) -> &$crate::config::LogConfig {
                &self.log
            }
        }
    };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, Default, Deserialize)]
    #[serde(deny_unknown_fields, default)]
    struct Example {
        listen: ListenConfig,
        tls: TlsConfig,
        limits: LimitsConfig,
        log: LogConfig,
        name: String,
    }
    crate::shared_sections!(Example);

    fn parse_example(text: &str) -> Result<Example, ConfigError> {
        parse(text, Path::new("/etc/inetkit/example.toml"))
    }

    #[test]
    fn empty_config_gives_defaults() {
        let c = parse_example("").unwrap();
        assert_eq!(c.limits().max_connections, 1000);
        assert_eq!(c.log().level, LogLevel::Info);
        assert!(c.limits().idle_exit().is_none());
        assert!(c.listen().is_empty());
    }

    #[test]
    fn sections_parse() {
        let c = parse_example(
            r#"
name = "x"
[listen]
echo = ["127.0.0.1:7", "udp://127.0.0.1:7"]
[tls]
cert = "/a.pem"
key = "/a.key"
[limits]
max_connections = 5
idle_exit = 10
[log]
level = "debug"
"#,
        )
        .unwrap();
        assert_eq!(c.listen()["echo"].len(), 2);
        assert_eq!(c.tls().cert.as_deref(), Some(Path::new("/a.pem")));
        assert_eq!(c.limits().max_connections, 5);
        assert_eq!(c.limits().max_connections_per_ip, 64);
        assert_eq!(c.limits().idle_exit(), Some(Duration::from_secs(10)));
        assert_eq!(c.log().level, LogLevel::Debug);
    }

    #[test]
    fn unknown_key_is_refused_with_line_and_column() {
        let err = parse_example("name = \"x\"\n[limits]\n  max_conections = 5\n").unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with("/etc/inetkit/example.toml:3:3: "),
            "{text}"
        );
        assert!(text.contains("max_conections"), "{text}");
    }

    #[test]
    fn wrong_type_is_refused_with_position() {
        let err = parse_example("[limits]\nmax_connections = \"many\"\n").unwrap_err();
        assert!(err.to_string().contains(":2:19: "), "{err}");
        let err = parse_example("[log]\nlevel = \"loud\"\n").unwrap_err();
        assert!(err.to_string().contains(":2:9: "), "{err}");
    }

    #[test]
    fn syntax_error_is_refused_with_position() {
        let err = parse_example("name = \"x\"\n[listen\n").unwrap_err();
        assert!(err.to_string().contains(":2:"), "{err}");
    }

    #[test]
    fn missing_file_names_the_path() {
        let err = load::<Example>(Path::new("/nonexistent/inetkit.toml")).unwrap_err();
        assert!(err.to_string().starts_with("/nonexistent/inetkit.toml: "));
    }

    #[test]
    fn columns_count_characters() {
        assert_eq!(line_column("a\nbé c", 6), (2, 4));
        assert_eq!(line_column("abc", 0), (1, 1));
    }
}
