//! Optional TLS for the server (`ahv serve --tls-cert --tls-key`): rustls
//! with the `ring` provider, in a listener that axum serves exactly as it
//! serves plain TCP (graceful shutdown included).
//!
//! Each handshake runs in its own task under [`HANDSHAKE_TIMEOUT`], so a
//! slow or broken client neither holds up others nor stops the accept loop;
//! at most [`MAX_HANDSHAKES`] run at once (further connections wait in the
//! kernel's backlog). Only HTTP/1.1 is offered (ALPN), as the server speaks.

use std::io;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;

/// How long a client may take to complete its TLS handshake.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Handshakes in progress at once.
pub const MAX_HANDSHAKES: usize = 1024;

/// Why the certificate or key could not be used.
#[derive(Debug, Error)]
pub enum TlsError {
    /// The certificate file could not be read or is not PEM.
    #[error("TLS certificate {path}: {reason}")]
    Certificate {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key file could not be read, is not PEM, or holds no private key.
    #[error("TLS private key {path}: {reason}")]
    Key {
        /// The file.
        path: PathBuf,
        /// What was wrong.
        reason: String,
    },
    /// The key does not fit the certificate, or rustls refuses the pair.
    #[error("TLS key {key} and certificate {cert}: {reason}")]
    Pair {
        /// The certificate file.
        cert: PathBuf,
        /// The key file.
        key: PathBuf,
        /// What rustls said.
        reason: String,
    },
}

/// A server configuration from a PEM certificate chain (leaf first) and a
/// PEM private key (PKCS#8, PKCS#1 or SEC1), with the `ring` provider named
/// explicitly (never whichever provider the build happens to contain).
///
/// # Errors
/// A file cannot be read, holds no certificate or key, or the key does not
/// fit the certificate.
pub fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let cert_err = |reason: String| TlsError::Certificate {
        path: cert.to_path_buf(),
        reason,
    };
    let certs = CertificateDer::pem_file_iter(cert)
        .map_err(|e| cert_err(e.to_string()))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| cert_err(e.to_string()))?;
    if certs.is_empty() {
        return Err(cert_err(
            "no certificate in it (expected \"-----BEGIN CERTIFICATE-----\")".into(),
        ));
    }
    let private = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: key.to_path_buf(),
        reason: e.to_string(),
    })?;
    let pair = |reason: String| TlsError::Pair {
        cert: cert.to_path_buf(),
        key: key.to_path_buf(),
        reason,
    };
    let mut config =
        ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .map_err(|e| pair(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(certs, private)
            .map_err(|e| pair(e.to_string()))?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// A TCP listener whose connections come out TLS-terminated; give it to
/// `axum::serve` in place of the `TcpListener`.
pub struct TlsListener {
    tcp: TcpListener,
    acceptor: TlsAcceptor,
    timeout: Duration,
    handshakes: JoinSet<Option<(TlsStream<TcpStream>, SocketAddr)>>,
}

impl TlsListener {
    /// Terminates TLS with `config` on the connections `tcp` accepts.
    pub fn new(tcp: TcpListener, config: Arc<ServerConfig>) -> TlsListener {
        TlsListener::with_timeout(tcp, config, HANDSHAKE_TIMEOUT)
    }

    /// As [`TlsListener::new`], with another handshake timeout.
    pub fn with_timeout(
        tcp: TcpListener,
        config: Arc<ServerConfig>,
        timeout: Duration,
    ) -> TlsListener {
        TlsListener {
            tcp,
            acceptor: TlsAcceptor::from(config),
            timeout,
            handshakes: JoinSet::new(),
        }
    }
}

impl axum::serve::Listener for TlsListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    // Cancel safe, as axum needs (it selects this against its shutdown
    // signal): `TcpListener::accept` and `JoinSet::join_next` both are.
    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        loop {
            tokio::select! {
                accepted = self.tcp.accept(), if self.handshakes.len() < MAX_HANDSHAKES => {
                    match accepted {
                        Ok((tcp, peer)) => {
                            let acceptor = self.acceptor.clone();
                            let timeout = self.timeout;
                            self.handshakes.spawn(async move {
                                match tokio::time::timeout(timeout, acceptor.accept(tcp)).await {
                                    Ok(Ok(tls)) => Some((tls, peer)),
                                    Ok(Err(e)) => {
                                        tracing::debug!(%peer, "TLS handshake failed: {e}");
                                        None
                                    }
                                    Err(_) => {
                                        tracing::debug!(%peer, "TLS handshake timed out");
                                        None
                                    }
                                }
                            });
                        }
                        Err(e) => accept_error(e).await,
                    }
                }
                Some(done) = self.handshakes.join_next() => {
                    if let Ok(Some(conn)) = done {
                        return conn;
                    }
                }
            }
        }
    }

    fn local_addr(&self) -> io::Result<Self::Addr> {
        self.tcp.local_addr()
    }
}

/// As axum's own listener: errors of one connection are ignored; others
/// (out of file descriptors, say) are logged and retried after a pause.
async fn accept_error(e: io::Error) {
    use io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(
        e.kind(),
        ConnectionRefused | ConnectionAborted | ConnectionReset
    ) {
        return;
    }
    tracing::warn!("accepting a connection: {e}");
    tokio::time::sleep(Duration::from_secs(1)).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_files_are_refused_naming_the_file_and_the_reason() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("tempdir: {e}"));
        let empty = dir.path().join("empty.pem");
        let garbage = dir.path().join("garbage.pem");
        std::fs::write(&empty, "").unwrap_or_else(|e| panic!("{e}"));
        std::fs::write(
            &garbage,
            "-----BEGIN CERTIFICATE-----\n!!!\n-----END CERTIFICATE-----\n",
        )
        .unwrap_or_else(|e| panic!("{e}"));
        let missing = dir.path().join("missing.pem");
        for (cert, key, needle) in [
            (&missing, &empty, "missing.pem"),
            (&empty, &empty, "no certificate in it"),
            (&garbage, &empty, "garbage.pem"),
        ] {
            let e = server_config(cert, key).err().map(|e| e.to_string());
            assert!(
                e.as_deref().is_some_and(|e| e.contains(needle)),
                "{cert:?}: {e:?}"
            );
        }
    }
}
