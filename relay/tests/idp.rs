//! Tenants configured only by their issuer URL, against a real OpenID Connect provider
//! (panva's certified `oidc-provider`, run by Node over HTTPS on 127.0.0.1 with a test CA:
//! `common::oidc`). Tokens come from real `client_credentials` grants. Shown here: the relay
//! finds the keys through discovery and pairs the provider's helper and sharer; it follows
//! a key rotation without SIGHUP (old and new tokens during the overlap, the removed key
//! refused after it); with the provider down it keeps verifying, from memory and after a
//! restart from its cache, and counts the failures; a bad key set changes nothing; a burst
//! of tokens with made-up `kid`s causes at most one fetch per interval; `check-config
//! --fetch` names what is wrong.

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use common::oidc::{BadJwks, OidcProvider, ProviderOptions};
use common::{TestRelay, TestRelayBuilder, join_and_consent, metrics, within};
use remote_help_proto::ErrorCode;
use remote_help_relay::claim_map::{ClaimMapping, Preset};
use remote_help_relay::config::Config;
use remote_help_relay::core::{Mode, Role, TenantId};
use remote_help_relay::issuer::TokenSigner;
use remote_help_relay::tenant_keys::{FetchSettings, ProviderKeys};
use serde_json::{Value, json};

/// A Keycloak-style access token's own claims, as the provider adds them for each client:
/// realm roles (the licence, and the helpdesk role the test tenant's assignment names).
fn helper_claims() -> Value {
    json!({"realm_access": {"roles": ["remote-help", "helpdesk"]}, "name": "Ada Lovelace"})
}

fn sharer_claims() -> Value {
    json!({
        "realm_access": {"roles": ["remote-help"]}, "name": "Grace Hopper",
        "device_id": "d-1", "device_name": "GRACE-LAPTOP", "platform": "windows",
        "enrolled": true, "compliant": true
    })
}

async fn provider(test: &str) -> Option<OidcProvider> {
    OidcProvider::start(
        ProviderOptions::new(test)
            .client("helper-app", helper_claims())
            .client("sharer-app", sharer_claims()),
    )
    .await
}

/// A relay whose tenant `id` is configured with only the provider's issuer (and its test CA),
/// the Keycloak claim preset, its state in `state` (kept across relays), and `settings`
/// adjusted by `tweak`.
fn relay_for(
    provider: &OidcProvider,
    id: &str,
    state: &Path,
    tweak: impl FnOnce(&mut FetchSettings) + 'static,
) -> TestRelayBuilder {
    let (tenant_id, issuer, ca, state) = (
        id.to_string(),
        provider.issuer().to_string(),
        provider.ca_pem_path(),
        state.to_path_buf(),
    );
    TestRelay::builder()
        .provider_tenant(
            id,
            // Never signs anything the provider's tenant accepts: its keys come by URL.
            TokenSigner::generate_es256("unused").unwrap(),
            provider.issuer(),
            None,
            ClaimMapping::preset(Preset::Keycloak),
        )
        .config(move |c| {
            c.state_dir = state;
            tweak(&mut c.key_fetch);
            by_url(c, &tenant_id, &issuer, Some(ca));
        })
}

/// Makes tenant `id` of `config` take its keys from `issuer` by discovery.
fn by_url(config: &mut Config, id: &str, issuer: &str, ca_file: Option<PathBuf>) {
    let source = ProviderKeys {
        issuer: issuer.to_string(),
        jwks_uri: None,
        ca_file,
    };
    common::keys_from_provider(config, id, source);
}

/// Waits until `count` more fetches of `tenant`'s keys have finished (successful or not).
async fn fetches_finish(relay: &TestRelay, tenant: &str, count: u64) {
    let mut finished = relay
        .handle
        .key_fetches(&TenantId::new(tenant))
        .expect("a tenant configured by URL");
    let start = *finished.borrow_and_update();
    within(finished.wait_for(|n| *n >= start + count))
        .await
        .unwrap();
}

/// Waits until at least `count` fetches of `tenant`'s keys have finished since it started.
async fn fetched_at_least(relay: &TestRelay, tenant: &str, count: u64) {
    let mut finished = relay
        .handle
        .key_fetches(&TenantId::new(tenant))
        .expect("a tenant configured by URL");
    within(finished.wait_for(|n| *n >= count)).await.unwrap();
}

async fn metric(relay: &TestRelay, series: &str) -> f64 {
    metrics(relay.handle.admin_addr().unwrap())
        .await
        .get(series)
        .copied()
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_tenant_configured_by_issuer_url_verifies_the_providers_tokens_through_discovery() {
    let Some(provider) = provider("idp::discovery").await else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let relay = relay_for(&provider, "acme", state.path(), |_| {})
        .start()
        .await;
    let mut helper = relay
        .connect(provider.token("helper-app").await, Role::Helper)
        .await
        .unwrap();
    let mut sharer = relay
        .connect(provider.token("sharer-app").await, Role::Sharer)
        .await
        .unwrap();
    let me = helper.me().unwrap().clone();
    assert_eq!(me.subject, "helper-app");
    assert_eq!(me.tenant_id, "acme");
    assert_eq!(me.given_name, "Ada Lovelace");
    let created = within(helper.create_session(Mode::FullControl))
        .await
        .unwrap();
    join_and_consent(&mut helper, &mut sharer, &created.code).await;

    assert!(provider.discovery_requests().await >= 1);
    assert!(provider.jwks_requests().await >= 1);
    assert_eq!(
        metric(&relay, "relay_tenant_keys_in_force{tenant=\"acme\"}").await,
        1.0
    );
    // The accepted set is cached in the state folder, as served (written after the keys are
    // in force, before the fetch counts as finished).
    fetched_at_least(&relay, "acme", 1).await;
    let cached: Value = serde_json::from_slice(
        &std::fs::read(state.path().join("tenant-keys/acme.jwks.json")).unwrap(),
    )
    .unwrap();
    assert_eq!(cached["issuer"], provider.issuer());
    assert_eq!(
        cached["jwks"]["keys"][0]["kid"],
        provider.keys().await.signing.as_str()
    );

    // A reload with the tenant as it was keeps its keys and fetches nothing.
    let requests = provider.jwks_requests().await;
    let mut same = Config::with_defaults(relay.addr(), vec![relay.tenant("acme").config()]);
    same.state_dir = state.path().to_path_buf();
    by_url(
        &mut same,
        "acme",
        provider.issuer(),
        Some(provider.ca_pem_path()),
    );
    relay.handle.reload(&same);
    let again = relay
        .connect(provider.token("helper-app").await, Role::Helper)
        .await
        .unwrap();
    assert_eq!(provider.jwks_requests().await, requests);
    drop((helper, sharer, again));
    relay.stop().await;
}

#[tokio::test]
async fn a_key_rotation_at_the_provider_is_followed_without_sighup() {
    let Some(provider) = provider("idp::rotation").await else {
        return;
    };
    // Scheduled fetches every second, as the provider's max-age says.
    provider.set_jwks_max_age(1).await;
    let state = tempfile::tempdir().unwrap();
    let relay = relay_for(&provider, "rotating", state.path(), |s| {
        s.refresh_min = Duration::from_secs(1);
        s.retry = Duration::from_secs(1);
    })
    .start()
    .await;
    let old_kid = provider.keys().await.signing;
    let old_token = provider.token("helper-app").await;
    relay
        .connect(old_token.clone(), Role::Helper)
        .await
        .unwrap();

    // Overlap: the provider signs with a new key and still publishes the old one.
    let new_kid = provider.add_signing_key().await;
    assert_ne!(new_kid, old_kid);
    let new_token = provider.token("helper-app").await;
    relay
        .connect(new_token.clone(), Role::Helper)
        .await
        .unwrap();
    relay
        .connect(old_token.clone(), Role::Helper)
        .await
        .unwrap();

    // The provider drops the old key; once a fetch that started after that has finished,
    // the old key's tokens are refused and the new key's still verify.
    provider.retire_key(&old_kid).await;
    fetches_finish(&relay, "rotating", 2).await;
    let refused = relay.connect(old_token, Role::Helper).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::TokenInvalid), "{refused}");
    relay.connect(new_token, Role::Helper).await.unwrap();
    assert!(
        metric(
            &relay,
            "relay_tenant_keys_fetches_total{tenant=\"rotating\",trigger=\"schedule\",result=\"ok\"}"
        )
        .await
            >= 1.0
    );
    relay.stop().await;
}

#[tokio::test]
async fn with_the_provider_down_cached_keys_keep_working_and_failures_are_counted() {
    let Some(mut provider) = provider("idp::provider_down").await else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let relay = relay_for(&provider, "outage", state.path(), |_| {})
        .start()
        .await;
    let token = provider.token("sharer-app").await;
    relay.connect(token.clone(), Role::Sharer).await.unwrap();

    provider.stop().await;
    // Keys in memory still verify.
    relay.connect(token.clone(), Role::Sharer).await.unwrap();
    // A token naming a key the relay lacks makes it try the provider, which fails.
    let stranger = TokenSigner::generate_es256("made-up").unwrap();
    let mut claims: Value = decode_claims(&token);
    claims["exp"] = json!(common::now() + 600);
    let forged = stranger.sign(&claims).unwrap();
    let refused = relay.connect(forged, Role::Sharer).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::TokenInvalid), "{refused}");
    assert!(
        metric(
            &relay,
            "relay_tenant_keys_fetch_failures_total{tenant=\"outage\",reason=\"connect\"}"
        )
        .await
            >= 1.0
    );
    relay.stop().await;

    // A restart while the provider is still down verifies from the cache.
    let restarted = relay_for(&provider, "outage", state.path(), |_| {})
        .start()
        .await;
    restarted
        .connect(token.clone(), Role::Sharer)
        .await
        .unwrap();
    assert_eq!(
        metric(&restarted, "relay_tenant_keys_in_force{tenant=\"outage\"}").await,
        1.0
    );

    // The provider comes back; the relay fetches again and carries on.
    provider.restart().await;
    let after = provider.token("sharer-app").await;
    restarted.connect(after, Role::Sharer).await.unwrap();
    restarted.stop().await;
}

#[tokio::test]
async fn a_provider_serving_a_bad_key_set_changes_nothing() {
    let Some(provider) = provider("idp::bad_key_set").await else {
        return;
    };
    provider.set_jwks_max_age(1).await;
    let state = tempfile::tempdir().unwrap();
    let relay = relay_for(&provider, "badset", state.path(), |s| {
        s.refresh_min = Duration::from_secs(1);
        s.retry = Duration::from_secs(1);
    })
    .start()
    .await;
    let token = provider.token("helper-app").await;
    relay.connect(token.clone(), Role::Helper).await.unwrap();
    // The cache is written after the keys are in force, before the fetch counts as finished.
    fetched_at_least(&relay, "badset", 1).await;
    let cache = state.path().join("tenant-keys/badset.jwks.json");
    let cached = std::fs::read(&cache).unwrap();

    for (bad, reason) in [
        (BadJwks::NotJson, "not_json"),
        (BadJwks::Rsa1024, "key_set_refused"),
        (BadJwks::Oct, "key_set_refused"),
        (BadJwks::Empty, "key_set_refused"),
        (BadJwks::ServerError, "http_status"),
        (BadJwks::Oversized, "too_large"),
    ] {
        let series = format!(
            "relay_tenant_keys_fetch_failures_total{{tenant=\"badset\",reason=\"{reason}\"}}"
        );
        let before = metric(&relay, &series).await;
        provider.serve_bad_jwks(bad).await;
        // A fetch that started after the switch has finished.
        fetches_finish(&relay, "badset", 2).await;
        assert!(metric(&relay, &series).await > before, "{bad:?}: {series}");
        relay
            .connect(token.clone(), Role::Helper)
            .await
            .unwrap_or_else(|e| panic!("{bad:?}: the good key was lost: {e}"));
        assert_eq!(
            metric(&relay, "relay_tenant_keys_in_force{tenant=\"badset\"}").await,
            1.0,
            "{bad:?}"
        );
        assert_eq!(
            std::fs::read(&cache).unwrap(),
            cached,
            "{bad:?}: cache replaced"
        );
    }
    provider.serve_good_jwks().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_burst_of_made_up_kids_fetches_at_most_once_per_interval() {
    let Some(provider) = provider("idp::kid_burst").await else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let relay = relay_for(&provider, "burst", state.path(), |_| {})
        .start()
        .await;
    let token = provider.token("helper-app").await;
    relay.connect(token.clone(), Role::Helper).await.unwrap();
    let before = provider.jwks_requests().await;

    let claims = decode_claims(&token);
    let forged: Vec<String> = (0..24)
        .map(|i| {
            TokenSigner::generate_es256(&format!("random-{i}-{:x}", rand::random::<u64>()))
                .unwrap()
                .sign(&claims)
                .unwrap()
        })
        .collect();
    // Half at once (they wait for one fetch together), half one after another (after that
    // fetch has finished: each would start its own without the interval).
    let (together, in_turn) = forged.split_at(12);
    let attempts = together
        .iter()
        .map(|t| relay.connect(t.clone(), Role::Helper));
    for result in futures_util::future::join_all(attempts).await {
        let refused = result.unwrap_err();
        assert_eq!(refused.code(), Some(ErrorCode::TokenInvalid), "{refused}");
    }
    for token in in_turn {
        let refused = relay
            .connect(token.clone(), Role::Helper)
            .await
            .unwrap_err();
        assert_eq!(refused.code(), Some(ErrorCode::TokenInvalid), "{refused}");
    }
    // The default interval (300 s) allows one fetch for unknown kids in this test's life.
    let fetched = provider.jwks_requests().await - before;
    assert!(
        fetched <= 1,
        "{fetched} key set fetches for 24 made-up kids"
    );
    let throttled = metric(
        &relay,
        "relay_tenant_keys_unknown_kid_total{tenant=\"burst\",decision=\"throttled\"}",
    )
    .await;
    let joined = metric(
        &relay,
        "relay_tenant_keys_unknown_kid_total{tenant=\"burst\",decision=\"joined\"}",
    )
    .await;
    assert_eq!(throttled + joined, 24.0 - fetched as f64);
    // The real key still verifies.
    relay.connect(token, Role::Helper).await.unwrap();
    relay.stop().await;
}

#[tokio::test]
async fn check_config_fetch_tries_the_provider_and_names_what_is_wrong() {
    let Some(provider) = provider("idp::check_config_fetch").await else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let write = |ca: bool| {
        let path = dir.path().join("relay.toml");
        let ca_line = if ca {
            format!("ca_file = {:?}\n", provider.ca_pem_path())
        } else {
            String::new()
        };
        std::fs::write(
            &path,
            format!(
                "[server]\nstate_dir = \"state\"\n[audit]\ndir = \"audit\"\n\
                 [[tenants]]\nid = \"acme\"\nissuer = {:?}\nclaims = \"keycloak\"\n{ca_line}",
                provider.issuer()
            ),
        )
        .unwrap();
        path
    };
    let check = |path: &Path| {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
            .args(["check-config", "--fetch"])
            .arg(path)
            .output()
            .unwrap();
        (
            out.status.code(),
            String::from_utf8_lossy(&out.stdout).into_owned(),
        )
    };
    let kid = provider.keys().await.signing;
    let (code, out) = check(&write(true));
    assert_eq!(code, Some(0), "{out}");
    assert!(
        out.contains(&format!(
            "tenants[0] (acme): ok: 1 key(s) from {}/jwks (kids [\"{kid}\"])",
            provider.issuer()
        )),
        "{out}"
    );
    // Without the tenant's CA file the provider's certificate is not trusted.
    let (code, out) = check(&write(false));
    assert_eq!(code, Some(69), "{out}");
    assert!(out.contains("tenants[0] (acme): tls: TLS with "), "{out}");
    // A discovery document naming another issuer is refused.
    provider.serve_wrong_issuer(true).await;
    let (code, out) = check(&write(true));
    assert_eq!(code, Some(69), "{out}");
    assert!(
        out.contains(&format!(
            "tenants[0] (acme): issuer_mismatch: the discovery document's issuer \"{}/not-this-one\" is not the configured issuer \"{}\"",
            provider.issuer(),
            provider.issuer()
        )),
        "{out}"
    );
    provider.serve_wrong_issuer(false).await;
}

/// The claims of a token (not verified: the test made it).
fn decode_claims(token: &str) -> Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}

#[tokio::test]
async fn a_tenant_administrator_signs_in_to_the_reports_api_with_the_providers_token() {
    use remote_help_relay::core::policy::{Assignment, Permission, PermissionSet, Scope};
    let Some(admin_provider) = OidcProvider::start(
        ProviderOptions::new("idp::administrator")
            .audience("remote-help-relay/admin")
            .client(
                "admin-app",
                json!({"realm_access": {"roles": ["report-readers"]}}),
            ),
    )
    .await
    else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let relay = relay_for(&admin_provider, "acme-admin", state.path(), |_| {})
        .policy("acme-admin", |policy| {
            policy.assignments.push(Assignment {
                permissions: PermissionSet::granting([Permission::ReadReports]),
                role: "report readers".into(),
                members: ["report-readers".to_string()].into(),
                scope: Scope::from_entries(["all_users"]),
            })
        })
        .start()
        .await;
    // The provider rotates after the relay's first fetch: the administrator's token names a
    // key the relay does not have yet, and is verified after the fetch it causes, as a
    // helper's token would be.
    fetched_at_least(&relay, "acme-admin", 1).await;
    admin_provider.add_signing_key().await;
    let token = admin_provider.token("admin-app").await;
    let (status, body) = common::http(
        relay.handle.admin_addr().unwrap(),
        "GET",
        "/api/v1/reports/active",
        Some(&token),
    )
    .await;
    assert_eq!(status, 200, "{body}");
    let active: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(active["sessions"], json!([]));
    // An administration token is no session token.
    let refused = relay.connect(token, Role::Helper).await.unwrap_err();
    assert_eq!(refused.code(), Some(ErrorCode::TokenInvalid), "{refused}");
    relay.stop().await;
}
