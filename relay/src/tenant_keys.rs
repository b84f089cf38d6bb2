//! Tenants whose keys come from their identity provider by URL: the decisions, without
//! I/O. Where the keys are ([`KeySource`]), how often to fetch them ([`FetchSettings`],
//! [`refresh_after`] from `Cache-Control: max-age`), when a token naming an unknown `kid`
//! may make the relay fetch again ([`RefetchGate`]), what a discovery document must say
//! ([`jwks_uri_of_discovery`]), which fetched key sets are accepted ([`keys_of_fetched_set`]),
//! and the on-disk cache's format ([`CachedKeySet`]). The fetching itself (HTTPS, timeouts,
//! the size cap, the cache file, the tasks) is `server::keys`; the rules are in
//! `docs/tokens.md` §9 and what an operator watches is in `docs/operations.md`.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::auth::{KeyError, TenantKey, TenantKeys};
use crate::core::TenantId;

/// Where a tenant's verification keys come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeySource {
    /// A JWK Set file, read at start and at `SIGHUP` (air-gapped tenants).
    File(PathBuf),
    /// The tenant's identity provider, over HTTPS, refreshed while the relay runs.
    Provider(ProviderKeys),
}

/// A tenant's keys at its identity provider.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProviderKeys {
    /// The issuer (`iss`) its tokens carry; also where discovery starts.
    pub issuer: String,
    /// The JWK Set URL, when configured; `None` means OpenID Connect discovery finds it.
    pub jwks_uri: Option<String>,
    /// A PEM file of CA certificates trusted for this provider besides the system's roots.
    pub ca_file: Option<PathBuf>,
}

impl ProviderKeys {
    /// The discovery document's URL: OpenID Connect Discovery 1.0 §4 (the same as RFC 8414
    /// §5 for an issuer without a path): a terminating `/` of the issuer is removed before
    /// `/.well-known/openid-configuration` is appended.
    pub fn discovery_url(&self) -> String {
        format!(
            "{}/.well-known/openid-configuration",
            self.issuer.trim_end_matches('/')
        )
    }
}

/// How the relay fetches keys by URL (`[key_fetch]`; relay-wide).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FetchSettings {
    /// Limit on one HTTPS request, connection and TLS handshake included.
    pub timeout: Duration,
    /// Largest discovery document or key set read, bytes.
    pub max_response_bytes: usize,
    /// Shortest time between scheduled fetches, whatever `max-age` says.
    pub refresh_min: Duration,
    /// Longest time between scheduled fetches, whatever `max-age` says.
    pub refresh_max: Duration,
    /// Time between scheduled fetches when the provider sends no `max-age`.
    pub refresh_default: Duration,
    /// Time until the next attempt after a failed fetch.
    pub retry: Duration,
    /// Shortest time between two fetches caused by tokens naming an unknown `kid`.
    pub unknown_kid_interval: Duration,
}

impl Default for FetchSettings {
    fn default() -> FetchSettings {
        FetchSettings {
            timeout: Duration::from_secs(10),
            max_response_bytes: 256 * 1024,
            refresh_min: Duration::from_secs(300),
            refresh_max: Duration::from_secs(86_400),
            refresh_default: Duration::from_secs(3_600),
            retry: Duration::from_secs(60),
            unknown_kid_interval: Duration::from_secs(300),
        }
    }
}

/// The `max-age` of a `Cache-Control` header value (RFC 9111 §5.2.2.1), for a private
/// cache: `no-store` and `no-cache` mean "fetch again as soon as allowed" (zero); a
/// malformed or repeated `max-age` is ignored (RFC 9111 §4.2.1 says to treat a conflicting
/// freshness as stale, which the lower bound then governs).
pub fn max_age(cache_control: Option<&str>) -> Option<Duration> {
    let mut found = None;
    for directive in cache_control?.split(',') {
        let directive = directive.trim();
        let (name, value) = match directive.split_once('=') {
            Some((name, value)) => (name.trim(), Some(value.trim().trim_matches('"'))),
            None => (directive, None),
        };
        if name.eq_ignore_ascii_case("no-store") || name.eq_ignore_ascii_case("no-cache") {
            return Some(Duration::ZERO);
        }
        if name.eq_ignore_ascii_case("max-age") {
            let seconds = value.and_then(|v| v.parse::<u64>().ok());
            match (found, seconds) {
                (None, Some(seconds)) => found = Some(Duration::from_secs(seconds)),
                _ => return Some(Duration::ZERO),
            }
        }
    }
    found
}

/// How long until the next scheduled fetch after a successful one: the provider's
/// `max-age`, or the default, kept within the configured bounds.
pub fn refresh_after(max_age: Option<Duration>, settings: &FetchSettings) -> Duration {
    max_age
        .unwrap_or(settings.refresh_default)
        .clamp(settings.refresh_min, settings.refresh_max)
}

/// What a token naming a key the relay does not have may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefetchDecision {
    /// Start a fetch now and wait for it.
    Fetch,
    /// A fetch is under way; wait for it instead of starting another.
    JoinInFlight,
    /// A fetch for an unknown `kid` ran less than the interval ago: refuse the token now.
    /// Forged `kid`s cost the provider nothing.
    Throttled,
}

/// Limits fetches caused by tokens with unknown `kid`s to one per interval per tenant.
/// Scheduled fetches are not limited by it, and do not count against it.
#[derive(Debug, Clone)]
pub struct RefetchGate {
    interval: Duration,
    last_for_unknown_kid: Option<Instant>,
    in_flight: bool,
}

impl RefetchGate {
    /// A gate allowing one fetch for unknown `kid`s per `interval`.
    pub fn new(interval: Duration) -> RefetchGate {
        RefetchGate {
            interval,
            last_for_unknown_kid: None,
            in_flight: false,
        }
    }

    /// A token named an unknown `kid` at `now`.
    pub fn unknown_kid(&mut self, now: Instant) -> RefetchDecision {
        if self.in_flight {
            return RefetchDecision::JoinInFlight;
        }
        if let Some(last) = self.last_for_unknown_kid
            && now.saturating_duration_since(last) < self.interval
        {
            return RefetchDecision::Throttled;
        }
        self.last_for_unknown_kid = Some(now);
        self.in_flight = true;
        RefetchDecision::Fetch
    }

    /// A fetch (of any cause) started.
    pub fn started(&mut self) {
        self.in_flight = true;
    }

    /// The fetch under way ended, well or not.
    pub fn finished(&mut self) {
        self.in_flight = false;
    }
}

/// Why a fetch of a tenant's keys failed. The previous keys stay in force.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FetchProblem {
    /// A URL that is not `https://` (configured, or named by the discovery document).
    #[error("{url} is not an https:// URL; keys are fetched over HTTPS only")]
    NotHttps {
        /// The URL.
        url: String,
    },
    /// No connection (refused, unreachable, name not resolved).
    #[error("cannot connect to {url}: {detail}")]
    Connect {
        /// The URL.
        url: String,
        /// What failed.
        detail: String,
    },
    /// The TLS handshake failed (certificate not trusted, wrong name, expired).
    #[error("TLS with {url} failed: {detail}")]
    Tls {
        /// The URL.
        url: String,
        /// What failed.
        detail: String,
    },
    /// No complete answer within the timeout.
    #[error("{url} did not answer within {seconds} s")]
    Timeout {
        /// The URL.
        url: String,
        /// The configured limit.
        seconds: u64,
    },
    /// An answer other than 200 (redirects are not followed).
    #[error("{url} answered HTTP {status}")]
    HttpStatus {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The body is longer than the configured cap.
    #[error("{url} sent more than {limit} bytes")]
    TooLarge {
        /// The URL.
        url: String,
        /// The cap.
        limit: usize,
    },
    /// The body is not the JSON expected.
    #[error("{url} did not send {expected}: {detail}")]
    NotJson {
        /// The URL.
        url: String,
        /// What was expected.
        expected: &'static str,
        /// The parser's complaint.
        detail: String,
    },
    /// The discovery document names another issuer (OpenID Connect Discovery 1.0 §4.3:
    /// it must be identical to the issuer it was fetched for).
    #[error("the discovery document's issuer {found:?} is not the configured issuer {expected:?}")]
    IssuerMismatch {
        /// What the document says.
        found: String,
        /// What the tenant is configured with.
        expected: String,
    },
    /// The discovery document has no usable `jwks_uri`.
    #[error("the discovery document has no jwks_uri string")]
    NoJwksUri,
    /// The key set has a key the relay refuses; the whole set is refused.
    #[error("key set refused: {0}")]
    KeySetRefused(String),
    /// Any other failure of the HTTP exchange.
    #[error("fetching {url} failed: {detail}")]
    Other {
        /// The URL.
        url: String,
        /// What failed.
        detail: String,
    },
}

impl FetchProblem {
    /// A short stable label for metrics (`reason`).
    pub fn reason(&self) -> &'static str {
        match self {
            FetchProblem::NotHttps { .. } => "not_https",
            FetchProblem::Connect { .. } => "connect",
            FetchProblem::Tls { .. } => "tls",
            FetchProblem::Timeout { .. } => "timeout",
            FetchProblem::HttpStatus { .. } => "http_status",
            FetchProblem::TooLarge { .. } => "too_large",
            FetchProblem::NotJson { .. } => "not_json",
            FetchProblem::IssuerMismatch { .. } => "issuer_mismatch",
            FetchProblem::NoJwksUri => "no_jwks_uri",
            FetchProblem::KeySetRefused(_) => "key_set_refused",
            FetchProblem::Other { .. } => "other",
        }
    }
}

/// Whether `url` may be fetched: `https://` with a host.
pub fn check_https(url: &str) -> Result<(), FetchProblem> {
    let not_https = || FetchProblem::NotHttps {
        url: url.to_string(),
    };
    let rest = url.strip_prefix("https://").ok_or_else(not_https)?;
    let host = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if host.is_empty() || host.starts_with(':') || host.contains('@') {
        return Err(not_https());
    }
    Ok(())
}

/// The `jwks_uri` of a discovery document fetched for `issuer`: the document's `issuer`
/// must equal it exactly, and the key set must be served over HTTPS.
pub fn jwks_uri_of_discovery(body: &[u8], url: &str, issuer: &str) -> Result<String, FetchProblem> {
    let document: serde_json::Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| FetchProblem::NotJson {
            url: url.to_string(),
            expected: "an OpenID Connect discovery document (a JSON object)",
            detail: e.to_string(),
        })?;
    match document.get("issuer") {
        Some(Value::String(found)) if found == issuer => {}
        Some(Value::String(found)) => {
            return Err(FetchProblem::IssuerMismatch {
                found: found.clone(),
                expected: issuer.to_string(),
            });
        }
        _ => {
            return Err(FetchProblem::IssuerMismatch {
                found: String::new(),
                expected: issuer.to_string(),
            });
        }
    }
    let Some(Value::String(jwks_uri)) = document.get("jwks_uri") else {
        return Err(FetchProblem::NoJwksUri);
    };
    check_https(jwks_uri)?;
    Ok(jwks_uri.clone())
}

/// A fetched key set, accepted.
#[derive(Debug, Clone)]
pub struct FetchedKeys {
    /// The keys tokens may be verified with.
    pub keys: TenantKeys,
    /// The `kid`s of the keys in force, in the provider's order (for logs).
    pub kids: Vec<String>,
    /// Keys left out because they are not for verifying signatures (`"use": "enc"`, or
    /// `key_ops` without `verify`) or are of a type or curve the relay does not verify
    /// (RSA-PSS, P-384, ...): a token naming them is refused as naming an unknown key.
    pub skipped: Vec<String>,
}

/// Reads a key set as served by an identity provider. Providers publish keys for other
/// purposes beside their signing keys (Keycloak publishes an `RSA-OAEP` encryption key,
/// some providers publish algorithms the relay does not verify); those are left out. Any
/// other problem refuses the whole set, as a key file's would: a symmetric key, RSA under
/// 2,048 bits, a malformed key, a `kid` twice, no usable key at all.
pub fn keys_of_fetched_set(body: &[u8], url: &str) -> Result<FetchedKeys, FetchProblem> {
    let not_a_set = |detail: String| FetchProblem::NotJson {
        url: url.to_string(),
        expected: "a JWK Set ({\"keys\": [...]})",
        detail,
    };
    let set: serde_json::Map<String, Value> =
        serde_json::from_slice(body).map_err(|e| not_a_set(e.to_string()))?;
    let Some(Value::Array(entries)) = set.get("keys") else {
        return Err(not_a_set("no \"keys\" array".into()));
    };
    let mut signing = Vec::new();
    let mut skipped = Vec::new();
    for (index, entry) in entries.iter().enumerate() {
        let name = entry
            .get("kid")
            .and_then(Value::as_str)
            .map_or_else(|| format!("keys[{index}]"), |kid| format!("kid {kid:?}"));
        let symmetric = entry.get("kty").and_then(Value::as_str) == Some("oct");
        if !symmetric && !for_signatures(entry) {
            skipped.push(format!("{name}: not a signature key"));
            continue;
        }
        if !symmetric && !of_verified_kind(entry) {
            skipped.push(format!("{name}: {}", KeyError::Unsupported));
            continue;
        }
        // A symmetric key in a published set means the provider (or whoever answers in its
        // name) is badly wrong: refused with the whole set, never skipped.
        let jwk: jsonwebtoken::jwk::Jwk = serde_json::from_value(entry.clone())
            .map_err(|e| FetchProblem::KeySetRefused(format!("{name} is not a valid JWK: {e}")))?;
        TenantKey::from_jwk(&jwk)
            .map_err(|e| FetchProblem::KeySetRefused(format!("{name}: {e}")))?;
        signing.push(jwk);
    }
    let kids = signing
        .iter()
        .map(|jwk| jwk.common.key_id.clone().unwrap_or_default())
        .collect();
    let keys =
        TenantKeys::from_jwks(&jsonwebtoken::jwk::JwkSet { keys: signing }).map_err(|(_, e)| {
            match e {
                KeyError::Empty => FetchProblem::KeySetRefused(
                    "no key in the set can verify tokens (EdDSA/Ed25519, ES256/P-256 or RS256)"
                        .into(),
                ),
                other => FetchProblem::KeySetRefused(other.to_string()),
            }
        })?;
    Ok(FetchedKeys {
        keys,
        kids,
        skipped,
    })
}

/// Whether a JWK is published for verifying signatures (RFC 7517 §4.2, §4.3): not when its
/// `use` is `enc`, and not when its `key_ops` are listed without `verify`.
fn for_signatures(entry: &Value) -> bool {
    if entry.get("use").and_then(Value::as_str) == Some("enc") {
        return false;
    }
    match entry.get("key_ops") {
        Some(Value::Array(ops)) => ops.iter().any(|op| op.as_str() == Some("verify")),
        _ => true,
    }
}

/// Whether a JWK is of a kind the relay verifies with: Ed25519, P-256 or RSA keys, with
/// no `alg` or the one their type implies. Others (RSA-PSS, P-384, P-521, ...) are left out
/// of a fetched set rather than refusing it: tokens naming them cannot be verified anyway.
fn of_verified_kind(entry: &Value) -> bool {
    let kty = entry.get("kty").and_then(Value::as_str);
    let crv = entry.get("crv").and_then(Value::as_str);
    let alg = entry.get("alg").and_then(Value::as_str);
    match kty {
        Some("RSA") => matches!(alg, None | Some("RS256")),
        Some("EC") => crv == Some("P-256") && matches!(alg, None | Some("ES256")),
        Some("OKP") => crv == Some("Ed25519") && matches!(alg, None | Some("EdDSA")),
        _ => false,
    }
}

/// The cache of a tenant's last accepted key set, kept in the state folder so that a
/// restart while the provider is down still verifies (`tenant-keys/<file>`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct CachedKeySet {
    /// The issuer the set was fetched for; a cache of another issuer is not used.
    pub issuer: String,
    /// Where the set came from.
    pub jwks_uri: String,
    /// The tenant's `ca_file` when the set was fetched (absent: none, or a cache written
    /// before this field existed). A cache fetched under another CA file is not used, so a
    /// reload that changes the trust of a provider does not keep keys fetched under the old.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_file: Option<PathBuf>,
    /// When it was fetched, Unix seconds.
    pub fetched_at: u64,
    /// The key set as the provider served it.
    pub jwks: Value,
}

/// The folder, under the state folder, holding the cached key sets.
pub const CACHE_DIR: &str = "tenant-keys";

/// The cache file's name for `tenant`: the id with every byte outside `[A-Za-z0-9_-]`
/// written `%XX`, so that no tenant id can name a path elsewhere, and two ids never share
/// a file.
pub fn cache_file_name(tenant: &TenantId) -> String {
    let mut name = String::with_capacity(tenant.as_str().len() + 10);
    for byte in tenant.as_str().bytes() {
        if byte.is_ascii_alphanumeric() || byte == b'_' || byte == b'-' {
            name.push(char::from(byte));
        } else {
            name.push_str(&format!("%{byte:02X}"));
        }
    }
    name.push_str(".jwks.json");
    name
}

#[cfg(test)]
mod tests;
