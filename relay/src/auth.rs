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
//! 5. check `exp` and `nbf` against the caller's `now` with the configured leeway;
//! 6. read the identity claims through the tenant's [`ClaimMapping`].
//!
//! A tenant whose mapping selects by issuer (the Entra ID, Keycloak and Okta presets) is
//! found in step 1 by the token's `iss` instead of `tid`. Either way only the selected
//! tenant's keys can verify the token, so a verified token always speaks for the tenant
//! whose key signed it. Time is passed in, so this module reads no clock.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use base64::Engine as _;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, DecodingKey, Validation};
use remote_help_proto::ErrorCode;
use serde::Deserialize;
use serde_json::{Map, Value};

use crate::claim_map::{ClaimMapping, MappedClaims, TenantSelector};
use crate::core::TenantId;

/// The smallest RSA modulus accepted, in bits (RFC 8725 §3.5 points to NIST SP 800-57,
/// which retired 1,024-bit RSA; 2,048 is the floor every current guideline sets).
pub const MIN_RSA_BITS: usize = 2048;

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
    /// An RSA key whose modulus is too short to resist factoring.
    #[error(
        "RSA key of {bits} bits; at least {MIN_RSA_BITS} are required (RFC 8725, NIST SP 800-57)"
    )]
    WeakRsa {
        /// The modulus length.
        bits: usize,
    },
}

/// The bit length of an RSA modulus given as base64url (the JWK `n` member).
fn rsa_modulus_bits(n: &str) -> Result<usize, KeyError> {
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(n.trim_end_matches('='))
        .map_err(|e| KeyError::Malformed(format!("\"n\" is not base64url: {e}")))?;
    // Leading zero octets do not count (RFC 7518 §6.3.1.1 forbids them, but a key is
    // measured by its value, not its spelling).
    let significant = bytes
        .iter()
        .position(|&b| b != 0)
        .map_or(&[][..], |i| &bytes[i..]);
    Ok(significant.first().map_or(0, |&first| {
        (significant.len() - 1) * 8 + (8 - first.leading_zeros() as usize)
    }))
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
            AlgorithmParameters::RSA(rsa) => {
                let bits = rsa_modulus_bits(&rsa.n)?;
                if bits < MIN_RSA_BITS {
                    return Err(KeyError::WeakRsa { bits });
                }
                Algorithm::RS256
            }
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
    /// Reads a JWK Set (`{"keys": [...]}`), refusing keys that cannot be used safely. The
    /// error carries the index of the refused key.
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

/// A tenant's keys as the verifier reads them at each token: fixed for a key file, replaced
/// while the relay runs for keys fetched by URL (`crate::server::keys`), and empty until a
/// URL tenant's first key set arrives. Clones share one set; a replacement is seen by every
/// snapshot of the policies at once, so a `SIGHUP` never loses fetched keys.
#[derive(Debug, Clone)]
pub struct KeySet(Arc<std::sync::RwLock<Option<Arc<TenantKeys>>>>);

impl KeySet {
    /// A set with no keys yet (a URL tenant before its first fetch or cache read).
    pub fn empty() -> KeySet {
        KeySet(Arc::new(std::sync::RwLock::new(None)))
    }

    /// The keys in force, if any.
    pub fn current(&self) -> Option<Arc<TenantKeys>> {
        self.0
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Puts `keys` in force for every token verified from now on.
    pub fn replace(&self, keys: TenantKeys) {
        *self
            .0
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(Arc::new(keys));
    }

    /// Whether `other` is the same shared set (not merely equal keys).
    pub fn shares(&self, other: &KeySet) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }
}

impl From<TenantKeys> for KeySet {
    fn from(keys: TenantKeys) -> KeySet {
        KeySet(Arc::new(std::sync::RwLock::new(Some(Arc::new(keys)))))
    }
}

/// What the verifier needs to know about one tenant.
#[derive(Debug, Clone)]
pub struct TenantTrust {
    /// The tenant id tokens carry in `tid`.
    pub id: TenantId,
    /// The `iss` its tokens must carry.
    pub issuer: String,
    /// Its verification keys (fixed, or fetched and replaced while running).
    pub keys: KeySet,
    /// The `aud` its tokens must contain, when not the relay's `server.audience` (Entra ID
    /// v2.0 access tokens carry the application's client id).
    pub audience: Option<String>,
    /// Where its tokens carry the identity claims.
    pub claims: ClaimMapping,
}

impl TenantTrust {
    /// A tenant using this project's own claim shape and the relay's audience.
    pub fn new(id: TenantId, issuer: String, keys: TenantKeys) -> TenantTrust {
        TenantTrust {
            id,
            issuer,
            keys: keys.into(),
            audience: None,
            claims: ClaimMapping::default(),
        }
    }
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
    /// User or device object id: `sub`, or the claim the tenant's mapping names (`oid`…).
    pub subject: String,
    /// User or device agent.
    pub kind: PrincipalKind,
    /// Profile shown to the other party.
    pub profile: ProfileClaims,
    /// `groups`, then the mapping's roles (Entra `roles`, Keycloak realm roles), without
    /// duplicates.
    pub groups: Vec<String>,
    /// `licenses`, or the claim the tenant's mapping names.
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
    /// The tenant's keys come from its identity provider, and the relay has none yet (no
    /// fetch has succeeded and no key set is cached).
    #[error("the relay has no keys of this tenant yet: its identity provider could not be reached")]
    KeysUnavailable,
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
            AuthError::KeysUnavailable => ErrorCode::TenantKeysUnavailable,
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
            AuthError::KeysUnavailable => "keys_unavailable",
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

/// The registered claims (RFC 7519 §4.1), typed as `docs/tokens.md` §4.1 says. They are
/// never mapped: their meaning is fixed by the RFC.
struct Registered {
    iss: String,
    exp: u64,
    nbf: Option<u64>,
    jti: Option<String>,
}

impl Registered {
    fn read(claims: &Map<String, Value>) -> Result<Registered, AuthError> {
        let bad = |what: &str| AuthError::BadClaims(what.to_string());
        // `iss` is read as a string so that an array (which jsonwebtoken's issuer check
        // accepts when it contains the expected value) is refused: RFC 7519 makes `iss` a
        // single string, and so does docs/tokens.md. Found by the `token` fuzz target.
        let iss = match claims.get("iss") {
            Some(Value::String(iss)) => iss.clone(),
            None => return Err(bad("missing claim iss")),
            Some(_) => return Err(bad("iss must be a string")),
        };
        // RFC 7519 §4.1.2: `sub` is a string, also for tenants whose mapping reads the user
        // id from another claim (jsonwebtoken's own parse of the claims fails on an array
        // or object there anyway; found by the `token` fuzz target).
        if !matches!(
            claims.get("sub"),
            None | Some(Value::Null | Value::String(_))
        ) {
            return Err(bad("sub must be a string"));
        }
        let time = |name: &str| -> Result<Option<u64>, AuthError> {
            match claims.get(name) {
                None | Some(Value::Null) => Ok(None),
                Some(value) => value.as_u64().map(Some).ok_or_else(|| {
                    AuthError::BadClaims(format!(
                        "{name} must be a non-negative integer (Unix seconds)"
                    ))
                }),
            }
        };
        let exp = match claims.get("exp") {
            // `null` is not absent for the one required time: a token must say when it ends.
            Some(Value::Null) => {
                return Err(bad("exp must be a non-negative integer (Unix seconds)"));
            }
            _ => time("exp")?.ok_or_else(|| bad("missing claim exp"))?,
        };
        let nbf = time("nbf")?;
        // `iat` is informational, but a wrong type is still a malformed token
        // (docs/tokens.md §4); any JSON number is a time.
        match claims.get("iat") {
            None | Some(Value::Null | Value::Number(_)) => {}
            Some(_) => return Err(bad("iat must be a number (Unix seconds)")),
        }
        let jti = match claims.get("jti") {
            None | Some(Value::Null) => None,
            Some(Value::String(jti)) => Some(jti.clone()),
            Some(_) => return Err(bad("jti must be a string")),
        };
        Ok(Registered { iss, exp, nbf, jti })
    }
}

/// A token's claims as a JSON object in which no member name repeats, at any depth.
/// RFC 7519 §4 lets a recipient either reject duplicate names or take the last; the relay
/// rejects, so that no two parsers (this one, a provider's, an auditor's) can read one
/// token two ways.
struct StrictClaims(Map<String, Value>);

struct StrictValue(Value);

impl<'de> Deserialize<'de> for StrictValue {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<StrictValue, D::Error> {
        d.deserialize_any(StrictVisitor)
    }
}

impl<'de> Deserialize<'de> for StrictClaims {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<StrictClaims, D::Error> {
        match StrictValue::deserialize(d)?.0 {
            Value::Object(map) => Ok(StrictClaims(map)),
            _ => Err(serde::de::Error::custom("the claims must be a JSON object")),
        }
    }
}

struct StrictVisitor;

impl<'de> serde::de::Visitor<'de> for StrictVisitor {
    type Value = StrictValue;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }
    fn visit_none<E>(self) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Null))
    }
    fn visit_bool<E>(self, v: bool) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::Bool(v)))
    }
    fn visit_i64<E>(self, v: i64) -> Result<StrictValue, E> {
        Ok(StrictValue(v.into()))
    }
    fn visit_u64<E>(self, v: u64) -> Result<StrictValue, E> {
        Ok(StrictValue(v.into()))
    }
    fn visit_f64<E>(self, v: f64) -> Result<StrictValue, E> {
        Ok(StrictValue(
            serde_json::Number::from_f64(v).map_or(Value::Null, Value::Number),
        ))
    }
    fn visit_str<E>(self, v: &str) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v.to_string())))
    }
    fn visit_string<E>(self, v: String) -> Result<StrictValue, E> {
        Ok(StrictValue(Value::String(v)))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<StrictValue, A::Error> {
        let mut items = Vec::new();
        while let Some(StrictValue(item)) = seq.next_element()? {
            items.push(item);
        }
        Ok(StrictValue(Value::Array(items)))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<StrictValue, A::Error> {
        let mut object = Map::new();
        while let Some(name) = map.next_key::<String>()? {
            if object.contains_key(&name) {
                return Err(serde::de::Error::custom(format!(
                    "claim {name:?} appears twice"
                )));
            }
            let StrictValue(value) = map.next_value()?;
            object.insert(name, value);
        }
        Ok(StrictValue(Value::Object(object)))
    }
}

#[derive(Deserialize)]
struct TenantOnly {
    #[serde(default)]
    tid: Option<Value>,
    #[serde(default)]
    iss: Option<Value>,
}

/// What a token is presented for: each use has its own audience, so a token minted for one
/// is refused for the other (`docs/tokens.md`, "Audience").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Audience {
    /// A helper's or sharer's connection to the relay: `server.audience`, or the
    /// tenant's `audience`.
    Session,
    /// A tenant administrator's call to the reports API: `server.admin_audience`, or the
    /// tenant's `admin_audience`.
    Administration,
}

/// Verifies tokens of every configured tenant for one relay audience.
#[derive(Debug, Clone)]
pub struct Verifier {
    audience: String,
    /// The audience of administration tokens, and per-tenant overrides of it.
    admin_audience: String,
    admin_audiences: HashMap<TenantId, String>,
    leeway: Duration,
    tenants: HashMap<TenantId, Arc<TenantTrust>>,
    /// Tenants selected by `iss`, by issuer (config load refuses two with one issuer).
    by_issuer: HashMap<String, Arc<TenantTrust>>,
}

/// Longest token accepted, in bytes; far above any real token, far below the frame limit.
pub const MAX_TOKEN_LEN: usize = 16 * 1024;

impl Verifier {
    /// A verifier for `audience` trusting `tenants`.
    pub fn new(audience: String, leeway: Duration, tenants: Vec<TenantTrust>) -> Verifier {
        let tenants: HashMap<TenantId, Arc<TenantTrust>> = tenants
            .into_iter()
            .map(|t| (t.id.clone(), Arc::new(t)))
            .collect();
        let mut by_issuer = HashMap::new();
        for tenant in tenants.values() {
            if tenant.claims.select_by == TenantSelector::Issuer {
                by_issuer
                    .entry(tenant.issuer.clone())
                    .or_insert_with(|| Arc::clone(tenant));
            }
        }
        Verifier {
            admin_audience: default_admin_audience(&audience),
            admin_audiences: HashMap::new(),
            audience,
            leeway,
            tenants,
            by_issuer,
        }
    }

    /// The same verifier with `audience` for administration tokens (instead of
    /// [`default_admin_audience`]) and `per_tenant` overrides of it.
    pub fn with_admin_audience(
        mut self,
        audience: String,
        per_tenant: HashMap<TenantId, String>,
    ) -> Verifier {
        self.admin_audience = audience;
        self.admin_audiences = per_tenant;
        self
    }

    /// Verifies a session (helper or sharer) `token` at `now_unix` seconds.
    pub fn verify(&self, token: &str, now_unix: u64) -> Result<Principal, AuthError> {
        self.verify_for(token, now_unix, Audience::Session)
    }

    /// Verifies `token` at `now_unix` seconds for `use_`: every check of [`Verifier::verify`],
    /// with the audience of that use.
    pub fn verify_for(
        &self,
        token: &str,
        now_unix: u64,
        use_: Audience,
    ) -> Result<Principal, AuthError> {
        if token.len() > MAX_TOKEN_LEN {
            return Err(AuthError::Malformed("token too long".into()));
        }
        let tenant = self.tenant_of(token)?;
        let header = jsonwebtoken::decode_header(token)
            .map_err(|e| AuthError::Malformed(format!("header: {e}")))?;
        refuse_critical_extensions(token)?;
        let keys = tenant.keys.current().ok_or(AuthError::KeysUnavailable)?;
        let key = keys
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
        // `sub` is not required here: the tenant's mapping says which claim is the user id,
        // and `into_principal` requires that one.
        validation.set_required_spec_claims(&["exp", "iss", "aud"]);
        validation.set_issuer(&[&tenant.issuer]);
        let audience = match use_ {
            Audience::Session => tenant.audience.as_deref().unwrap_or(&self.audience),
            Audience::Administration => self
                .admin_audiences
                .get(&tenant.id)
                .map_or(self.admin_audience.as_str(), String::as_str),
        };
        validation.set_audience(&[audience]);
        let data =
            jsonwebtoken::decode::<StrictClaims>(token, &key.key, &validation).map_err(|e| {
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
                    // jsonwebtoken reports a claim of the wrong type (its own parse of `exp`,
                    // `nbf`, `iat`…) without naming it; the signature has verified by now, so
                    // the relay reads the claims itself to say which one.
                    ErrorKind::Json(err) => explain_claims(token)
                        .err()
                        .unwrap_or_else(|| AuthError::BadClaims(err.to_string())),
                    other => AuthError::Malformed(format!("{other:?}")),
                }
            })?;
        let StrictClaims(claims) = data.claims;
        let registered = Registered::read(&claims)?;
        if registered.iss != tenant.issuer {
            return Err(AuthError::WrongIssuer);
        }
        // Type errors in the mapped claims are TOKEN_INVALID even on an expired token.
        let mapped = tenant.claims.apply(&claims).map_err(AuthError::BadClaims)?;

        let leeway = self.leeway.as_secs();
        if registered.exp.saturating_add(leeway) < now_unix {
            return Err(AuthError::Expired);
        }
        if let Some(nbf) = registered.nbf
            && nbf > now_unix.saturating_add(leeway)
        {
            return Err(AuthError::NotYetValid);
        }
        into_principal(tenant.id.clone(), registered, mapped)
    }

    /// The configured tenant a token names (by `iss` or `tid`, as [`Verifier::verify`]
    /// selects it), before any check of its signature: for asking that tenant's identity
    /// provider for keys when the token names a key the relay does not have.
    pub fn tenant_named_by(&self, token: &str) -> Option<TenantId> {
        self.tenant_of(token).ok().map(|t| t.id.clone())
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
        if let Some(Value::String(iss)) = &claims.iss
            && let Some(tenant) = self.by_issuer.get(iss)
        {
            return Ok(tenant);
        }
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

/// The administration audience when none is configured: the session audience with
/// `/admin` appended.
pub fn default_admin_audience(session_audience: &str) -> String {
    format!("{session_audience}/admin")
}

/// The relay's own reading of a token's claims (after the signature verified), for a
/// clear reason phrase when jsonwebtoken's parse of them failed.
fn explain_claims(token: &str) -> Result<(), AuthError> {
    let payload = token.split('.').nth(1).unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .map_err(|e| AuthError::Malformed(format!("payload is not base64url: {e}")))?;
    let StrictClaims(claims) =
        serde_json::from_slice(&bytes).map_err(|e| AuthError::BadClaims(e.to_string()))?;
    Registered::read(&claims).map(drop)
}

/// RFC 7515 §4.1.11: a recipient must reject a JWS whose `crit` header lists an extension
/// it does not understand. The relay understands none, so any `crit` is refused; an empty
/// or malformed `crit` is refused too (the RFC forbids both).
fn refuse_critical_extensions(token: &str) -> Result<(), AuthError> {
    let header = token.split('.').next().unwrap_or_default();
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(header.trim_end_matches('='))
        .map_err(|e| AuthError::Malformed(format!("header is not base64url: {e}")))?;
    let header: Map<String, Value> = serde_json::from_slice(&bytes)
        .map_err(|e| AuthError::Malformed(format!("header is not a JSON object: {e}")))?;
    match header.get("crit") {
        None => Ok(()),
        Some(crit) => Err(AuthError::Malformed(format!(
            "header: crit {crit} names extensions this relay does not understand (RFC 7515 section 4.1.11)"
        ))),
    }
}

fn into_principal(
    tenant: TenantId,
    registered: Registered,
    c: MappedClaims,
) -> Result<Principal, AuthError> {
    let kind = match c.kind.as_deref() {
        None | Some("user") => PrincipalKind::User,
        Some("device") => PrincipalKind::Device,
        Some(other) => {
            return Err(AuthError::BadClaims(format!(
                "kind must be \"user\" or \"device\", not {other:?}"
            )));
        }
    };
    if c.subject.is_empty() {
        return Err(AuthError::BadClaims(match c.subject_claim.as_str() {
            "sub" => "sub is empty".to_string(),
            other => format!("{other} (the user id) is empty"),
        }));
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
    // Providers that issue only a full name (`name`) show it as the given name, so the
    // other party sees who it is dealing with (the wire profile has no display-name field).
    let (given_name, family_name) = match (c.given_name, c.family_name, c.display_name) {
        (None, None, Some(display)) => (display, String::new()),
        (given, family, _) => (given.unwrap_or_default(), family.unwrap_or_default()),
    };
    Ok(Principal {
        tenant,
        subject: c.subject,
        kind,
        profile: ProfileClaims {
            given_name,
            family_name,
            job_title: c.job_title.unwrap_or_default(),
            company_name: c.company_name.unwrap_or_default(),
            picture: c.picture.unwrap_or_default(),
            domain: c.domain.unwrap_or_default(),
            domain_verified: c.domain_verified.unwrap_or(false),
        },
        groups: c.groups,
        licenses: c.licenses,
        device,
        token_id: registered.jti,
        expires_at: registered.exp,
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
