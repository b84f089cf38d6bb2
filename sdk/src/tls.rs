//! TLS for the client: its trust in the relay (a CA file, or the SHA-256 fingerprint of the
//! relay's certificate pinned), TLS 1.3 only, ALPN `remote-help/1`, ring as the provider.
//! There is deliberately no way to turn verification off.
//!
//! Direct (peer-to-peer) connections use mutual TLS with both certificates pinned: each
//! peer's fingerprint reached the other through the relay, so neither end accepts anyone
//! else (ALPN `remote-help-direct/1`). Each peer makes a throwaway [`ServerIdentity`] for it.
//!
//! The relay's own server configuration (its certificate kept in the state folder, the
//! browsers' short-lived certificate) lives in the relay crate, which builds on these types.

use std::fmt;
use std::path::Path;
use std::sync::Arc;

use remote_help_proto::ALPN;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::CryptoProvider;
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::{DigitallySignedStruct, DistinguishedName, SignatureScheme};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};

/// Why TLS could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// A PEM file could not be read or holds nothing usable.
    #[error("{path}: {reason}")]
    Pem {
        /// The file.
        path: String,
        /// Why.
        reason: String,
    },
    /// Making the self-signed certificate failed.
    #[error("cannot make a self-signed certificate: {0}")]
    SelfSigned(String),
    /// rustls refused the configuration.
    #[error("TLS configuration refused: {0}")]
    Rustls(#[from] rustls::Error),
    /// quinn refused the rustls configuration.
    #[error("QUIC TLS configuration refused: {0}")]
    Quic(String),
}

/// The SHA-256 fingerprint of a certificate (of its DER bytes).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Fingerprint(pub [u8; 32]);

impl Fingerprint {
    /// The fingerprint of `cert`.
    pub fn of(cert: &CertificateDer<'_>) -> Fingerprint {
        let digest = ring::digest::digest(&ring::digest::SHA256, cert.as_ref());
        let mut bytes = [0u8; 32];
        bytes.copy_from_slice(digest.as_ref());
        Fingerprint(bytes)
    }

    /// Reads 64 hex digits, with or without `:` separators and an optional `sha256:` prefix.
    pub fn parse(text: &str) -> Option<Fingerprint> {
        let text = text.trim();
        let text = text
            .strip_prefix("sha256:")
            .or_else(|| text.strip_prefix("SHA256:"))
            .unwrap_or(text);
        let hex: String = text.chars().filter(|c| *c != ':').collect();
        if hex.len() != 64 {
            return None;
        }
        let mut bytes = [0u8; 32];
        for (i, byte) in bytes.iter_mut().enumerate() {
            *byte = u8::from_str_radix(hex.get(2 * i..2 * i + 2)?, 16).ok()?;
        }
        Some(Fingerprint(bytes))
    }
}

impl fmt::Display for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for b in self.0 {
            write!(f, "{b:02x}")?;
        }
        Ok(())
    }
}

impl fmt::Debug for Fingerprint {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Fingerprint({self})")
    }
}

/// A certificate chain and its private key: the relay's (which the relay crate serves), or
/// a peer's throwaway one for a direct path.
#[derive(Debug)]
pub struct ServerIdentity {
    /// Leaf first.
    pub chain: Vec<CertificateDer<'static>>,
    /// The leaf's private key.
    pub key: PrivateKeyDer<'static>,
}

impl ServerIdentity {
    /// Loads a PEM certificate chain and key.
    pub fn from_pem_files(cert: &Path, key: &Path) -> Result<ServerIdentity, TlsError> {
        let pem_err = |path: &Path, reason: String| TlsError::Pem {
            path: path.display().to_string(),
            reason,
        };
        let chain = CertificateDer::pem_file_iter(cert)
            .map_err(|e| pem_err(cert, e.to_string()))?
            .collect::<Result<Vec<_>, _>>()
            .map_err(|e| pem_err(cert, e.to_string()))?;
        if chain.is_empty() {
            return Err(pem_err(cert, "no certificate in file".into()));
        }
        let key = PrivateKeyDer::from_pem_file(key).map_err(|e| pem_err(key, e.to_string()))?;
        Ok(ServerIdentity { chain, key })
    }

    /// A fresh self-signed certificate for `names` (P-256 key).
    pub fn self_signed(names: Vec<String>) -> Result<ServerIdentity, TlsError> {
        let certified = rcgen::generate_simple_self_signed(names)
            .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
        let key = PrivateKeyDer::try_from(certified.signing_key.serialize_der())
            .map_err(|e| TlsError::SelfSigned(e.to_string()))?;
        Ok(ServerIdentity {
            chain: vec![certified.cert.der().clone()],
            key,
        })
    }

    /// The leaf certificate's fingerprint, which clients may pin.
    pub fn fingerprint(&self) -> Fingerprint {
        // Invariant: constructors refuse empty chains.
        self.chain
            .first()
            .map(Fingerprint::of)
            .unwrap_or(Fingerprint([0; 32]))
    }
}

/// ALPN of direct peer-to-peer connections.
pub const ALPN_DIRECT: &[u8] = b"remote-help-direct/1";

impl ServerIdentity {
    /// The direct listener's server config: presents this certificate and requires the
    /// dialling peer's, which must be exactly `peer`.
    pub fn direct_server_config(
        &self,
        peer: Fingerprint,
    ) -> Result<quinn::crypto::rustls::QuicServerConfig, TlsError> {
        let mut tls = rustls::ServerConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .with_client_cert_verifier(Arc::new(PinnedCertVerifier {
                pin: peer,
                provider: provider(),
            }))
            .with_single_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN_DIRECT.to_vec()];
        tls.max_early_data_size = 0;
        quinn::crypto::rustls::QuicServerConfig::try_from(tls)
            .map_err(|e| TlsError::Quic(e.to_string()))
    }

    /// The direct dialler's client config: presents this certificate and accepts exactly
    /// the listening peer's, `peer`.
    pub fn direct_client_config(
        &self,
        peer: Fingerprint,
    ) -> Result<quinn::crypto::rustls::QuicClientConfig, TlsError> {
        let mut tls = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(PinnedCertVerifier {
                pin: peer,
                provider: provider(),
            }))
            .with_client_auth_cert(self.chain.clone(), self.key.clone_key())?;
        tls.alpn_protocols = vec![ALPN_DIRECT.to_vec()];
        quinn::crypto::rustls::QuicClientConfig::try_from(tls)
            .map_err(|e| TlsError::Quic(e.to_string()))
    }
}

/// How a client decides it is talking to the genuine relay.
#[derive(Clone, Debug)]
pub enum RelayTrust {
    /// Certificates signed by one of these CAs, for the relay's server name.
    CaCerts(Vec<CertificateDer<'static>>),
    /// Exactly the certificate with this SHA-256 fingerprint.
    Pin(Fingerprint),
}

impl RelayTrust {
    /// Trust the CAs in a PEM file.
    pub fn ca_file(path: &Path) -> Result<RelayTrust, TlsError> {
        let certs = CertificateDer::pem_file_iter(path)
            .and_then(|iter| iter.collect::<Result<Vec<_>, _>>())
            .map_err(|e| TlsError::Pem {
                path: path.display().to_string(),
                reason: e.to_string(),
            })?;
        if certs.is_empty() {
            return Err(TlsError::Pem {
                path: path.display().to_string(),
                reason: "no certificate in file".into(),
            });
        }
        Ok(RelayTrust::CaCerts(certs))
    }

    /// The rustls client config for this trust: TLS 1.3 only, our ALPN.
    pub fn rustls_client_config(&self) -> Result<rustls::ClientConfig, TlsError> {
        let builder = rustls::ClientConfig::builder_with_provider(provider())
            .with_protocol_versions(&[&rustls::version::TLS13])?;
        let mut tls = match self {
            RelayTrust::CaCerts(certs) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in certs {
                    roots.add(cert.clone())?;
                }
                builder.with_root_certificates(roots).with_no_client_auth()
            }
            RelayTrust::Pin(pin) => builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedCertVerifier {
                    pin: *pin,
                    provider: provider(),
                }))
                .with_no_client_auth(),
        };
        tls.alpn_protocols = vec![ALPN.to_vec()];
        Ok(tls)
    }

    /// The quinn client crypto config for this trust.
    pub fn quic_client_config(&self) -> Result<quinn::crypto::rustls::QuicClientConfig, TlsError> {
        quinn::crypto::rustls::QuicClientConfig::try_from(self.rustls_client_config()?)
            .map_err(|e| TlsError::Quic(e.to_string()))
    }
}

/// The crypto provider both ends use.
pub fn provider() -> Arc<CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// Accepts exactly one certificate, by fingerprint, and still checks the handshake
/// signature so the peer must hold that certificate's private key. The same check serves a
/// client pinning the relay, a direct dialler pinning the listener (server certificates) and
/// a direct listener pinning the dialler (client certificates).
#[derive(Debug)]
pub struct PinnedCertVerifier {
    pin: Fingerprint,
    provider: Arc<CryptoProvider>,
}

impl PinnedCertVerifier {
    /// A verifier accepting exactly the certificate whose fingerprint is `pin`.
    pub fn new(pin: Fingerprint) -> PinnedCertVerifier {
        PinnedCertVerifier {
            pin,
            provider: provider(),
        }
    }

    /// The pin names this exact certificate, which is stronger than a name or chain check.
    fn check(&self, end_entity: &CertificateDer<'_>) -> Result<(), rustls::Error> {
        if Fingerprint::of(end_entity) == self.pin {
            Ok(())
        } else {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::ApplicationVerificationFailure,
            ))
        }
    }

    fn tls13(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn schemes(&self) -> Vec<SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// TLS 1.2 is never negotiated (every config here allows TLS 1.3 only).
fn no_tls12() -> Result<HandshakeSignatureValid, rustls::Error> {
    Err(rustls::Error::PeerIncompatible(
        rustls::PeerIncompatible::Tls12NotOffered,
    ))
}

impl ServerCertVerifier for PinnedCertVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

impl ClientCertVerifier for PinnedCertVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        &[]
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.check(end_entity)
            .map(|()| ClientCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        no_tls12()
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.tls13(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pin_accepts_its_certificate_only_as_server_and_as_client() {
        let pinned = ServerIdentity::self_signed(vec!["remote-help-direct".into()]).unwrap();
        let other = ServerIdentity::self_signed(vec!["remote-help-direct".into()]).unwrap();
        let verifier = PinnedCertVerifier {
            pin: pinned.fingerprint(),
            provider: provider(),
        };
        let name = ServerName::try_from("remote-help-direct").unwrap();
        let now = UnixTime::now();
        assert!(
            verifier
                .verify_server_cert(&pinned.chain[0], &[], &name, &[], now)
                .is_ok()
        );
        assert!(
            verifier
                .verify_server_cert(&other.chain[0], &[], &name, &[], now)
                .is_err()
        );
        assert!(
            verifier
                .verify_client_cert(&pinned.chain[0], &[], now)
                .is_ok()
        );
        assert!(
            verifier
                .verify_client_cert(&other.chain[0], &[], now)
                .is_err()
        );
        // A listener always requires the dialler's certificate.
        assert!(verifier.client_auth_mandatory());
    }

    #[test]
    fn fingerprints_parse_in_every_common_spelling() {
        let id = ServerIdentity::self_signed(vec!["localhost".into()]).unwrap();
        let fp = id.fingerprint();
        let plain = fp.to_string();
        let colons: String = plain
            .as_bytes()
            .chunks(2)
            .map(|c| std::str::from_utf8(c).unwrap())
            .collect::<Vec<_>>()
            .join(":");
        assert_eq!(Fingerprint::parse(&plain), Some(fp));
        assert_eq!(Fingerprint::parse(&colons.to_uppercase()), Some(fp));
        assert_eq!(Fingerprint::parse(&format!("sha256:{plain}")), Some(fp));
        assert_eq!(Fingerprint::parse("abc"), None);
        assert_eq!(Fingerprint::parse(&"zz".repeat(32)), None);
    }

    #[test]
    fn client_configs_build() {
        let id = ServerIdentity::self_signed(vec!["localhost".into()]).unwrap();
        id.direct_server_config(id.fingerprint()).unwrap();
        id.direct_client_config(id.fingerprint()).unwrap();
        RelayTrust::Pin(id.fingerprint())
            .quic_client_config()
            .unwrap();
        RelayTrust::CaCerts(id.chain.clone())
            .quic_client_config()
            .unwrap();
    }
}
