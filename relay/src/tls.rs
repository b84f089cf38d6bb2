//! TLS for the relay: its identity (PEM files or a self-signed certificate kept in the state
//! folder), its QUIC server configuration, and the HTTPS client the relay uses to fetch
//! tenants' keys. TLS 1.3 only towards clients, ALPN `remote-help/1`, ring as the provider.
//!
//! The client-side pieces (trust in the relay, fingerprints, the pinned mutual TLS of direct
//! paths) live in the client SDK and are re-exported here, so `tls::Fingerprint` and
//! `tls::ServerIdentity` name the same types on both ends.
//!
//! Browsers (WebTransport) accept a self-signed certificate only if it is short-lived;
//! [`browser`] keeps one beside the long-lived development certificate and chooses per
//! handshake which one to present.

pub mod browser;

use std::path::Path;
use std::sync::Arc;

use remote_help_proto::ALPN;
use rustls_pki_types::CertificateDer;
use rustls_pki_types::pem::PemObject;

pub use remote_help_sdk::tls::{
    ALPN_DIRECT, Fingerprint, PinnedCertVerifier, RelayTrust, ServerIdentity, TlsError, provider,
};

/// What the relay adds to a [`ServerIdentity`]: a certificate that survives restarts, and
/// the server configuration it presents to clients and browsers. A trait because the type
/// lives in the client SDK; bring it into scope (`use remote_help_relay::tls::RelayIdentity`)
/// to call these as before.
pub trait RelayIdentity: Sized {
    /// The relay's own self-signed certificate, kept in `state_dir` so that its fingerprint
    /// (which clients pin) survives restarts: loaded if present, else made and saved (the key
    /// owner-only). If the folder cannot be written, an ephemeral one is used and said so.
    fn self_signed_in(state_dir: &Path, names: Vec<String>) -> Result<Self, TlsError>;

    /// The quinn server crypto config: TLS 1.3 only, our ALPN first, then `h3` for
    /// WebTransport clients (browsers) on the same port; this certificate for everyone.
    fn quic_server_config(&self) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError>;

    /// [`RelayIdentity::quic_server_config`], presenting `browser`'s served certificate to
    /// WebTransport clients when given ([`browser::RelayCertResolver`]); rotations apply to
    /// the next handshake.
    fn quic_server_config_with(
        &self,
        browser: Option<Arc<browser::BrowserCertificates>>,
    ) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError>;
}

impl RelayIdentity for ServerIdentity {
    fn self_signed_in(state_dir: &Path, names: Vec<String>) -> Result<ServerIdentity, TlsError> {
        let (cert, key) = (
            state_dir.join("relay-cert.pem"),
            state_dir.join("relay-key.pem"),
        );
        if cert.is_file() && key.is_file() {
            return ServerIdentity::from_pem_files(&cert, &key);
        }
        let identity = ServerIdentity::self_signed(names)?;
        let pem = |label, der: &[u8]| crate::issuer::pem_encode(label, der);
        let saved = std::fs::create_dir_all(state_dir)
            .and_then(|()| std::fs::write(&cert, pem("CERTIFICATE", identity.chain[0].as_ref())))
            .and_then(|()| {
                crate::issuer::write_private_file(
                    &key,
                    &pem("PRIVATE KEY", identity.key.secret_der()),
                )
                .map_err(std::io::Error::other)
            });
        if let Err(e) = saved {
            tracing::warn!(dir = %state_dir.display(), error = %e, "cannot save the self-signed certificate; it will change at the next start");
        }
        Ok(identity)
    }

    fn quic_server_config(&self) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
        self.quic_server_config_with(None)
    }

    fn quic_server_config_with(
        &self,
        browser: Option<Arc<browser::BrowserCertificates>>,
    ) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
        let provider = provider();
        let signing_key = provider
            .key_provider
            .load_private_key(self.key.clone_key())?;
        let native = rustls::sign::CertifiedKey::new(self.chain.clone(), signing_key);
        // What `with_single_cert` checks, kept now that the resolver is ours.
        match native.keys_match() {
            Ok(()) | Err(rustls::Error::InconsistentKeys(rustls::InconsistentKeys::Unknown)) => {}
            Err(e) => return Err(e.into()),
        }
        let resolver = browser::RelayCertResolver::new(Arc::new(native), browser);
        let mut tls = rustls::ServerConfig::builder_with_provider(provider)
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_no_client_auth()
            .with_cert_resolver(Arc::new(resolver));
        tls.alpn_protocols = vec![ALPN.to_vec(), crate::server::party::ALPN_H3.to_vec()];
        tls.max_early_data_size = 0;
        quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::Quic(e.to_string()))
    }
}

/// The CA certificates in a PEM file (a tenant's `ca_file`); the error is a sentence for
/// the config report.
pub fn read_ca_certificates(path: &Path) -> Result<Vec<CertificateDer<'static>>, String> {
    let certs = CertificateDer::pem_file_iter(path)
        .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("cannot read certificates from {}: {e}", path.display()))?;
    if certs.is_empty() {
        return Err(format!("{} holds no PEM certificate", path.display()));
    }
    Ok(certs)
}

/// The TLS client configuration for fetching a tenant's keys from its identity provider:
/// the system's roots (through `rustls-platform-verifier`, which on Linux reads the
/// distribution's CA bundle) plus `extra_roots`, TLS 1.2 or 1.3, the relay's crypto
/// provider. Providers are public web services; TLS 1.2 is still what some of them offer.
pub fn https_client_config(
    extra_roots: Vec<CertificateDer<'static>>,
) -> Result<rustls::ClientConfig, TlsError> {
    let verifier =
        rustls_platform_verifier::Verifier::new_with_extra_roots(extra_roots, provider())?;
    Ok(rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_no_client_auth())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_self_signed_certificate_is_kept_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let first = ServerIdentity::self_signed_in(dir.path(), vec!["localhost".into()]).unwrap();
        let second = ServerIdentity::self_signed_in(dir.path(), vec!["localhost".into()]).unwrap();
        assert_eq!(first.fingerprint(), second.fingerprint());
        second.quic_server_config().unwrap();
    }

    /// The client's side is the SDK's to test (`remote_help_sdk::tls`).
    #[test]
    fn the_server_config_builds() {
        let id = ServerIdentity::self_signed(vec!["localhost".into()]).unwrap();
        id.quic_server_config().unwrap();
    }
}
