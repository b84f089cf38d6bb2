//! Problems the fuzz targets in `fuzz/` found, each kept as an ordinary test with its
//! minimal reproducer (see `docs/fuzzing.md`, "When a target crashes").

use std::time::Duration;

use remote_help_relay::auth::{TenantKeys, TenantTrust, Verifier};
use remote_help_relay::core::TenantId;
use remote_help_relay::issuer::{TokenSigner, jwks_of};
use serde_json::json;

const NOW: u64 = 1_750_000_000;

fn verifier(signer: &TokenSigner) -> Verifier {
    Verifier::new(
        "remote-help-relay".into(),
        Duration::from_secs(60),
        vec![TenantTrust::new(
            TenantId::new("multi"),
            "https://multi.example/".into(),
            TenantKeys::from_jwks(&jwks_of(&[signer]).unwrap()).unwrap(),
        )],
    )
}

/// The fuzzer's minimal valid claims, with `iss` as given, signed by `signer`.
fn signed_with_issuer(signer: &TokenSigner, iss: serde_json::Value) -> String {
    signer
        .sign(&json!({
            "aud": "remote-help-relay",
            "exp": NOW + 3600,
            "iss": iss,
            "sub": "user-1",
            "tid": "multi",
        }))
        .unwrap()
}

/// Fuzz target `token`: a token signed by the tenant's key whose `iss` is an array holding
/// the tenant's issuer and anything else verified. docs/tokens.md says `iss` is a string
/// equal to the tenant's issuer, character for character. (jsonwebtoken accepts an array
/// whose members include the expected issuer; `auth::Claims` now reads `iss` as a string.)
/// Minimal claims the fuzzer found:
/// `{"aud":"remote-help-relay","exp":1750003600,"iss":["https://multi.example/","ed"],"sub":"user-1","tid":"multi"}`.
#[test]
fn an_issuer_array_is_refused() {
    let signer = TokenSigner::generate_ed25519("m-ed").unwrap();
    let verifier = verifier(&signer);
    let token = signed_with_issuer(&signer, json!(["https://multi.example/", "ed"]));
    let verdict = verifier.verify(&token, NOW);
    assert!(verdict.is_err(), "an iss array verified: {verdict:?}");
}

/// The same token with `iss` as the string the contract asks for verifies, so the test
/// above fails only on the array.
#[test]
fn the_same_token_with_a_string_issuer_verifies() {
    let signer = TokenSigner::generate_ed25519("m-ed").unwrap();
    let verifier = verifier(&signer);
    let token = signed_with_issuer(&signer, json!("https://multi.example/"));
    let principal = verifier.verify(&token, NOW).unwrap();
    assert_eq!(principal.tenant.as_str(), "multi");
    assert_eq!(principal.subject, "user-1");
}

/// Fuzz target `token`, claim mapping: a token of a tenant whose mapping reads the user id
/// from `uid` (Okta preset), with `sub` an **array**, was refused with an unreadable reason
/// (jsonwebtoken's own parse of `sub` broke off mid-object), while `sub` of another scalar
/// type was not looked at. RFC 7519 makes `sub` a string; the relay now says so for every
/// tenant, whatever its mapping reads.
#[test]
fn a_non_string_sub_is_refused_by_name_under_any_mapping() {
    use remote_help_relay::claim_map::{ClaimMapping, Preset};
    let signer = TokenSigner::generate_ed25519("okta-1").unwrap();
    let issuer = "https://org.okta.com/oauth2/aus1";
    let verifier = Verifier::new(
        "remote-help-relay".into(),
        Duration::from_secs(60),
        vec![TenantTrust {
            claims: ClaimMapping::preset(Preset::Okta),
            ..TenantTrust::new(
                TenantId::new("okta"),
                issuer.into(),
                TenantKeys::from_jwks(&jwks_of(&[&signer]).unwrap()).unwrap(),
            )
        }],
    );
    let token = |sub: serde_json::Value| {
        signer
            .sign(&json!({
                "aud": "remote-help-relay", "exp": NOW + 3600, "iss": issuer,
                "uid": "00u1", "sub": sub,
            }))
            .unwrap()
    };
    assert_eq!(
        verifier
            .verify(&token(json!("ada@example.com")), NOW)
            .unwrap()
            .subject,
        "00u1"
    );
    for sub in [json!([]), json!({}), json!(5), json!(true)] {
        let err = verifier.verify(&token(sub.clone()), NOW).unwrap_err();
        assert_eq!(
            err.to_string(),
            "claim problem: sub must be a string",
            "sub {sub}"
        );
    }
}
