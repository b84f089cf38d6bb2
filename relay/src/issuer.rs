//! Minting tenant tokens: the dev tenant's identity service, and the test and load-test
//! helper that issues real signed JWTs. A production tenant's identity service plays
//! this part in real deployments; the relay itself only ever verifies.

use std::path::Path;

use jsonwebtoken::jwk::{Jwk, JwkSet};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde_json::{Map, Value};

/// Why a signing key could not be made or used.
#[derive(Debug, thiserror::Error)]
pub enum IssuerError {
    /// Key generation or parsing failed.
    #[error("key error: {0}")]
    Key(String),
    /// Signing failed.
    #[error("signing failed: {0}")]
    Sign(#[from] jsonwebtoken::errors::Error),
    /// Reading or writing key files failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        source: std::io::Error,
    },
}

/// A private signing key with its key id and algorithm.
pub struct TokenSigner {
    kid: String,
    algorithm: Algorithm,
    key: EncodingKey,
    pkcs8_pem: String,
}

impl std::fmt::Debug for TokenSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TokenSigner")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

impl TokenSigner {
    /// A fresh Ed25519 key (seed from the OS RNG, stored as PKCS#8 v1).
    pub fn generate_ed25519(kid: &str) -> Result<TokenSigner, IssuerError> {
        use ring::rand::SecureRandom as _;
        // PKCS#8 v1 wrapping of a 32-byte Ed25519 seed (RFC 8410, section 7). The RustCrypto
        // backend of jsonwebtoken reads v1 only; ring's generator writes v2.
        const PREFIX: [u8; 16] = [
            0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22,
            0x04, 0x20,
        ];
        let mut seed = [0u8; 32];
        ring::rand::SystemRandom::new()
            .fill(&mut seed)
            .map_err(|_| IssuerError::Key("the OS random generator failed".into()))?;
        let mut der = PREFIX.to_vec();
        der.extend_from_slice(&seed);
        Self::from_pem(kid, Algorithm::EdDSA, &pem_encode("PRIVATE KEY", &der))
    }

    /// A fresh P-256 key (ES256).
    pub fn generate_es256(kid: &str) -> Result<TokenSigner, IssuerError> {
        Self::generate(kid, &rcgen::PKCS_ECDSA_P256_SHA256, Algorithm::ES256)
    }

    fn generate(
        kid: &str,
        alg: &'static rcgen::SignatureAlgorithm,
        algorithm: Algorithm,
    ) -> Result<TokenSigner, IssuerError> {
        let pair =
            rcgen::KeyPair::generate_for(alg).map_err(|e| IssuerError::Key(e.to_string()))?;
        Self::from_pem(kid, algorithm, &pair.serialize_pem())
    }

    /// A key from a PKCS#8 PEM (RSA may also be PKCS#1) for `algorithm`.
    pub fn from_pem(
        kid: &str,
        algorithm: Algorithm,
        pem: &str,
    ) -> Result<TokenSigner, IssuerError> {
        let key = match algorithm {
            Algorithm::EdDSA => EncodingKey::from_ed_pem(pem.as_bytes()),
            Algorithm::ES256 => EncodingKey::from_ec_pem(pem.as_bytes()),
            Algorithm::RS256 => EncodingKey::from_rsa_pem(pem.as_bytes()),
            other => {
                return Err(IssuerError::Key(format!(
                    "{other:?} is not a supported algorithm"
                )));
            }
        }
        .map_err(|e| IssuerError::Key(e.to_string()))?;
        Ok(TokenSigner {
            kid: kid.to_string(),
            algorithm,
            key,
            pkcs8_pem: pem.to_string(),
        })
    }

    /// The key id tokens carry in their header.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The algorithm this key signs with.
    pub fn algorithm(&self) -> Algorithm {
        self.algorithm
    }

    /// The private key as PEM, for saving.
    pub fn private_pem(&self) -> &str {
        &self.pkcs8_pem
    }

    /// The public half as a JWK, with `kid`, `alg` and `use` set.
    pub fn public_jwk(&self) -> Result<Jwk, IssuerError> {
        let mut jwk = Jwk::from_encoding_key(&self.key, self.algorithm)
            .map_err(|e| IssuerError::Key(e.to_string()))?;
        jwk.common.key_id = Some(self.kid.clone());
        jwk.common.public_key_use = Some(jsonwebtoken::jwk::PublicKeyUse::Signature);
        Ok(jwk)
    }

    /// Signs `claims` with this key's algorithm and kid.
    pub fn sign(&self, claims: &Value) -> Result<String, IssuerError> {
        let mut header = Header::new(self.algorithm);
        header.kid = Some(self.kid.clone());
        Ok(jsonwebtoken::encode(&header, claims, &self.key)?)
    }
}

/// PEM text for `der` under `label`, in 64-column lines.
pub(crate) fn pem_encode(label: &str, der: &[u8]) -> String {
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode(der);
    let mut pem = format!("-----BEGIN {label}-----\n");
    for line in body.as_bytes().chunks(64) {
        pem.push_str(&String::from_utf8_lossy(line));
        pem.push('\n');
    }
    pem.push_str(&format!("-----END {label}-----\n"));
    pem
}

/// A JWK Set holding the public halves of `signers`.
pub fn jwks_of(signers: &[&TokenSigner]) -> Result<JwkSet, IssuerError> {
    Ok(JwkSet {
        keys: signers
            .iter()
            .map(|s| s.public_jwk())
            .collect::<Result<_, _>>()?,
    })
}

/// The claims of a token to mint; `extra` adds or overrides any claim.
#[derive(Debug, Clone)]
pub struct TokenSpec {
    /// `iss`.
    pub issuer: String,
    /// `aud`.
    pub audience: String,
    /// `tid`.
    pub tenant: String,
    /// `sub`.
    pub subject: String,
    /// `iat` and `nbf`, Unix seconds.
    pub issued_at: u64,
    /// `exp`, Unix seconds.
    pub expires_at: u64,
    /// Any further claims (profile, device, groups, licences, kind...).
    pub extra: Map<String, Value>,
}

impl TokenSpec {
    /// The full claim set.
    pub fn claims(&self) -> Value {
        let mut claims = Map::new();
        claims.insert("iss".into(), self.issuer.clone().into());
        claims.insert("aud".into(), self.audience.clone().into());
        claims.insert("tid".into(), self.tenant.clone().into());
        claims.insert("sub".into(), self.subject.clone().into());
        claims.insert("iat".into(), self.issued_at.into());
        claims.insert("nbf".into(), self.issued_at.into());
        claims.insert("exp".into(), self.expires_at.into());
        for (k, v) in &self.extra {
            claims.insert(k.clone(), v.clone());
        }
        Value::Object(claims)
    }
}

/// Writes `text` to `path` with owner-only permissions where the OS has them.
pub fn write_private_file(path: &Path, text: &str) -> Result<(), IssuerError> {
    let io = |source| IssuerError::Io {
        path: path.display().to_string(),
        source,
    };
    #[cfg(unix)]
    {
        use std::io::Write;
        use std::os::unix::fs::OpenOptionsExt;
        let mut file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(path)
            .map_err(io)?;
        file.write_all(text.as_bytes()).map_err(io)?;
        file.sync_all().map_err(io)
    }
    #[cfg(not(unix))]
    {
        std::fs::write(path, text).map_err(io)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_publish_a_jwk_with_their_kid_and_algorithm() {
        for signer in [
            TokenSigner::generate_ed25519("ed").unwrap(),
            TokenSigner::generate_es256("ec").unwrap(),
        ] {
            let jwk = signer.public_jwk().unwrap();
            assert_eq!(jwk.common.key_id.as_deref(), Some(signer.kid()));
            let key = crate::auth::TenantKey::from_jwk(&jwk).unwrap();
            assert_eq!(key.algorithm, signer.algorithm());
        }
    }
}
