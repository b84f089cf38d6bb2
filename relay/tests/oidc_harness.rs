//! The OpenID Connect provider harness (`common::oidc`) does what the tests of keys by URL
//! rely on: checked from the outside, over real HTTPS against the test CA, with token
//! signatures verified against the key set the provider serves.

mod common;

use common::oidc::{BadJwks, OidcAlg, OidcProvider, ProviderOptions};
use jsonwebtoken::jwk::JwkSet;
use jsonwebtoken::{DecodingKey, Validation};
use remote_help_relay::config::DEFAULT_AUDIENCE;
use serde_json::{Value, json};

fn helper_claims() -> Value {
    json!({
        "tid": "contoso",
        "roles": ["helper"],
        "groups": ["helpdesk"],
        "name": "Ada Helper",
        "licenses": ["remote-help"],
    })
}

async fn provider(test: &str) -> Option<OidcProvider> {
    OidcProvider::start(ProviderOptions::new(test).client("helper-app", helper_claims())).await
}

/// GET `url`: status, `Cache-Control` and body.
async fn get(p: &OidcProvider, url: &str) -> (u16, Option<String>, String) {
    let response = common::within(p.http().get(url).send()).await.unwrap();
    let status = response.status().as_u16();
    let cache_control = response
        .headers()
        .get("cache-control")
        .map(|v| v.to_str().unwrap().to_string());
    (
        status,
        cache_control,
        common::within(response.text()).await.unwrap(),
    )
}

/// The key set the provider serves now.
async fn served_jwks(p: &OidcProvider) -> JwkSet {
    let (status, _, body) = get(p, &p.jwks_uri()).await;
    assert_eq!(status, 200, "{body}");
    serde_json::from_str(&body).unwrap()
}

fn kids(set: &JwkSet) -> Vec<String> {
    let mut kids: Vec<String> = set
        .keys
        .iter()
        .filter_map(|k| k.common.key_id.clone())
        .collect();
    kids.sort();
    kids
}

fn kid_of(token: &str) -> String {
    jsonwebtoken::decode_header(token)
        .unwrap()
        .kid
        .expect("tokens carry a kid")
}

/// Verifies `token` against `set` as a relay would: the key by `kid`, the algorithm from
/// the key, signature, `iss`, `aud`, `exp`. Returns the claims, or why not.
fn verify(token: &str, set: &JwkSet, issuer: &str) -> Result<Value, String> {
    let kid = kid_of(token);
    let jwk = set
        .find(&kid)
        .ok_or_else(|| format!("kid {kid} not served"))?;
    let alg = jwk
        .common
        .key_algorithm
        .and_then(|a| a.to_string().parse().ok())
        .ok_or("served key without a signing alg")?;
    let key = DecodingKey::from_jwk(jwk).map_err(|e| e.to_string())?;
    let mut validation = Validation::new(alg);
    validation.set_audience(&[DEFAULT_AUDIENCE]);
    validation.set_issuer(&[issuer]);
    jsonwebtoken::decode::<Value>(token, &key, &validation)
        .map(|t| t.claims)
        .map_err(|e| e.to_string())
}

#[tokio::test]
async fn discovery_names_the_issuer_and_granted_tokens_verify_against_the_served_keys() {
    let Some(p) =
        provider("discovery_names_the_issuer_and_granted_tokens_verify_against_the_served_keys")
            .await
    else {
        return;
    };
    assert!(p.issuer().starts_with("https://127.0.0.1:"));
    let (status, _, body) = get(&p, &p.discovery_url()).await;
    assert_eq!(status, 200);
    let discovery: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(discovery["issuer"], p.issuer());
    assert_eq!(discovery["jwks_uri"], p.jwks_uri());

    let token = p.token("helper-app").await;
    let set = served_jwks(&p).await;
    assert_eq!(kids(&set), [kid_of(&token)]);
    assert_eq!(
        jsonwebtoken::decode_header(&token).unwrap().alg,
        jsonwebtoken::Algorithm::ES256
    );
    let claims = verify(&token, &set, p.issuer()).unwrap();
    for (name, value) in helper_claims().as_object().unwrap() {
        assert_eq!(&claims[name], value, "claim {name}");
    }
    assert_eq!(claims["aud"], DEFAULT_AUDIENCE);
    assert_eq!(claims["iss"], p.issuer());
    assert_eq!(claims["sub"], "helper-app");
}

#[tokio::test]
async fn every_algorithm_signs_tokens_that_verify() {
    for alg in [OidcAlg::Es256, OidcAlg::Rs256, OidcAlg::EdDsa] {
        let options = ProviderOptions::new("every_algorithm_signs_tokens_that_verify")
            .client("helper-app", helper_claims())
            .alg(alg);
        let Some(p) = OidcProvider::start(options).await else {
            return;
        };
        let token = p.token("helper-app").await;
        let set = served_jwks(&p).await;
        verify(&token, &set, p.issuer()).unwrap_or_else(|e| panic!("{alg:?}: {e}"));
    }
}

#[tokio::test]
async fn a_new_key_signs_while_the_old_stays_published_until_retired() {
    let Some(p) = provider("a_new_key_signs_while_the_old_stays_published_until_retired").await
    else {
        return;
    };
    let old_token = p.token("helper-app").await;
    let old = kid_of(&old_token);

    let new = p.add_signing_key().await;
    assert_ne!(new, old);
    let new_token = p.token("helper-app").await;
    assert_eq!(
        kid_of(&new_token),
        new,
        "tokens are signed with the new key"
    );
    let set = served_jwks(&p).await;
    let mut both = vec![old.clone(), new.clone()];
    both.sort();
    assert_eq!(kids(&set), both, "both keys are served during the overlap");
    verify(&old_token, &set, p.issuer()).unwrap();
    verify(&new_token, &set, p.issuer()).unwrap();

    p.retire_key(&old).await;
    let set = served_jwks(&p).await;
    assert_eq!(kids(&set), std::slice::from_ref(&new));
    assert!(verify(&old_token, &set, p.issuer()).is_err());
    verify(&new_token, &set, p.issuer()).unwrap();
    let keys = p.keys().await;
    assert_eq!((keys.signing, keys.published), (new.clone(), vec![new]));
}

#[tokio::test]
async fn bad_key_sets_are_served_until_the_good_one_is_back() {
    let Some(p) = provider("bad_key_sets_are_served_until_the_good_one_is_back").await else {
        return;
    };
    let signing = kid_of(&p.token("helper-app").await);
    for bad in BadJwks::ALL {
        p.serve_bad_jwks(bad).await;
        let (status, _, body) = get(&p, &p.jwks_uri()).await;
        let parsed = serde_json::from_str::<Value>(&body);
        match bad {
            BadJwks::NotJson => assert!(status == 200 && parsed.is_err(), "{body}"),
            BadJwks::Rsa1024 => {
                let key = &parsed.unwrap()["keys"][0];
                assert_eq!(
                    (key["kty"].as_str(), key["kid"].as_str()),
                    (Some("RSA"), Some(&*signing))
                );
                let modulus = base64_url_len(key["n"].as_str().unwrap());
                assert_eq!(modulus * 8, 1024, "a 1024-bit modulus");
            }
            BadJwks::Oct => {
                let key = &parsed.unwrap()["keys"][0];
                assert_eq!(
                    (key["kty"].as_str(), key["kid"].as_str()),
                    (Some("oct"), Some(&*signing))
                );
            }
            BadJwks::Empty => assert_eq!(parsed.unwrap(), json!({"keys": []})),
            BadJwks::ServerError => assert_eq!(status, 500),
            BadJwks::Oversized => assert!(body.len() > 1024 * 1024, "{}", body.len()),
        }
        if bad != BadJwks::ServerError {
            assert_eq!(status, 200);
        }
        // Tokens are still granted and signed with the real key meanwhile.
        assert_eq!(kid_of(&p.token("helper-app").await), signing);
    }
    p.serve_good_jwks().await;
    assert_eq!(kids(&served_jwks(&p).await), [signing]);
}

/// Bytes in an unpadded base64url string.
fn base64_url_len(s: &str) -> usize {
    s.len() * 3 / 4
}

#[tokio::test]
async fn max_age_wrong_issuer_and_request_counts() {
    let Some(p) = provider("max_age_wrong_issuer_and_request_counts").await else {
        return;
    };
    // The harness's own discovery read (at start) is not counted.
    assert_eq!(
        (p.jwks_requests().await, p.discovery_requests().await),
        (0, 0)
    );

    p.set_jwks_max_age(300).await;
    let (_, cache_control, _) = get(&p, &p.jwks_uri()).await;
    assert_eq!(cache_control.as_deref(), Some("max-age=300"));
    p.serve_bad_jwks(BadJwks::Empty).await;
    let (_, cache_control, _) = get(&p, &p.jwks_uri()).await;
    assert_eq!(
        cache_control.as_deref(),
        Some("max-age=300"),
        "bad sets too"
    );
    p.serve_good_jwks().await;
    p.clear_jwks_max_age().await;
    let (_, cache_control, _) = get(&p, &p.jwks_uri()).await;
    assert_ne!(cache_control.as_deref(), Some("max-age=300"));
    assert_eq!(p.jwks_requests().await, 3);

    p.serve_wrong_issuer(true).await;
    let (_, _, body) = get(&p, &p.discovery_url()).await;
    let discovery: Value = serde_json::from_str(&body).unwrap();
    assert_ne!(discovery["issuer"], p.issuer());
    assert_eq!(discovery["jwks_uri"], p.jwks_uri(), "the rest is unchanged");
    p.serve_wrong_issuer(false).await;
    let (_, _, body) = get(&p, &p.discovery_url()).await;
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap()["issuer"],
        p.issuer()
    );
    assert_eq!(p.discovery_requests().await, 2);
    // Tokens are not key-set or discovery requests.
    p.token("helper-app").await;
    assert_eq!(
        (p.jwks_requests().await, p.discovery_requests().await),
        (3, 2)
    );
}

#[tokio::test]
async fn a_stopped_provider_refuses_connections_and_restarts_with_the_same_keys() {
    let Some(mut p) =
        provider("a_stopped_provider_refuses_connections_and_restarts_with_the_same_keys").await
    else {
        return;
    };
    let old = kid_of(&p.token("helper-app").await);
    let new = p.add_signing_key().await;
    let before = served_jwks(&p).await;
    let issuer = p.issuer().to_string();

    p.stop().await;
    let refused = common::within(p.http().get(p.jwks_uri()).send()).await;
    assert!(
        refused.is_err_and(|e| e.is_connect()),
        "a stopped provider refuses connections"
    );

    p.restart().await;
    assert_eq!(p.issuer(), issuer, "the same port");
    let after = served_jwks(&p).await;
    assert_eq!(
        serde_json::to_value(&after).unwrap(),
        serde_json::to_value(&before).unwrap(),
        "the same keys"
    );
    let mut both = vec![old, new.clone()];
    both.sort();
    assert_eq!(kids(&after), both);
    let token = p.token("helper-app").await;
    assert_eq!(kid_of(&token), new, "the same signing key");
    verify(&token, &after, p.issuer()).unwrap();
    // Counted over the provider's whole life: one read before the stop, one after.
    assert_eq!(p.jwks_requests().await, 2);
}
