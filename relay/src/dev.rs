//! The development tenant: lets a newcomer run the relay and mint tokens with no identity
//! provider. `relay` without `--config` runs on [`crate::config::DEV_CONFIG_TOML`], and this
//! module creates the `dev` tenant's Ed25519 signing key in the state folder on first use.
//! Never use the dev tenant in production: anyone with the state folder can mint tokens.

use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use jsonwebtoken::Algorithm;
use serde_json::{Map, Value, json};

use crate::config::{Config, ConfigError, DEFAULT_AUDIENCE};
use crate::issuer::{IssuerError, TokenSigner, TokenSpec, jwks_of, write_private_file};

/// Default state folder for development, relative to the working directory.
pub const DEFAULT_STATE_DIR: &str = "relay-dev-state";
/// The dev tenant's id.
pub const DEV_TENANT: &str = "dev";
/// The dev tenant's issuer.
pub const DEV_ISSUER: &str = "https://dev.remote-help.invalid/";
/// The dev tenant's signing key file, inside the state folder.
pub const KEY_FILE: &str = "dev-tenant-key.pem";
/// The dev tenant's public JWK Set, inside the state folder.
pub const JWKS_FILE: &str = "dev-tenant.jwks.json";
/// File the relay writes its certificate fingerprint to, inside the state folder.
pub const FINGERPRINT_FILE: &str = "relay-cert.sha256";

/// Why the dev tenant could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum DevError {
    /// Key handling failed.
    #[error(transparent)]
    Issuer(#[from] IssuerError),
    /// The state folder could not be made or read.
    #[error("state folder {path}: {source}")]
    State {
        /// The folder or file.
        path: PathBuf,
        /// Why.
        source: std::io::Error,
    },
    /// The embedded config did not load (a bug).
    #[error(transparent)]
    Config(#[from] ConfigError),
}

/// Loads the dev tenant's signing key, creating it (and its JWK Set) on first use.
pub fn ensure_signer(state_dir: &Path) -> Result<TokenSigner, DevError> {
    let state = |source| DevError::State {
        path: state_dir.to_path_buf(),
        source,
    };
    std::fs::create_dir_all(state_dir).map_err(state)?;
    let key_path = state_dir.join(KEY_FILE);
    let signer = if key_path.is_file() {
        let pem = std::fs::read_to_string(&key_path).map_err(|source| DevError::State {
            path: key_path.clone(),
            source,
        })?;
        TokenSigner::from_pem("dev-1", Algorithm::EdDSA, &pem)?
    } else {
        let signer = TokenSigner::generate_ed25519("dev-1")?;
        write_private_file(&key_path, signer.private_pem())?;
        signer
    };
    let jwks =
        serde_json::to_string_pretty(&jwks_of(&[&signer])?).map_err(|e| DevError::State {
            path: state_dir.join(JWKS_FILE),
            source: std::io::Error::other(e),
        })?;
    std::fs::write(state_dir.join(JWKS_FILE), jwks).map_err(|source| DevError::State {
        path: state_dir.join(JWKS_FILE),
        source,
    })?;
    Ok(signer)
}

/// The embedded development config, with the dev tenant's key created in `state_dir`.
pub fn config(state_dir: &Path) -> Result<(Config, TokenSigner), DevError> {
    let signer = ensure_signer(state_dir)?;
    let config = Config::parse(crate::config::DEV_CONFIG_TOML, state_dir)?;
    Ok((config, signer))
}

/// Which sample identity to mint a dev token for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Persona {
    /// An IT support operator.
    Helper,
    /// An employee on an enrolled, compliant Windows laptop.
    Sharer,
    /// A tenant administrator (group `it-admins`, which the dev tenant gives
    /// `end_sessions`), with a token for the administration audience: the reports API.
    Administrator,
}

/// Claims of a plausible dev identity; `subject` overrides the default `sub`.
pub fn persona_claims(persona: Persona, subject: Option<&str>) -> (String, Map<String, Value>) {
    let (sub, claims) = match persona {
        Persona::Helper => (
            "helper-ada",
            json!({
                "kind": "user",
                "given_name": "Ada", "family_name": "Lovelace", "job_title": "IT Support",
                "company_name": "Dev Org", "domain": "dev.example", "domain_verified": true,
                "groups": ["helpdesk"], "licenses": ["remote-help"],
            }),
        ),
        Persona::Sharer => (
            "user-grace",
            json!({
                "kind": "user",
                "given_name": "Grace", "family_name": "Hopper", "job_title": "Engineer",
                "company_name": "Dev Org", "domain": "dev.example", "domain_verified": true,
                "groups": ["engineering"], "licenses": ["remote-help"],
                "device_id": "dev-device-1", "device_name": "GRACE-LAPTOP", "platform": "windows",
                "os_version": "10.0.22631", "manufacturer": "Contoso", "enrolled": true,
                "compliant": true, "device_groups": ["laptops"],
            }),
        ),
        Persona::Administrator => (
            "admin-linus",
            json!({
                "kind": "user",
                "given_name": "Linus", "family_name": "Admin", "job_title": "IT Administrator",
                "company_name": "Dev Org", "domain": "dev.example", "domain_verified": true,
                "groups": ["it-admins"],
            }),
        ),
    };
    let Value::Object(map) = claims else {
        unreachable!("json! object literal")
    };
    (subject.unwrap_or(sub).to_string(), map)
}

/// Mints a dev-tenant token for `persona`, valid for `ttl_secs`.
pub fn mint(
    signer: &TokenSigner,
    persona: Persona,
    subject: Option<&str>,
    ttl_secs: u64,
) -> Result<String, IssuerError> {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let (subject, extra) = persona_claims(persona, subject);
    signer.sign(
        &TokenSpec {
            issuer: DEV_ISSUER.into(),
            audience: match persona {
                Persona::Administrator => crate::auth::default_admin_audience(DEFAULT_AUDIENCE),
                _ => DEFAULT_AUDIENCE.into(),
            },
            tenant: DEV_TENANT.into(),
            subject,
            issued_at: now,
            expires_at: now + ttl_secs,
            extra,
        }
        .claims(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_embedded_config_loads_and_its_tokens_verify() {
        let dir = tempfile::tempdir().unwrap();
        let (config, signer) = config(dir.path()).unwrap();
        assert_eq!(config.tenants.len(), 1);
        let verifier = crate::auth::Verifier::new(
            config.audience.clone(),
            config.token_leeway,
            config.tenants.iter().map(|t| t.trust.clone()).collect(),
        );
        let token = mint(&signer, Persona::Sharer, None, 60).unwrap();
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs();
        let principal = verifier.verify(&token, now).unwrap();
        assert_eq!(principal.subject, "user-grace");
        assert_eq!(principal.device.unwrap().platform, "windows");
        // The administrator's token is for the reports API only, where the dev tenant
        // grants it end_sessions.
        let token = mint(&signer, Persona::Administrator, None, 60).unwrap();
        assert!(verifier.verify(&token, now).is_err());
        let admin = verifier
            .verify_for(&token, now, crate::auth::Audience::Administration)
            .unwrap();
        let permissions = config.tenants[0].policy.admin_permissions(&admin);
        assert!(permissions.contains(crate::core::policy::Permission::EndSessions));
    }

    #[test]
    fn the_dev_key_is_reused_across_starts() {
        let dir = tempfile::tempdir().unwrap();
        let first = ensure_signer(dir.path()).unwrap();
        let second = ensure_signer(dir.path()).unwrap();
        assert_eq!(first.private_pem(), second.private_pem());
    }
}
