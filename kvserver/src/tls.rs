//! TLS for the client API and between peers, from the PEM files named by `--tls-cert`,
//! `--tls-key` and `--tls-ca`.
//!
//! Every node has one certificate, signed by the cluster's CA, that it shows both as a server
//! (to clients and peers) and as a client (to the peers it calls). A node verifies a peer's
//! server certificate against the CA, and its peer endpoint takes requests only over
//! connections whose client certificate the CA signed ([`PeerCertificate`]); clients of the
//! API need no certificate. rustls' `ring` provider is named explicitly, so no process-wide
//! default provider is needed.

use std::path::Path;
use std::sync::Arc;

use rustls::client::WebPkiServerVerifier;
use rustls::crypto::CryptoProvider;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::config::{Config, ConfigError};

/// Marks a request that came over a TLS connection whose client showed a certificate signed
/// by the cluster's CA: only such connections may carry peer requests when TLS is on. The
/// accept loop puts it in the request's extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCertificate;

fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn certificates(path: &Path, what: &str) -> Result<Vec<CertificateDer<'static>>, ConfigError> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| ConfigError(format!("cannot read {what} {}: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(ConfigError(format!(
            "{what} {} holds no PEM certificate",
            path.display()
        )));
    }
    Ok(certs)
}

fn private_key(path: &Path) -> Result<PrivateKeyDer<'static>, ConfigError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        ConfigError(format!(
            "cannot read the private key (--tls-key) {}: {e}",
            path.display()
        ))
    })
}

fn roots(path: &Path) -> Result<Arc<RootCertStore>, ConfigError> {
    let mut roots = RootCertStore::empty();
    for cert in certificates(path, "the CA certificate (--tls-ca)")? {
        roots.add(cert).map_err(|e| {
            ConfigError(format!(
                "the CA certificate {} is not usable: {e}",
                path.display()
            ))
        })?;
    }
    Ok(Arc::new(roots))
}

/// The three files, or `None` when TLS is off. `validate` makes sure they come together.
fn files(config: &Config) -> Option<(&Path, &Path, &Path)> {
    match (&config.tls_cert, &config.tls_key, &config.tls_ca) {
        (Some(cert), Some(key), Some(ca)) => Some((cert, key, ca)),
        _ => None,
    }
}

fn tls_error(what: &str) -> impl Fn(rustls::Error) -> ConfigError + '_ {
    move |e| ConfigError(format!("{what}: {e}"))
}

/// The server side: this node's certificate, and client certificates verified against the CA
/// when shown (API clients show none). `None` when TLS is off.
pub fn server_config(config: &Config) -> Result<Option<Arc<ServerConfig>>, ConfigError> {
    let Some((cert, key, ca)) = files(config) else {
        return Ok(None);
    };
    let provider = provider();
    let clients = WebPkiClientVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .allow_unauthenticated()
        .build()
        .map_err(|e| {
            ConfigError(format!(
                "the CA {} cannot verify clients: {e}",
                ca.display()
            ))
        })?;
    let mut server = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error("TLS protocol versions"))?
        .with_client_cert_verifier(clients)
        .with_single_cert(
            certificates(cert, "the certificate (--tls-cert)")?,
            private_key(key)?,
        )
        .map_err(tls_error(
            "--tls-cert and --tls-key do not make a usable pair",
        ))?;
    server.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Some(Arc::new(server)))
}

/// The peer client side: peers' server certificates verified against the CA, and this node's
/// certificate shown as a client certificate. `None` when TLS is off.
pub fn client_config(config: &Config) -> Result<Option<Arc<ClientConfig>>, ConfigError> {
    let Some((cert, key, ca)) = files(config) else {
        return Ok(None);
    };
    let provider = provider();
    let servers = WebPkiServerVerifier::builder_with_provider(roots(ca)?, provider.clone())
        .build()
        .map_err(|e| ConfigError(format!("the CA {} cannot verify peers: {e}", ca.display())))?;
    let client = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(tls_error("TLS protocol versions"))?
        .with_webpki_verifier(servers)
        .with_client_auth_cert(
            certificates(cert, "the certificate (--tls-cert)")?,
            private_key(key)?,
        )
        .map_err(tls_error(
            "--tls-cert and --tls-key do not make a usable pair",
        ))?;
    Ok(Some(Arc::new(client)))
}
