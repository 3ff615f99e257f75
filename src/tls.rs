//! TLS for every listener: one rustls server configuration built at start.
//!
//! Certificates come from the configured PEM paths. When neither file exists a
//! self-signed leaf certificate for `localhost` (not a CA: rustls refuses a CA
//! used as an end entity) is generated there, with the key readable by the
//! owner only, so that the quick start works without any key in the repo.

use std::path::Path;
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::TlsAcceptor;

use crate::config::TlsConfig;

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("tls: {path}: {problem}")]
    File { path: String, problem: String },
    #[error("tls: generating a self-signed certificate failed: {0}")]
    Generate(String),
    #[error("tls: {0}")]
    Rustls(#[from] rustls::Error),
    #[error(
        "tls: only one of tls.cert ({cert}) and tls.key ({key}) exists; provide both or neither"
    )]
    HalfPair { cert: String, key: String },
}

fn file_err(path: &Path, problem: impl ToString) -> TlsError {
    TlsError::File {
        path: path.display().to_string(),
        problem: problem.to_string(),
    }
}

/// Generates a self-signed pair for localhost at the given paths.
pub fn generate_self_signed(cert: &Path, key: &Path) -> Result<(), TlsError> {
    let names = vec!["localhost".to_string(), "127.0.0.1".to_string()];
    let pair =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    for p in [cert, key] {
        if let Some(dir) = p.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|e| file_err(dir, e))?;
        }
    }
    std::fs::write(cert, pair.cert.pem()).map_err(|e| file_err(cert, e))?;
    write_private(key, pair.signing_key.serialize_pem().as_bytes())?;
    Ok(())
}

fn write_private(path: &Path, data: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| file_err(path, e))?;
    f.write_all(data).map_err(|e| file_err(path, e))
}

/// Loads (or first generates) the certificate and builds the acceptor.
pub fn acceptor(cfg: &TlsConfig) -> Result<TlsAcceptor, TlsError> {
    match (cfg.cert.exists(), cfg.key.exists()) {
        (false, false) => {
            tracing::info!(cert = %cfg.cert.display(), "no TLS certificate found, generating a self-signed one for localhost");
            generate_self_signed(&cfg.cert, &cfg.key)?;
        }
        (true, true) => {}
        _ => {
            return Err(TlsError::HalfPair {
                cert: cfg.cert.display().to_string(),
                key: cfg.key.display().to_string(),
            });
        }
    }
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cfg.cert)
        .map_err(|e| file_err(&cfg.cert, e))?
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(&cfg.cert, e))?;
    if certs.is_empty() {
        return Err(file_err(&cfg.cert, "no certificate in file"));
    }
    let key = PrivateKeyDer::from_pem_file(&cfg.key).map_err(|e| file_err(&cfg.key, e))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
