use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::*;
use crate::issuer::TokenSigner;

fn jwk(signer: &TokenSigner) -> Value {
    serde_json::to_value(signer.public_jwk().unwrap()).unwrap()
}

fn set(keys: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({ "keys": keys })).unwrap()
}

/// A 1,024-bit RSA public key (the modulus's top bit set), as the outside campaign's.
fn weak_rsa() -> Value {
    let n = base64::Engine::encode(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
        [0xC3u8; 128],
    );
    json!({ "kty": "RSA", "kid": "weak", "alg": "RS256", "use": "sig", "n": n, "e": "AQAB" })
}

#[test]
fn max_age_reads_the_directive_and_distrusts_contradictions() {
    assert_eq!(max_age(None), None);
    assert_eq!(max_age(Some("public")), None);
    assert_eq!(
        max_age(Some("public, max-age=3600")),
        Some(Duration::from_secs(3600))
    );
    assert_eq!(
        max_age(Some("Max-Age=\"60\", must-revalidate")),
        Some(Duration::from_secs(60))
    );
    assert_eq!(max_age(Some("no-store")), Some(Duration::ZERO));
    assert_eq!(max_age(Some("max-age=60, no-cache")), Some(Duration::ZERO));
    assert_eq!(max_age(Some("max-age=soon")), Some(Duration::ZERO));
    assert_eq!(
        max_age(Some("max-age=60, max-age=70")),
        Some(Duration::ZERO)
    );
}

#[test]
fn refresh_stays_within_the_bounds() {
    let settings = FetchSettings::default();
    assert_eq!(refresh_after(None, &settings), settings.refresh_default);
    assert_eq!(
        refresh_after(Some(Duration::ZERO), &settings),
        settings.refresh_min
    );
    assert_eq!(
        refresh_after(Some(Duration::from_secs(7 * 86_400)), &settings),
        settings.refresh_max
    );
    assert_eq!(
        refresh_after(Some(Duration::from_secs(1_000)), &settings),
        Duration::from_secs(1_000)
    );
}

#[test]
fn unknown_kids_fetch_once_per_interval_and_join_the_fetch_under_way() {
    let start = Instant::now();
    let mut gate = RefetchGate::new(Duration::from_secs(300));
    assert_eq!(gate.unknown_kid(start), RefetchDecision::Fetch);
    // While it runs, others wait for it rather than starting their own.
    assert_eq!(
        gate.unknown_kid(start + Duration::from_secs(1)),
        RefetchDecision::JoinInFlight
    );
    gate.finished();
    for seconds in [1, 100, 299] {
        assert_eq!(
            gate.unknown_kid(start + Duration::from_secs(seconds)),
            RefetchDecision::Throttled
        );
    }
    assert_eq!(
        gate.unknown_kid(start + Duration::from_secs(300)),
        RefetchDecision::Fetch
    );
    gate.finished();
    // A scheduled fetch under way is joined too, and does not count against the interval.
    let mut gate = RefetchGate::new(Duration::from_secs(300));
    gate.started();
    assert_eq!(gate.unknown_kid(start), RefetchDecision::JoinInFlight);
    gate.finished();
    assert_eq!(gate.unknown_kid(start), RefetchDecision::Fetch);
}

#[test]
fn only_https_urls_with_a_host_are_fetched() {
    for url in [
        "https://login.example.com/t/v2.0",
        "https://127.0.0.1:8443",
        "https://idp.example.com:443/realms/x?q=1",
    ] {
        assert_eq!(check_https(url), Ok(()), "{url}");
    }
    for url in [
        "http://login.example.com",
        "HTTPS://x",
        "https://",
        "https:///path",
        "https://user@evil.example",
        "ftp://x",
        "login.example.com",
    ] {
        assert!(check_https(url).is_err(), "{url}");
    }
}

#[test]
fn discovery_url_follows_openid_discovery() {
    let source = |issuer: &str| ProviderKeys {
        issuer: issuer.into(),
        jwks_uri: None,
        ca_file: None,
    };
    assert_eq!(
        source("https://login.microsoftonline.com/t/v2.0").discovery_url(),
        "https://login.microsoftonline.com/t/v2.0/.well-known/openid-configuration"
    );
    assert_eq!(
        source("https://kc.example.com/realms/acme/").discovery_url(),
        "https://kc.example.com/realms/acme/.well-known/openid-configuration"
    );
}

#[test]
fn the_discovery_document_must_name_the_configured_issuer() {
    let issuer = "https://idp.example.com/realms/acme";
    let doc = |value: Value| serde_json::to_vec(&value).unwrap();
    let url = "https://idp.example.com/realms/acme/.well-known/openid-configuration";
    assert_eq!(
        jwks_uri_of_discovery(
            &doc(json!({"issuer": issuer, "jwks_uri": "https://idp.example.com/certs"})),
            url,
            issuer
        ),
        Ok("https://idp.example.com/certs".to_string())
    );
    let refused = |value: Value| jwks_uri_of_discovery(&doc(value), url, issuer).unwrap_err();
    assert_eq!(
        refused(json!({"issuer": format!("{issuer}/"), "jwks_uri": "https://x/certs"})).reason(),
        "issuer_mismatch"
    );
    assert_eq!(
        refused(json!({"jwks_uri": "https://x/certs"})).reason(),
        "issuer_mismatch"
    );
    assert_eq!(refused(json!({"issuer": issuer})).reason(), "no_jwks_uri");
    assert_eq!(
        refused(json!({"issuer": issuer, "jwks_uri": "http://x/certs"})).reason(),
        "not_https"
    );
    assert_eq!(
        jwks_uri_of_discovery(b"<html>", url, issuer)
            .unwrap_err()
            .reason(),
        "not_json"
    );
}

#[test]
fn a_fetched_set_leaves_out_keys_for_other_purposes_and_refuses_bad_ones_whole() {
    let a = TokenSigner::generate_es256("a").unwrap();
    let b = TokenSigner::generate_ed25519("b").unwrap();
    let url = "https://idp.example.com/certs";

    let mut encryption = jwk(&a);
    encryption["kid"] = json!("enc-1");
    encryption["use"] = json!("enc");
    let p384 = json!({"kty": "EC", "crv": "P-384", "kid": "p384",
        "x": "AAAA", "y": "AAAA", "use": "sig"});
    let pss = json!({"kty": "RSA", "kid": "pss", "alg": "PS256", "n": "AQAB", "e": "AQAB"});
    let fetched =
        keys_of_fetched_set(&set(vec![jwk(&a), encryption, p384, pss, jwk(&b)]), url).unwrap();
    assert_eq!(fetched.kids, ["a", "b"]);
    assert_eq!(fetched.keys.len(), 2);
    assert_eq!(fetched.skipped.len(), 3, "{:?}", fetched.skipped);

    let refused = |keys: Vec<Value>| keys_of_fetched_set(&set(keys), url).unwrap_err();
    assert_eq!(
        refused(vec![jwk(&a), weak_rsa()]).reason(),
        "key_set_refused"
    );
    let hmac = json!({"kty": "oct", "kid": "h", "alg": "HS256", "k": "c2VjcmV0"});
    assert_eq!(
        refused(vec![jwk(&a), hmac.clone()]).reason(),
        "key_set_refused"
    );
    // Declared for encryption or not, a symmetric key refuses the set.
    let mut hmac_enc = hmac;
    hmac_enc["use"] = json!("enc");
    assert_eq!(refused(vec![jwk(&a), hmac_enc]).reason(), "key_set_refused");
    assert_eq!(refused(vec![jwk(&a), jwk(&a)]).reason(), "key_set_refused");
    assert_eq!(refused(vec![]).reason(), "key_set_refused");
    let mut broken = jwk(&a);
    broken["x"] = json!("!!");
    assert_eq!(refused(vec![broken]).reason(), "key_set_refused");
    for body in [&b"not json"[..], b"[]", b"{\"keys\": {}}"] {
        assert_eq!(
            keys_of_fetched_set(body, url).unwrap_err().reason(),
            "not_json"
        );
    }
}

#[test]
fn cache_file_names_cannot_leave_the_folder_or_collide() {
    assert_eq!(
        cache_file_name(&crate::core::TenantId::new("contoso")),
        "contoso.jwks.json"
    );
    let dots = cache_file_name(&crate::core::TenantId::new("../../etc/x"));
    assert!(!dots.contains('/') && !dots.starts_with('.'), "{dots}");
    assert_ne!(
        cache_file_name(&crate::core::TenantId::new("a%2F")),
        cache_file_name(&crate::core::TenantId::new("a/"))
    );
}
