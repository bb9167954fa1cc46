//! TLS for every daemon: rustls with TLS 1.2 and 1.3 only, a certificate that can be reloaded
//! (SIGHUP) without touching running sessions, and the handshake used both by implicit-TLS
//! ports and by STARTTLS-style upgrades.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use rustls::crypto::CryptoProvider;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_rustls::server::TlsStream;
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

/// How long a client may take to complete a handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(30);

/// Credential name of the certificate chain (PEM) the units pass with
/// `LoadCredential=tls-cert:…`; found as `$CREDENTIALS_DIRECTORY/tls-cert`.
pub const CREDENTIAL_CERT: &str = "tls-cert";
/// Credential name of the private key (PEM) the units pass with `LoadCredential=tls-key:…`.
pub const CREDENTIAL_KEY: &str = "tls-key";

/// Why a certificate and key could not be loaded. At start this refuses the TLS sockets; on a
/// reload the old pair stays in use and the error is logged.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate file could not be read or is not PEM.
    #[error("reading certificates from {path}")]
    Certificates {
        /// The certificate file.
        path: PathBuf,
        /// What the PEM reader found wrong (including the I/O error, such as a missing file).
        source: rustls_pki_types::pem::Error,
    },
    /// The certificate file is PEM but has no `CERTIFICATE` block (a key file given twice?).
    #[error("{path} holds no certificate")]
    NoCertificate {
        /// The certificate file.
        path: PathBuf,
    },
    /// The key file could not be read, is not PEM, or has no private key block.
    #[error("reading private key from {path}")]
    Key {
        /// The key file.
        path: PathBuf,
        /// What the PEM reader found wrong.
        source: rustls_pki_types::pem::Error,
    },
    /// The key was read but the crypto provider cannot use it (an unsupported algorithm).
    #[error("private key in {path}")]
    BadKey {
        /// The key file.
        path: PathBuf,
        /// Why rustls refused it.
        source: rustls::Error,
    },
    /// Both files load, but the key is not the certificate's (a renewed certificate with the
    /// old key, or the other way round).
    #[error("the key in {key} does not belong to the certificate in {cert}")]
    Mismatch {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
    },
    /// rustls refused the server configuration itself (protocol versions).
    #[error("TLS setup")]
    Rustls(#[from] rustls::Error),
    /// `[tls]` names a certificate without a key or a key without a certificate.
    #[error("tls.cert and tls.key must be set together")]
    HalfConfigured,
    /// A CA file for the connections a daemon makes cannot be read, holds no certificate, or
    /// holds one rustls cannot trust.
    #[error("CA file {path}: {reason}")]
    CaFile {
        /// The CA file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
}

/// The rustls setup for the connections a daemon makes (DNS-over-TLS upstreams, LDAP and
/// PostgreSQL directories, proxied backends): the certificates in `ca_file` as the only trust
/// anchors, or the system's when there is none. TLS 1.2 and 1.3.
pub fn client_config(ca_file: Option<&Path>) -> Result<Arc<rustls::ClientConfig>, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    match ca_file {
        Some(path) => {
            let bad = |reason: String| TlsError::CaFile {
                path: path.to_owned(),
                reason,
            };
            let certs = CertificateDer::pem_file_iter(path).map_err(|e| bad(e.to_string()))?;
            for cert in certs {
                let cert = cert.map_err(|e| bad(e.to_string()))?;
                roots.add(cert).map_err(|e| bad(e.to_string()))?;
            }
            if roots.is_empty() {
                return Err(bad("no certificate in it".into()));
            }
        }
        None => {
            for cert in rustls_native_certs::load_native_certs().certs {
                let _ = roots.add(cert);
            }
        }
    }
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots)
        .with_no_client_auth();
    Ok(Arc::new(config))
}

/// Where the certificate and key come from: the config, else systemd's credentials.
pub fn cert_paths(config: &TlsConfig) -> Result<Option<(PathBuf, PathBuf)>, TlsError> {
    match (&config.cert, &config.key) {
        (Some(cert), Some(key)) => Ok(Some((cert.clone(), key.clone()))),
        (None, None) => Ok(std::env::var_os("CREDENTIALS_DIRECTORY").and_then(|dir| {
            let dir = PathBuf::from(dir);
            let (cert, key) = (dir.join(CREDENTIAL_CERT), dir.join(CREDENTIAL_KEY));
            (cert.exists() && key.exists()).then_some((cert, key))
        })),
        _ => Err(TlsError::HalfConfigured),
    }
}

/// A server TLS setup whose certificate can be swapped while it serves.
#[derive(Clone)]
pub struct TlsContext {
    acceptor: TlsAcceptor,
    config: Arc<ServerConfig>,
    resolver: Arc<ReloadableCert>,
}

impl std::fmt::Debug for TlsContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsContext")
            .field("cert", &self.resolver.cert_path)
            .finish()
    }
}

impl TlsContext {
    /// Loads the configured pair; `None` when no certificate is configured or handed over.
    pub fn from_config(config: &TlsConfig) -> Result<Option<Self>, TlsError> {
        match cert_paths(config)? {
            Some((cert, key)) => Self::load(&cert, &key).map(Some),
            None => Ok(None),
        }
    }

    /// Loads a PEM certificate chain (leaf first) and its private key (PKCS#8, PKCS#1 or
    /// SEC1) and checks that they belong together. The paths are kept for [`reload`](Self::reload).
    pub fn load(cert: &Path, key: &Path) -> Result<Self, TlsError> {
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let resolver = Arc::new(ReloadableCert {
            cert_path: cert.to_owned(),
            key_path: key.to_owned(),
            current: RwLock::new(load_certified_key(&provider, cert, key)?),
            provider: provider.clone(),
        });
        let config = ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
            .with_no_client_auth()
            .with_cert_resolver(resolver.clone());
        let config = Arc::new(config);
        Ok(TlsContext {
            acceptor: TlsAcceptor::from(config.clone()),
            config,
            resolver,
        })
    }

    /// Re-reads the certificate and key. New handshakes use them; running sessions keep theirs.
    /// On error the old pair stays in use.
    pub fn reload(&self) -> Result<(), TlsError> {
        self.resolver.reload()
    }

    /// The tokio-rustls acceptor, for callers that run the handshake themselves. Prefer
    /// [`accept`](Self::accept), which bounds the handshake's time.
    pub fn acceptor(&self) -> &TlsAcceptor {
        &self.acceptor
    }

    /// The rustls configuration behind the acceptor, for a daemon that derives its own from it
    /// (ftpd's data connections). The certificate resolver is shared, so configurations made
    /// from it serve reloaded certificates too.
    pub fn server_config(&self) -> &Arc<ServerConfig> {
        &self.config
    }

    /// A context with the same certificate (reloads included) and a copy of this one's
    /// settings changed by `adjust`: e.g. a session cache and ticket key of its own, so that
    /// connections accepted by it resume only each other's sessions (ftpd binds a session's
    /// data connections to its control connection this way).
    pub fn derive(&self, adjust: impl FnOnce(&mut ServerConfig)) -> TlsContext {
        let mut config = (*self.config).clone();
        adjust(&mut config);
        let config = Arc::new(config);
        TlsContext {
            acceptor: TlsAcceptor::from(config.clone()),
            config,
            resolver: self.resolver.clone(),
        }
    }

    /// Runs the server side of a handshake on `stream` (an implicit-TLS connection, or one that
    /// just asked for STARTTLS), bounded by [`HANDSHAKE_TIMEOUT`].
    pub async fn accept<S>(&self, stream: S) -> std::io::Result<TlsStream<S>>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, self.acceptor.accept(stream)).await {
            Ok(result) => result,
            Err(_) => Err(std::io::Error::new(
                std::io::ErrorKind::TimedOut,
                "TLS handshake timed out",
            )),
        }
    }
}

#[derive(Debug)]
struct ReloadableCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<Arc<CertifiedKey>>,
    provider: Arc<CryptoProvider>,
}

impl ReloadableCert {
    fn reload(&self) -> Result<(), TlsError> {
        let fresh = load_certified_key(&self.provider, &self.cert_path, &self.key_path)?;
        // A poisoned lock only means a panic elsewhere mid-swap; the Arc inside is still whole.
        *self.current.write().unwrap_or_else(|e| e.into_inner()) = fresh;
        Ok(())
    }
}

impl ResolvesServerCert for ReloadableCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(
            self.current
                .read()
                .unwrap_or_else(|e| e.into_inner())
                .clone(),
        )
    }
}

fn load_certified_key(
    provider: &CryptoProvider,
    cert: &Path,
    key: &Path,
) -> Result<Arc<CertifiedKey>, TlsError> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|source| TlsError::Certificates {
            path: cert.to_owned(),
            source,
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate {
            path: cert.to_owned(),
        });
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|source| TlsError::Key {
        path: key.to_owned(),
        source,
    })?;
    let signing = provider
        .key_provider
        .load_private_key(private)
        .map_err(|source| TlsError::BadKey {
            path: key.to_owned(),
            source,
        })?;
    let certified = CertifiedKey::new(chain, signing);
    if certified.keys_match().is_err() {
        return Err(TlsError::Mismatch {
            cert: cert.to_owned(),
            key: key.to_owned(),
        });
    }
    Ok(Arc::new(certified))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_a_certificate_is_refused_and_no_file_means_the_system_roots() {
        let dir = std::env::temp_dir().join(format!("inetkit-tls-test-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "not a certificate\n").unwrap();
        let err = client_config(Some(&empty)).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!("CA file {}: no certificate in it", empty.display())
        );
        let missing = dir.join("missing.pem");
        assert!(matches!(
            client_config(Some(&missing)),
            Err(TlsError::CaFile { path, .. }) if path == missing
        ));
        assert!(client_config(None).is_ok());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
