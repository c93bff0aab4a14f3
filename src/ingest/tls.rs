//! TLS for the MQTT listener (rustls, ring provider).
//!
//! The handshake runs inside each connection's own task, bounded by `handshake_timeout`, never
//! in the accept loop: rumqttd's listener does it inline with no timeout, so one idle peer
//! blocks every other client (decisions.md §1). A failed or slow handshake closes only that
//! socket and is counted as `closed_tls_handshake`.
//!
//! Client certificates are optional: with `client_ca` set they are verified against it, and
//! `require_client_cert` decides whether a client without one is refused. Authorization is
//! still by username/password and ACLs; the certificate only proves the device holds a key
//! the site's CA signed.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::server::WebPkiClientVerifier;
use tokio_rustls::rustls::{self, RootCertStore, ServerConfig};
use tokio_rustls::TlsAcceptor;

use super::IngestError;

/// The TLS listener: its address, certificate material (PEM files) and handshake limit.
#[derive(Debug, Clone)]
pub struct TlsOptions {
    /// Default port 8883.
    pub listen: std::net::SocketAddr,
    /// Server certificate chain (leaf first).
    pub cert_chain: PathBuf,
    pub private_key: PathBuf,
    /// CA bundle that client certificates are verified against; `None` = no client certs.
    pub client_ca: Option<PathBuf>,
    /// With `client_ca`: refuse clients that present no certificate.
    pub require_client_cert: bool,
    /// A peer must finish the handshake within this (then CONNECT within `connect_timeout`).
    pub handshake_timeout: std::time::Duration,
}

fn tls_err(what: impl Into<String>, path: &Path) -> IngestError {
    IngestError::Tls {
        what: what.into(),
        path: path.to_owned(),
    }
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, IngestError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| tls_err(format!("reading certificates: {e}"), path))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| tls_err(format!("parsing certificates: {e}"), path))?;
    if certs.is_empty() {
        return Err(tls_err("no PEM certificate found", path));
    }
    Ok(certs)
}

/// Builds the acceptor once at startup so a bad certificate fails `ferry` at start, not at the
/// first device.
pub(crate) fn acceptor(opts: &TlsOptions) -> Result<TlsAcceptor, IngestError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let chain = load_certs(&opts.cert_chain)?;
    let key = PrivateKeyDer::from_pem_file(&opts.private_key)
        .map_err(|e| tls_err(format!("reading the private key: {e}"), &opts.private_key))?;
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_safe_default_protocol_versions()
        .map_err(|e| tls_err(e.to_string(), &opts.cert_chain))?;
    let builder = match &opts.client_ca {
        None => builder.with_no_client_auth(),
        Some(ca) => {
            let mut roots = RootCertStore::empty();
            for c in load_certs(ca)? {
                roots
                    .add(c)
                    .map_err(|e| tls_err(format!("adding a CA certificate: {e}"), ca))?;
            }
            let v = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
            let v = if opts.require_client_cert {
                v
            } else {
                v.allow_unauthenticated()
            };
            let verifier = v
                .build()
                .map_err(|e| tls_err(format!("client certificate verifier: {e}"), ca))?;
            builder.with_client_cert_verifier(verifier)
        }
    };
    let config = builder.with_single_cert(chain, key).map_err(|e| {
        tls_err(
            format!("certificate and key do not fit: {e}"),
            &opts.private_key,
        )
    })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
