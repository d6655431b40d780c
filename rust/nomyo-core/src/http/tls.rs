//! The TLS client configuration: rustls on aws-lc-rs, verification always on.
//!
//! Trust anchors come from PEM files (or directories of them) that the caller names, so the
//! native transport trusts exactly what the Python side would hand to `ssl`: the certifi
//! bundle, `SSL_CERT_FILE`/`SSL_CERT_DIR`, or a caller's CA bundle.

use std::path::Path;
use std::sync::Arc;

use rustls::client::ClientConfig;
use rustls::RootCertStore;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::CertificateDer;

use crate::error::{Error, Result};

fn certs_in_file(path: &Path, out: &mut Vec<CertificateDer<'static>>) -> Result<()> {
    let iter = CertificateDer::pem_file_iter(path)
        .map_err(|e| Error::Config(format!("cannot read CA file {}: {e}", path.display())))?;
    for cert in iter {
        let cert =
            cert.map_err(|e| Error::Config(format!("bad PEM in CA file {}: {e}", path.display())))?;
        out.push(cert);
    }
    Ok(())
}

/// Every certificate in `paths`; a directory contributes each regular file in it.
fn collect(paths: &[impl AsRef<Path>]) -> Result<Vec<CertificateDer<'static>>> {
    let mut certs = Vec::new();
    for path in paths {
        let path = path.as_ref();
        if path.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(path)
                .map_err(|e| {
                    Error::Config(format!("cannot read CA directory {}: {e}", path.display()))
                })?
                .filter_map(|entry| entry.ok().map(|e| e.path()))
                .filter(|p| p.is_file())
                .collect();
            entries.sort();
            for entry in entries {
                // A CA directory may hold other files (OpenSSL's hashed links point at the
                // same certificates); unreadable or non-PEM entries are skipped, as OpenSSL does.
                let _ = certs_in_file(&entry, &mut certs);
            }
        } else {
            certs_in_file(path, &mut certs)?;
        }
    }
    Ok(certs)
}

/// A verifying TLS configuration (TLS 1.2 and 1.3, ALPN `h2` then `http/1.1`: the server
/// chooses) trusting `paths`.
pub fn client_config(paths: &[impl AsRef<Path>]) -> Result<Arc<ClientConfig>> {
    let mut roots = RootCertStore::empty();
    let (added, _ignored) = roots.add_parsable_certificates(collect(paths)?);
    if added == 0 {
        return Err(Error::Config(
            "no usable CA certificate in the trust store".into(),
        ));
    }
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::Config(format!("TLS configuration: {e}")))?
        .with_root_certificates(roots)
        .with_no_client_auth();
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
