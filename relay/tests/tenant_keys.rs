//! Tenants configured by URL, without a provider answering: the relay refuses their tokens
//! with `TENANT_KEYS_UNAVAILABLE` (and says why in a metric) until it has keys, verifies
//! them with the key set cached in the state folder after a restart while the provider is
//! down, names a provider that does not answer in time, and `check-config --fetch` names
//! each problem. The same behaviour against a real OpenID provider is in `idp.rs`.

mod common;

use std::net::{SocketAddr, TcpListener};
use std::path::Path;

use common::{TestRelay, join_and_consent, metrics, within};
use remote_help_proto::ErrorCode;
use remote_help_relay::claim_map::ClaimMapping;
use remote_help_relay::core::{Mode, Role};
use remote_help_relay::dev::Persona;
use remote_help_relay::issuer::{TokenSigner, jwks_of};
use remote_help_relay::tenant_keys::{CACHE_DIR, CachedKeySet, ProviderKeys, cache_file_name};

/// An `https://` issuer on a loopback port nothing listens on.
fn unreachable_issuer() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("https://127.0.0.1:{port}/realms/acme")
}

/// A relay whose tenant `id` takes its keys from `issuer` by discovery; `prepare` runs on
/// the state folder before the relay starts.
async fn relay_with_url_tenant(
    id: &str,
    signer: TokenSigner,
    issuer: &str,
    prepare: impl FnOnce(&Path) + 'static,
    timeout_ms: Option<u64>,
) -> TestRelay {
    let source = ProviderKeys {
        issuer: issuer.to_string(),
        jwks_uri: None,
        ca_file: None,
    };
    relay_with_source(id, signer, source, prepare, timeout_ms).await
}

/// [`relay_with_url_tenant`] with the whole source (issuer, `jwks_uri`, `ca_file`).
async fn relay_with_source(
    id: &str,
    signer: TokenSigner,
    source: ProviderKeys,
    prepare: impl FnOnce(&Path) + 'static,
    timeout_ms: Option<u64>,
) -> TestRelay {
    let tenant_id = id.to_string();
    let issuer = source.issuer.clone();
    TestRelay::builder()
        .provider_tenant(id, signer, &issuer, None, ClaimMapping::default())
        .config(move |c| {
            if let Some(ms) = timeout_ms {
                c.key_fetch.timeout = std::time::Duration::from_millis(ms);
            }
            common::keys_from_provider(c, &tenant_id, source);
            prepare(&c.state_dir);
        })
        .start()
        .await
}

async fn failures(admin: SocketAddr, tenant: &str, reason: &str) -> f64 {
    metrics(admin)
        .await
        .get(&format!(
            "relay_tenant_keys_fetch_failures_total{{tenant=\"{tenant}\",reason=\"{reason}\"}}"
        ))
        .copied()
        .unwrap_or(0.0)
}

#[tokio::test]
async fn without_keys_a_url_tenant_is_refused_as_temporarily_unverifiable() {
    let signer = TokenSigner::generate_es256("k1").unwrap();
    let relay = relay_with_url_tenant("nokeys", signer, &unreachable_issuer(), |_| {}, None).await;
    let token = relay.tenant("nokeys").token(Persona::Helper);
    let refused = relay.connect(token, Role::Helper).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::TenantKeysUnavailable),
        "{refused}"
    );
    // The token's arrival asked for a fetch (the startup fetch had failed or was under
    // way), and it failed to connect: the metric names the reason.
    let admin = relay.handle.admin_addr().unwrap();
    assert!(failures(admin, "nokeys", "connect").await >= 1.0);
    assert_eq!(
        metrics(admin)
            .await
            .get("relay_tenant_keys_in_force{tenant=\"nokeys\"}"),
        Some(&0.0)
    );
    relay.stop().await;
}

#[tokio::test]
async fn cached_keys_verify_after_a_restart_while_the_provider_is_down() {
    let signer = TokenSigner::generate_es256("cached-1").unwrap();
    let jwks = serde_json::to_value(jwks_of(&[&signer]).unwrap()).unwrap();
    let issuer = unreachable_issuer();
    let cached = CachedKeySet {
        issuer: issuer.clone(),
        jwks_uri: format!("{issuer}/protocol/openid-connect/certs"),
        ca_file: None,
        fetched_at: 1_700_000_000,
        jwks,
    };
    let relay = relay_with_url_tenant(
        "cached",
        signer,
        &issuer,
        move |state| {
            let dir = state.join(CACHE_DIR);
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(
                dir.join(cache_file_name(&remote_help_relay::core::TenantId::new(
                    "cached",
                ))),
                serde_json::to_vec(&cached).unwrap(),
            )
            .unwrap();
        },
        None,
    )
    .await;
    let tenant = relay.tenant("cached");
    let mut helper = relay
        .connect(tenant.token(Persona::Helper), Role::Helper)
        .await
        .unwrap();
    let mut sharer = relay
        .connect(tenant.token(Persona::Sharer), Role::Sharer)
        .await
        .unwrap();
    let created = within(helper.create_session(Mode::ViewOnly)).await.unwrap();
    join_and_consent(&mut helper, &mut sharer, &created.code).await;
    let admin = relay.handle.admin_addr().unwrap();
    let seen = metrics(admin).await;
    assert_eq!(
        seen.get("relay_tenant_keys_last_success_timestamp_seconds{tenant=\"cached\"}"),
        Some(&1_700_000_000.0)
    );
    assert_eq!(
        seen.get("relay_tenant_keys_in_force{tenant=\"cached\"}"),
        Some(&1.0)
    );
    // A token naming a key that is not cached is refused as naming an unknown key.
    let stranger = TokenSigner::generate_es256("not-cached").unwrap();
    let forged = stranger
        .sign(&tenant.spec(Persona::Helper).claims())
        .unwrap();
    let refused = relay.connect(forged, Role::Helper).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::TokenInvalid), "{refused}");
    drop((helper, sharer));
    relay.stop().await;
}

#[tokio::test]
async fn a_provider_that_does_not_answer_is_named_a_timeout() {
    // Accepts TCP connections and never says a word.
    let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = silent.local_addr().unwrap().port();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = silent.accept().await {
            open.push(stream);
        }
    });
    let signer = TokenSigner::generate_es256("k1").unwrap();
    let relay = relay_with_url_tenant(
        "silent",
        signer,
        &format!("https://127.0.0.1:{port}"),
        |_| {},
        Some(300),
    )
    .await;
    let token = relay.tenant("silent").token(Persona::Helper);
    let refused = relay.connect(token, Role::Helper).await.unwrap_err();
    assert_eq!(
        refused.code(),
        Some(ErrorCode::TenantKeysUnavailable),
        "{refused}"
    );
    let admin = relay.handle.admin_addr().unwrap();
    assert!(failures(admin, "silent", "timeout").await >= 1.0);
    relay.stop().await;
    held.abort();
}

#[test]
fn check_config_fetch_names_each_providers_problem_and_exits_69() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    let unreachable = unreachable_issuer();
    std::fs::write(
        &path,
        format!(
            "[server]\nstate_dir = \"state\"\n[audit]\ndir = \"audit\"\n\
             [[tenants]]\nid = \"initech\"\nissuer = \"{unreachable}\"\nclaims = \"keycloak\"\n\
             [[tenants]]\nid = \"plain\"\nissuer = \"https://idp.plain.example\"\n\
             jwks_uri = \"https://127.0.0.1:1/certs\"\n"
        ),
    )
    .unwrap();
    let relay = || std::process::Command::new(env!("CARGO_BIN_EXE_relay"));
    // Without --fetch nothing is fetched: the file is fine.
    let out = relay().arg("check-config").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = relay()
        .args(["check-config", "--fetch"])
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(69));
    let stdout = String::from_utf8_lossy(&out.stdout);
    for needle in [
        "tenants[0] (initech): connect: cannot connect to",
        "/.well-known/openid-configuration",
        "tenants[1] (plain): connect: cannot connect to https://127.0.0.1:1/certs",
    ] {
        assert!(stdout.contains(needle), "{needle:?} not in:\n{stdout}");
    }
}

#[test]
fn plain_http_providers_are_refused_when_the_config_loads() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        "[[tenants]]\nid = \"a\"\nissuer = \"http://idp.example\"\n\
         [[tenants]]\nid = \"b\"\nissuer = \"https://idp.example/b\"\njwks_uri = \"http://idp.example/keys\"\n\
         [[tenants]]\nid = \"c\"\nissuer = \"https://idp.example/c\"\njwks_file = \"c.json\"\njwks_uri = \"https://idp.example/keys\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "tenants[0].issuer: http://idp.example is not an https:// URL",
        "tenants[1].jwks_uri: http://idp.example/keys is not an https:// URL",
        "tenants[2].jwks_uri: give jwks_file or jwks_uri, not both",
    ] {
        assert!(stderr.contains(needle), "{needle:?} not in:\n{stderr}");
    }
}

/// A cache written under another `jwks_uri` or another `ca_file` is not used: a reload that
/// moves a tenant off a compromised endpoint or CA must not keep keys fetched from it.
#[tokio::test]
async fn a_cache_fetched_from_another_jwks_uri_or_under_another_ca_file_is_not_used() {
    for (id, moved) in [("moved-uri", "jwks_uri"), ("moved-ca", "ca_file")] {
        let signer = TokenSigner::generate_es256("cached-old").unwrap();
        let jwks = serde_json::to_value(jwks_of(&[&signer]).unwrap()).unwrap();
        let issuer = unreachable_issuer();
        let old_uri = format!("{issuer}/old/certs");
        let cached = CachedKeySet {
            issuer: issuer.clone(),
            jwks_uri: old_uri.clone(),
            ca_file: None,
            fetched_at: 1_700_000_000,
            jwks,
        };
        let source = match moved {
            "jwks_uri" => ProviderKeys {
                issuer: issuer.clone(),
                jwks_uri: Some(format!("{issuer}/new/certs")),
                ca_file: None,
            },
            _ => ProviderKeys {
                issuer: issuer.clone(),
                jwks_uri: Some(old_uri),
                ca_file: Some(std::path::PathBuf::from(
                    "/etc/ssl/certs/ca-certificates.crt",
                )),
            },
        };
        let tenant_id = id.to_string();
        let relay = relay_with_source(
            id,
            signer,
            source,
            move |state| {
                let dir = state.join(CACHE_DIR);
                std::fs::create_dir_all(&dir).unwrap();
                std::fs::write(
                    dir.join(cache_file_name(&remote_help_relay::core::TenantId::new(
                        &tenant_id,
                    ))),
                    serde_json::to_vec(&cached).unwrap(),
                )
                .unwrap();
            },
            None,
        )
        .await;
        let token = relay.tenant(id).token(Persona::Helper);
        let refused = relay.connect(token, Role::Helper).await.unwrap_err();
        assert_eq!(
            refused.code(),
            Some(ErrorCode::TenantKeysUnavailable),
            "{moved}: {refused}"
        );
        relay.stop().await;
    }
}
