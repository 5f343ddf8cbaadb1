//! TLS material for `https://` endpoints: a CA bundle to trust instead of the
//! built-in Mozilla roots, and a client certificate and key for mutual TLS.
//!
//! The PEM files are read and checked once at startup, so a missing, unreadable
//! or empty file stops the daemon with one line naming the setting and the file,
//! instead of surfacing later as a handshake failure on every export.

use std::path::Path;

use ureq::tls::{parse_pem, PemItem};

use crate::error::RunError;

/// PEM bytes checked at startup (rustls, through tonic or ureq, uses them).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TlsSettings {
    /// Trusted CA certificates; `None`: the built-in Mozilla roots (webpki-roots).
    pub ca_pem: Option<Vec<u8>>,
    /// Client certificate chain and private key for mutual TLS.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

fn read(source: &str, path: &Path) -> Result<Vec<u8>, RunError> {
    std::fs::read(path)
        .map_err(|e| RunError::setting(source, format!("cannot read {}: {e}", path.display())))
}

/// Reads a PEM file that must hold at least one certificate.
pub fn load_certificates(source: &str, path: &Path) -> Result<Vec<u8>, RunError> {
    let pem = read(source, path)?;
    let mut certs = 0;
    for item in parse_pem(&pem) {
        match item {
            Ok(PemItem::Certificate(_)) => certs += 1,
            Ok(_) => {}
            Err(e) => {
                return Err(RunError::setting(
                    source,
                    format!("{} is not valid PEM: {e}", path.display()),
                ))
            }
        }
    }
    if certs == 0 {
        return Err(RunError::setting(
            source,
            format!(
                "{} holds no PEM certificate (-----BEGIN CERTIFICATE-----)",
                path.display()
            ),
        ));
    }
    Ok(pem)
}

/// Reads a PEM file that must hold a private key.
pub fn load_private_key(source: &str, path: &Path) -> Result<Vec<u8>, RunError> {
    let pem = read(source, path)?;
    let has_key = parse_pem(&pem).any(|item| matches!(item, Ok(PemItem::PrivateKey(_))));
    if !has_key {
        return Err(RunError::setting(
            source,
            format!("{} holds no PEM private key", path.display()),
        ));
    }
    Ok(pem)
}

impl TlsSettings {
    /// The ureq (HTTP/protobuf) form.
    pub fn ureq_config(&self) -> Result<ureq::tls::TlsConfig, RunError> {
        let bad = |what: &str, e: ureq::Error| RunError::setting("tls", format!("{what}: {e}"));
        let mut builder = ureq::tls::TlsConfig::builder();
        if let Some(ca) = &self.ca_pem {
            let mut roots = Vec::new();
            for item in parse_pem(ca) {
                if let PemItem::Certificate(c) = item.map_err(|e| bad("CA certificate", e))? {
                    roots.push(c);
                }
            }
            builder = builder.root_certs(ureq::tls::RootCerts::new_with_certs(&roots));
        }
        if let Some((cert, key)) = &self.client {
            let mut chain = Vec::new();
            for item in parse_pem(cert) {
                if let PemItem::Certificate(c) = item.map_err(|e| bad("client certificate", e))? {
                    chain.push(c);
                }
            }
            let key = ureq::tls::PrivateKey::from_pem(key).map_err(|e| bad("client key", e))?;
            builder = builder.client_cert(Some(ureq::tls::ClientCert::new_with_certs(&chain, key)));
        }
        Ok(builder.build())
    }

    /// The tonic (gRPC) form. gRPC is HTTP/2 only, so a TLS terminator that does not
    /// negotiate ALPN is still spoken to in HTTP/2.
    pub fn tonic_config(&self) -> tonic::transport::ClientTlsConfig {
        let mut config = tonic::transport::ClientTlsConfig::new().assume_http2(true);
        config = match &self.ca_pem {
            Some(ca) => config.ca_certificate(tonic::transport::Certificate::from_pem(ca)),
            None => config.with_webpki_roots(),
        };
        if let Some((cert, key)) = &self.client {
            config = config.identity(tonic::transport::Identity::from_pem(cert, key));
        }
        config
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_or_empty_pem_names_the_setting_and_the_file() {
        let dir = std::env::temp_dir().join(format!("gilscope-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("dir");
        let err = load_certificates("OTEL_EXPORTER_OTLP_CERTIFICATE", &dir.join("nope.pem"))
            .expect_err("missing");
        let text = err.to_string();
        assert!(
            text.starts_with("OTEL_EXPORTER_OTLP_CERTIFICATE: cannot read"),
            "{text}"
        );
        assert!(text.contains("nope.pem"), "{text}");
        let empty = dir.join("empty.pem");
        std::fs::write(&empty, "hello\n").expect("write");
        let err = load_certificates("export.certificate", &empty).expect_err("empty");
        assert!(err.to_string().contains("no PEM certificate"), "{err}");
        let err = load_private_key("export.client_key", &empty).expect_err("no key");
        assert!(err.to_string().contains("no PEM private key"), "{err}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
