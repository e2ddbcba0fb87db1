//! TLS and mTLS with rustls and its `ring` provider (installed once per process).
//!
//! The coordinator serves TLS with `--tls-cert/--tls-key`; with `--tls-client-ca` every client
//! must present a certificate that chains to that CA (mTLS) or the handshake fails. Which
//! client id a connection may act for is still decided by its JWT or API key.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

/// Installs rustls' `ring` provider as the process default (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn certs(p: &Path) -> Result<Vec<CertificateDer<'static>>> {
    let v = CertificateDer::pem_file_iter(p)
        .with_context(|| format!("reading certificates {}", p.display()))?
        .collect::<Result<Vec<_>, _>>()
        .with_context(|| format!("parsing certificates {}", p.display()))?;
    if v.is_empty() {
        bail!("{} holds no PEM certificate", p.display());
    }
    Ok(v)
}

fn key(p: &Path) -> Result<PrivateKeyDer<'static>> {
    PrivateKeyDer::from_pem_file(p).with_context(|| format!("reading private key {}", p.display()))
}

fn roots(p: &Path) -> Result<RootCertStore> {
    let mut r = RootCertStore::empty();
    for c in certs(p)? {
        r.add(c)
            .with_context(|| format!("adding CA certificate from {}", p.display()))?;
    }
    Ok(r)
}

/// The server's TLS config from the coordinator's flags, or `None` for plain HTTP.
pub fn server_config(args: &crate::coordinator::Args) -> Result<Option<Arc<ServerConfig>>> {
    let (cert, key_path) = match (&args.tls_cert, &args.tls_key) {
        (Some(c), Some(k)) => (c, k),
        (None, None) => {
            if args.tls_client_ca.is_some() {
                bail!("--tls-client-ca needs --tls-cert and --tls-key");
            }
            return Ok(None);
        }
        _ => bail!("--tls-cert and --tls-key go together"),
    };
    let builder = ServerConfig::builder();
    let builder = match &args.tls_client_ca {
        Some(ca) => builder.with_client_cert_verifier(
            WebPkiClientVerifier::builder(Arc::new(roots(ca)?))
                .build()
                .context("building the client verifier")?,
        ),
        None => builder.with_no_client_auth(),
    };
    let mut cfg = builder
        .with_single_cert(certs(cert)?, key(key_path)?)
        .context("server certificate and key")?;
    cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(cfg)))
}

/// A client TLS config trusting `ca`, presenting `cert`/`key` when given (mTLS).
pub fn client_config(ca: &Path, cert_key: Option<(&Path, &Path)>) -> Result<ClientConfig> {
    let b = ClientConfig::builder().with_root_certificates(roots(ca)?);
    Ok(match cert_key {
        Some((c, k)) => b
            .with_client_auth_cert(certs(c)?, key(k)?)
            .context("client certificate and key")?,
        None => b.with_no_client_auth(),
    })
}

/// The DNS names (subject alternative names) of a verified client certificate, as the
/// `HDR_PEER_NAMES` header value; `None` without one.
pub fn peer_names(certs: Option<&[CertificateDer<'static>]>) -> Option<axum::http::HeaderValue> {
    let cert = certs?.first()?;
    let ee = webpki::EndEntityCert::try_from(cert).ok()?;
    let names: Vec<&str> = ee.valid_dns_names().collect();
    // A verified certificate without names still marks the connection as mTLS: it may act for
    // no client (an empty list), never for every client.
    axum::http::HeaderValue::from_str(&names.join(",")).ok()
}

/// Removes any client-sent `HDR_PEER_NAMES` and sets the connection's own.
pub fn with_peer_names(
    mut req: axum::extract::Request,
    names: Option<axum::http::HeaderValue>,
) -> axum::extract::Request {
    let h = req.headers_mut();
    h.remove(crate::api::HDR_PEER_NAMES);
    if let Some(v) = names {
        h.insert(crate::api::HDR_PEER_NAMES, v);
    }
    req
}
