//! Verifying tenant-issued tokens and turning them into a [`Principal`].
//!
//! A token is a JWT signed by its tenant's identity service. Verification:
//!
//! 1. read the (unverified) `tid` claim to find the tenant, else `TENANT_UNKNOWN`;
//! 2. pick the tenant's key by the header's `kid` (several keys may be configured at once
//!    for rotation);
//! 3. the algorithm is the **key's** (EdDSA for Ed25519, ES256 for P-256, RS256 for RSA),
//!    and a header naming any other algorithm is refused, so `none`, HMAC and
//!    key-confusion tricks never reach signature checking;
//! 4. check the signature, `iss` (the tenant's issuer) and `aud` (this relay's audience);
//! 5. check `exp` and `nbf` against the caller's `now` with the configured leeway.
//!
//! The `tid` claim therefore always names the tenant whose key verified the token.
//! Time is passed in, so this module reads no clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use remote_help_proto::ErrorCode;
use serde::Deserialize;

use crate::core::TenantId;

/// One verification key of a tenant, with the only algorithm it may verify.
#[derive(Clone)]
pub struct TenantKey {
    /// The key id (`kid`) tokens name.
    pub kid: Option<String>,
    /// The algorithm this key verifies, derived from the key type.
    pub algorithm: Algorithm,
    key: DecodingKey,
}

impl std::fmt::Debug for TenantKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TenantKey")
            .field("kid", &self.kid)
            .field("algorithm", &self.algorithm)
            .finish_non_exhaustive()
    }
}

/// Why a JWK cannot be used as a tenant verification key.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    /// Symmetric keys would let anyone holding the key mint tokens; refused.
    #[error("symmetric (HMAC) keys are refused; use Ed25519, P-256 or RSA public keys")]
    Symmetric,
    /// The key type or curve is not one of Ed25519, P-256 and RSA.
    #[error("unsupported key type or curve (supported: OKP/Ed25519, EC/P-256, RSA)")]
    Unsupported,
    /// The JWK's `alg` contradicts its key type.
    #[error(
        "the key's \"alg\" {declared:?} does not match its key type, which implies {implied:?}"
    )]
    AlgorithmMismatch {
        /// What the JWK says.
        declared: String,
        /// What the key type implies.
        implied: Algorithm,
    },
    /// The key material is malformed.
    #[error("malformed key: {0}")]
    Malformed(String),
    /// Two keys of one tenant share a `kid`.
    #[error("two keys share the kid {0:?}")]
    DuplicateKid(String),
    /// Several keys but one of them has no `kid`, so tokens cannot select it.
    #[error("every key needs a \"kid\" when a tenant has more than one key")]
    MissingKid,
    /// The set is empty.
    #[error("the key set has no keys")]
    Empty,
}

impl TenantKey {
    /// Reads one JWK, deriving its algorithm from its key type.
    pub fn from_jwk(jwk: &Jwk) -> Result<TenantKey, KeyError> {
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::OctetKeyPair(okp) if okp.curve == EllipticCurve::Ed25519 => {
                Algorithm::EdDSA
            }
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::OctetKey(_) => return Err(KeyError::Symmetric),
            _ => return Err(KeyError::Unsupported),
        };
        if let Some(declared) = jwk.common.key_algorithm {
            let matches = matches!(
                (declared, algorithm),
                (KeyAlgorithm::EdDSA, Algorithm::EdDSA)
                    | (KeyAlgorithm::ES256, Algorithm::ES256)
                    | (KeyAlgorithm::RS256, Algorithm::RS256)
            );
            if !matches {
                return Err(KeyError::AlgorithmMismatch {
                    declared: format!("{declared:?}"),
                    implied: algorithm,
                });
            }
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| KeyError::Malformed(e.to_string()))?;
        Ok(TenantKey {
            kid: jwk.common.key_id.clone(),
            algorithm,
            key,
        })
    }
}

/// A tenant's verification keys, selected by `kid`.
#[derive(Debug, Clone)]
pub struct TenantKeys {
    keys: Vec<TenantKey>,
}

impl TenantKeys {
    /// Reads a JWK Set (`{"keys": [...]}`), refusing keys that cannot be used safely.
    pub fn from_jwks(set: &JwkSet) -> Result<TenantKeys, (usize, KeyError)> {
        if set.keys.is_empty() {
            return Err((0, KeyError::Empty));
        }
        let mut keys: Vec<TenantKey> = Vec::with_capacity(set.keys.len());
        for (index, jwk) in set.keys.iter().enumerate() {
            let key = TenantKey::from_jwk(jwk).map_err(|e| (index, e))?;
            if set.keys.len() > 1 && key.kid.is_none() {
                return Err((index, KeyError::MissingKid));
            }
            if let Some(kid) = &key.kid
                && keys.iter().any(|k| k.kid.as_deref() == Some(kid.as_str()))
            {
                return Err((index, KeyError::DuplicateKid(kid.clone())));
            }
            keys.push(key);
        }
        Ok(TenantKeys { keys })
    }

    /// The key a token header selects: by `kid`, or the only key when there is one and
    /// the token names none.
    fn select(&self, kid: Option<&str>) -> Option<&TenantKey> {
        match kid {
            Some(kid) => self.keys.iter().find(|k| k.kid.as_deref() == Some(kid)),
            None if self.keys.len() == 1 => self.keys.first(),
            None => None,
        }
    }

    /// Number of keys.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether there are no keys (never true for a loaded set).
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

/// What the verifier needs to know about one tenant.
#[derive(Debug, Clone)]
pub struct TenantTrust {
    /// The tenant id tokens carry in `tid`.
    pub id: TenantId,
    /// The `iss` its tokens must carry.
    pub issuer: String,
    /// Its verification keys.
    pub keys: TenantKeys,
}

/// Whether a token speaks for a signed-in user or for a device agent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PrincipalKind {
    /// A signed-in user (the default).
    User,
    /// A device agent with no signed-in user.
    Device,
}

/// Profile claims a party shows the other.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ProfileClaims {
    /// `given_name`.
    pub given_name: String,
    /// `family_name`.
    pub family_name: String,
    /// `job_title`.
    pub job_title: String,
    /// `company_name`.
    pub company_name: String,
    /// `picture` (a URL).
    pub picture: String,
    /// `domain`.
    pub domain: String,
    /// `domain_verified`.
    pub domain_verified: bool,
}

/// Device claims, when the token carries any.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceClaims {
    /// `device_id`.
    pub device_id: String,
    /// `device_name`.
    pub device_name: String,
    /// `platform`.
    pub platform: String,
    /// `os_version`.
    pub os_version: String,
    /// `manufacturer`.
    pub manufacturer: String,
    /// `enrolled` (missing means not enrolled).
    pub enrolled: bool,
    /// `compliant` (missing means not known to be compliant).
    pub compliant: bool,
    /// `device_groups`.
    pub groups: Vec<String>,
}

/// A verified identity: everything the relay knows about a party, from its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    /// The tenant whose key verified the token.
    pub tenant: TenantId,
    /// `sub`: user or device object id.
    pub subject: String,
    /// User or device agent.
    pub kind: PrincipalKind,
    /// Profile shown to the other party.
    pub profile: ProfileClaims,
    /// `groups`.
    pub groups: Vec<String>,
    /// `licenses`.
    pub licenses: Vec<String>,
    /// Device claims, if any device claim was present.
    pub device: Option<DeviceClaims>,
    /// `jti`, if present.
    pub token_id: Option<String>,
    /// `exp`, Unix seconds.
    pub expires_at: u64,
}

/// Why a token was refused. Each maps to one wire [`ErrorCode`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// Not three base64url segments of JSON.
    #[error("token is malformed: {0}")]
    Malformed(String),
    /// `tid` missing.
    #[error("token has no tid claim")]
    MissingTenant,
    /// `tid` names no configured tenant.
    #[error("tenant {0:?} is not configured on this relay")]
    UnknownTenant(String),
    /// No key with the token's `kid`.
    #[error("no key of the tenant has kid {0:?}")]
    UnknownKey(Option<String>),
    /// The header's algorithm is not the key's (covers `none`, HMAC and confusion).
    #[error("algorithm {header} is not allowed for this key (expects {expected:?})")]
    AlgorithmRefused {
        /// What the header said.
        header: String,
        /// What the key allows.
        expected: Algorithm,
    },
    /// The signature does not verify.
    #[error("signature does not verify")]
    BadSignature,
    /// `iss` is not the tenant's issuer.
    #[error("wrong issuer")]
    WrongIssuer,
    /// `aud` does not include this relay's audience.
    #[error("wrong audience")]
    WrongAudience,
    /// A required claim is missing or has the wrong type.
    #[error("claim problem: {0}")]
    BadClaims(String),
    /// `exp` has passed.
    #[error("token expired")]
    Expired,
    /// `nbf` is in the future.
    #[error("token not yet valid")]
    NotYetValid,
}

impl AuthError {
    /// The wire code a client receives for this refusal.
    pub fn code(&self) -> ErrorCode {
        match self {
            AuthError::UnknownTenant(_) => ErrorCode::TenantUnknown,
            AuthError::Expired | AuthError::NotYetValid => ErrorCode::TokenExpired,
            _ => ErrorCode::TokenInvalid,
        }
    }

    /// A short stable label for metrics (`reason` label).
    pub fn reason(&self) -> &'static str {
        match self {
            AuthError::Malformed(_) => "malformed",
            AuthError::MissingTenant => "missing_tenant",
            AuthError::UnknownTenant(_) => "unknown_tenant",
            AuthError::UnknownKey(_) => "unknown_key",
            AuthError::AlgorithmRefused { .. } => "algorithm_refused",
            AuthError::BadSignature => "bad_signature",
            AuthError::WrongIssuer => "wrong_issuer",
            AuthError::WrongAudience => "wrong_audience",
            AuthError::BadClaims(_) => "bad_claims",
            AuthError::Expired => "expired",
            AuthError::NotYetValid => "not_yet_valid",
        }
    }
}

/// The claims contract (see `docs/tokens.md`).
#[derive(Debug, Deserialize)]
struct Claims {
    sub: String,
    /// Read as a string so that an array (which jsonwebtoken's issuer check accepts when
    /// it contains the expected value) is refused: RFC 7519 makes `iss` a single string,
    /// and so does docs/tokens.md. Found by the `token` fuzz target.
    iss: String,
    exp: u64,
    #[serde(default)]
    nbf: Option<u64>,
    #[serde(default)]
    jti: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    given_name: Option<String>,
    #[serde(default)]
    family_name: Option<String>,
    #[serde(default)]
    job_title: Option<String>,
    #[serde(default)]
    company_name: Option<String>,
    #[serde(default)]
    picture: Option<String>,
    #[serde(default)]
    domain: Option<String>,
    #[serde(default)]
    domain_verified: Option<bool>,
    #[serde(default)]
    groups: Vec<String>,
    #[serde(default)]
    licenses: Vec<String>,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    device_name: Option<String>,
    #[serde(default)]
    device_groups: Vec<String>,
    #[serde(default)]
    platform: Option<String>,
    #[serde(default)]
    os_version: Option<String>,
    #[serde(default)]
    manufacturer: Option<String>,
    #[serde(default)]
    enrolled: Option<bool>,
    #[serde(default)]
    compliant: Option<bool>,
}

#[derive(Deserialize)]
struct TenantOnly {
    #[serde(default)]
    tid: Option<serde_json::Value>,
}

/// Verifies tokens of every configured tenant for one relay audience.
#[derive(Debug, Clone)]
pub struct Verifier {
    audience: String,
    leeway: Duration,
    tenants: HashMap<TenantId, Arc<TenantTrust>>,
}

/// Longest token accepted, in bytes; far above any real token, far below the frame limit.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

impl Verifier {
    /// A verifier for `audience` trusting `tenants`.
    pub fn new(audience: String, leeway: Duration, tenants: Vec<TenantTrust>) -> Verifier {
        Verifier {
            audience,
            leeway,
            tenants: tenants
                .into_iter()
                .map(|t| (t.id.clone(), Arc::new(t)))
                .collect(),
        }
    }

    /// Verifies `token` at `now_unix` seconds.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("token too long".into()));
        }
        let tenant = self.tenant_of(token)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Malformed(format!("header: {e}")))?;
        let key = tenant
            .keys
            .select(header.kid.as_deref())
            .ok_or_else(|| AuthError::UnknownKey(header.kid.clone()))?;
        if header.alg != key.algorithm {
            return Err(AuthError::AlgorithmRefused {
                header: format!("{:?}", header.alg),
                expected: key.algorithm,
            });
        }

        let mut validation = Validation::new(key.algorithm);
        // Time is checked below against the caller's `now`, not the system clock.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        validation.set_required_spec_claims(&["exp", "iss", "aud", "sub"]);
        validation.set_issuer(&[&tenant.issuer]);
        validation.set_audience(&[&self.audience]);
        let data = jsonwebtoken::decode::<Claims>(token, &key.key, &validation).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind;
            match e.kind() {
                ErrorKind::InvalidSignature => AuthError::BadSignature,
                ErrorKind::InvalidIssuer => AuthError::WrongIssuer,
                ErrorKind::InvalidAudience => AuthError::WrongAudience,
                ErrorKind::MissingRequiredClaim(c) => {
                    AuthError::BadClaims(format!("missing claim {c}"))
                }
                ErrorKind::InvalidAlgorithm => AuthError::AlgorithmRefused {
                    header: format!("{:?}", header.alg),
                    expected: key.algorithm,
                },
                ErrorKind::Json(err) => AuthError::BadClaims(err.to_string()),
                other => AuthError::Malformed(format!("{other:?}")),
            }
        })?;
        let claims = data.claims;
        if claims.iss != tenant.issuer {
            return Err(AuthError::WrongIssuer);
        }

        let leeway = self.leeway.as_secs();
        if claims.exp.saturating_add(leeway) < now_unix {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = claims.nbf
            && nbf > now_unix.saturating_add(leeway)
        {
            return Err(AuthError::NotYetValid);
        }
        into_principal(tenant.id.clone(), claims)
    }

    fn tenant_of(&self, token: &str) -> Result<&TenantTrust, AuthError> {
        let mut parts = token.split('.');
        let (Some(_), Some(payload), Some(_), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return Err(AuthError::Malformed(
                "a JWT has three dot-separated parts".into(),
            ));
        };
        let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload.trim_end_matches('='))
            .map_err(|e| AuthError::Malformed(format!("payload is not base64url: {e}")))?;
        let claims: TenantOnly = serde_json::from_slice(&bytes)
            .map_err(|e| AuthError::Malformed(format!("payload is not a JSON object: {e}")))?;
        let tid = match claims.tid {
            Some(serde_json::Value::String(tid)) => tid,
            Some(_) => return Err(AuthError::BadClaims("tid must be a string".into())),
            None => return Err(AuthError::MissingTenant),
        };
        self.tenants
            .get(&TenantId::new(&tid))
            .map(|t| t.as_ref())
            .ok_or(AuthError::UnknownTenant(tid))
    }
}

fn into_principal(tenant: TenantId, c: Claims) -> Result<Principal, AuthError> {
    let kind = match c.kind.as_deref() {
        None | Some("user") => PrincipalKind::User,
        Some("device") => PrincipalKind::Device,
        Some(other) => {
            return Err(AuthError::BadClaims(format!(
                "kind must be \"user\" or \"device\", not {other:?}"
            )));
        }
    };
    if c.sub.is_empty() {
        return Err(AuthError::BadClaims("sub is empty".into()));
    }
    let has_device = c.device_id.is_some()
        || c.device_name.is_some()
        || c.platform.is_some()
        || kind == PrincipalKind::Device;
    let device = has_device.then(|| DeviceClaims {
        device_id: c.device_id.unwrap_or_default(),
        device_name: c.device_name.unwrap_or_default(),
        platform: c.platform.unwrap_or_default(),
        os_version: c.os_version.unwrap_or_default(),
        manufacturer: c.manufacturer.unwrap_or_default(),
        enrolled: c.enrolled.unwrap_or(false),
        compliant: c.compliant.unwrap_or(false),
        groups: c.device_groups,
    });
    Ok(Principal {
        tenant,
        subject: c.sub,
        kind,
        profile: ProfileClaims {
            given_name: c.given_name.unwrap_or_default(),
            family_name: c.family_name.unwrap_or_default(),
            job_title: c.job_title.unwrap_or_default(),
            company_name: c.company_name.unwrap_or_default(),
            picture: c.picture.unwrap_or_default(),
            domain: c.domain.unwrap_or_default(),
            domain_verified: c.domain_verified.unwrap_or(false),
        },
        groups: c.groups,
        licenses: c.licenses,
        device,
        token_id: c.jti,
        expires_at: c.exp,
    })
}

impl Principal {
    /// The profile as the other party receives it on the wire.
    pub fn to_wire(&self) -> remote_help_proto::v1::Profile {
        use remote_help_proto::v1;
        v1::Profile {
            kind: match self.kind {
                PrincipalKind::User => v1::PrincipalKind::User,
                PrincipalKind::Device => v1::PrincipalKind::Device,
            } as i32,
            tenant_id: self.tenant.to_string(),
            subject: self.subject.clone(),
            given_name: self.profile.given_name.clone(),
            family_name: self.profile.family_name.clone(),
            job_title: self.profile.job_title.clone(),
            company_name: self.profile.company_name.clone(),
            picture: self.profile.picture.clone(),
            domain: self.profile.domain.clone(),
            domain_verified: self.profile.domain_verified,
            device: self.device.as_ref().map(|d| v1::Device {
                device_id: d.device_id.clone(),
                device_name: d.device_name.clone(),
                platform: d.platform.clone(),
                os_version: d.os_version.clone(),
                manufacturer: d.manufacturer.clone(),
                enrolled: d.enrolled,
                compliant: d.compliant,
            }),
        }
    }

    /// A display name for logs: given and family name, else the subject.
    pub fn display_name(&self) -> String {
        let name = format!("{} {}", self.profile.given_name, self.profile.family_name);
        let name = name.trim();
        if name.is_empty() {
            self.subject.clone()
        } else {
            name.to_string()
        }
    }
}
