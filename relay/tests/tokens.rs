//! Token verification end to end: every way a token can be wrong is refused over QUIC with
//! the right code, and every supported algorithm is accepted.

mod common;

use base64::Engine as _;
use common::{TestRelay, now, rsa_signer, with_claims};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use remote_help_proto::ErrorCode;
use remote_help_relay::core::Role;
use remote_help_relay::dev::Persona;
use remote_help_relay::issuer::TokenSigner;
use serde_json::json;

fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
}

#[tokio::test]
async fn ed25519_es256_and_rs256_tenants_all_authenticate() {
    let relay = TestRelay::builder()
        .tenant("ed", TokenSigner::generate_ed25519("ed-1").unwrap())
        .tenant("ec", TokenSigner::generate_es256("ec-1").unwrap())
        .tenant("rsa", rsa_signer("rsa-1"))
        .start()
        .await;
    for tenant in ["ed", "ec", "rsa"] {
        let client = relay
            .connect(relay.tenant(tenant).token(Persona::Helper), Role::Helper)
            .await
            .unwrap_or_else(|e| panic!("{tenant}: {e}"));
        assert_eq!(client.me().unwrap().tenant_id, tenant);
        client.close().await;
    }
    relay.stop().await;
}

#[tokio::test]
async fn every_bad_token_is_refused_with_its_code() {
    let relay = TestRelay::builder()
        .tenant("contoso", TokenSigner::generate_ed25519("c1").unwrap())
        .tenant("fabrikam", TokenSigner::generate_es256("f1").unwrap())
        .start()
        .await;
    let contoso = relay.tenant("contoso");
    let fabrikam = relay.tenant("fabrikam");
    let valid = contoso.spec(Persona::Helper);

    // A stranger's key that claims contoso's kid: a forged signature.
    let forger = TokenSigner::generate_ed25519("c1").unwrap();
    // The same claims signed with HS256, using the public JWK as the "secret": the
    // classic algorithm-confusion attack.
    let public_jwk = serde_json::to_vec(&contoso.signer.public_jwk().unwrap()).unwrap();
    let mut hs_header = Header::new(Algorithm::HS256);
    hs_header.kid = Some("c1".into());
    let hmac = jsonwebtoken::encode(
        &hs_header,
        &valid.claims(),
        &EncodingKey::from_secret(&public_jwk),
    )
    .unwrap();
    // alg "none", no signature.
    let none = format!(
        "{}.{}.",
        b64(br#"{"alg":"none","typ":"JWT","kid":"c1"}"#),
        b64(&serde_json::to_vec(&valid.claims()).unwrap())
    );
    // fabrikam's ES256 key signs a token that claims to be contoso's (tid contoso).
    let wrong_tenant_key = fabrikam.sign(&valid);
    // A contoso token sent with kid "f1" is not found among contoso's keys.
    let mut unknown_kid_header = Header::new(Algorithm::EdDSA);
    unknown_kid_header.kid = Some("nope".into());

    let mut expired = valid.clone();
    expired.issued_at = now() - 7200;
    expired.expires_at = now() - 3600;
    let mut barely_expired_within_leeway = valid.clone();
    barely_expired_within_leeway.expires_at = now() - 10;
    let mut not_yet_valid = valid.clone();
    not_yet_valid.issued_at = now() + 3600;
    let mut wrong_audience = valid.clone();
    wrong_audience.audience = "some-other-service".into();
    let mut wrong_issuer = valid.clone();
    wrong_issuer.issuer = "https://evil.example/".into();
    let mut unknown_tenant = valid.clone();
    unknown_tenant.tenant = "initech".into();
    let bad_kind = with_claims(valid.clone(), json!({"kind": "robot"}));
    let mut no_sub_claims = valid.claims();
    no_sub_claims.as_object_mut().unwrap().remove("sub");

    let cases: Vec<(&str, String, Option<ErrorCode>)> = vec![
        ("valid", contoso.sign(&valid), None),
        (
            "within leeway",
            contoso.sign(&barely_expired_within_leeway),
            None,
        ),
        (
            "forged signature",
            forger.sign(&valid.claims()).unwrap(),
            Some(ErrorCode::TokenInvalid),
        ),
        (
            "hmac with the public key",
            hmac,
            Some(ErrorCode::TokenInvalid),
        ),
        ("alg none", none, Some(ErrorCode::TokenInvalid)),
        (
            "another tenant's key",
            wrong_tenant_key,
            Some(ErrorCode::TokenInvalid),
        ),
        (
            "expired",
            contoso.sign(&expired),
            Some(ErrorCode::TokenExpired),
        ),
        (
            "not yet valid",
            contoso.sign(&not_yet_valid),
            Some(ErrorCode::TokenExpired),
        ),
        (
            "wrong audience",
            contoso.sign(&wrong_audience),
            Some(ErrorCode::TokenInvalid),
        ),
        (
            "wrong issuer",
            contoso.sign(&wrong_issuer),
            Some(ErrorCode::TokenInvalid),
        ),
        (
            "unknown tenant",
            contoso.sign(&unknown_tenant),
            Some(ErrorCode::TenantUnknown),
        ),
        (
            "unknown kind",
            contoso.sign(&bad_kind),
            Some(ErrorCode::TokenInvalid),
        ),
        (
            "missing sub",
            contoso.sign_claims(&no_sub_claims),
            Some(ErrorCode::TokenInvalid),
        ),
        ("garbage", "not-a-jwt".into(), Some(ErrorCode::TokenInvalid)),
        ("empty", String::new(), Some(ErrorCode::TokenInvalid)),
        ("huge", "a".repeat(20_000), Some(ErrorCode::TokenInvalid)),
    ];
    for (name, token, expected) in cases {
        let result = relay.connect(token, Role::Helper).await;
        match (expected, result) {
            (None, Ok(client)) => client.close().await,
            (None, Err(e)) => panic!("{name}: refused: {e}"),
            (Some(code), Ok(_)) => panic!("{name}: accepted, expected {code}"),
            (Some(code), Err(e)) => assert_eq!(e.code(), Some(code), "{name}: {e}"),
        }
    }
    // After all that, the relay holds nothing and still serves honest clients.
    relay.wait_until_empty().await;
    relay.helper("contoso").await.close().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_device_token_cannot_act_as_helper() {
    let relay = TestRelay::start().await;
    let contoso = relay.tenant("contoso");
    let device = with_claims(contoso.spec(Persona::Sharer), json!({"kind": "device"}));
    let err = relay
        .connect(contoso.sign(&device), Role::Helper)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::WrongRole));
    // The same token may share.
    relay
        .connect(contoso.sign(&device), Role::Sharer)
        .await
        .unwrap()
        .close()
        .await;
    relay.stop().await;
}

#[tokio::test]
async fn during_key_rotation_tokens_signed_by_either_key_are_accepted() {
    let relay = TestRelay::builder()
        .tenant_with_keys(
            "contoso",
            TokenSigner::generate_ed25519("2025").unwrap(),
            vec![TokenSigner::generate_es256("2026").unwrap()],
        )
        .start()
        .await;
    let contoso = relay.tenant("contoso");
    let claims = contoso.spec(Persona::Helper).claims();
    for signer in std::iter::once(&contoso.signer).chain(&contoso.more_signers) {
        let client = relay
            .connect(signer.sign(&claims).unwrap(), Role::Helper)
            .await
            .unwrap_or_else(|e| panic!("kid {}: {e}", signer.kid()));
        client.close().await;
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_client_pinning_the_wrong_fingerprint_does_not_connect() {
    let relay = TestRelay::start().await;
    let mut options = relay.options(relay.tenant("contoso").token(Persona::Helper), Role::Helper);
    options.trust =
        remote_help_relay::tls::RelayTrust::Pin(remote_help_relay::tls::Fingerprint([0; 32]));
    let err = common::within(remote_help_relay::client::Client::connect(options))
        .await
        .err()
        .unwrap();
    assert!(
        matches!(err, remote_help_relay::client::ClientError::Connection(_)),
        "{err}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_relay_with_a_ca_signed_certificate_is_trusted_by_ca_and_refused_by_another_ca() {
    use remote_help_relay::config::TlsSource;
    use remote_help_relay::tls::RelayTrust;
    // A private CA and a relay certificate it signs, as PEM files the config names.
    let dir = tempfile::tempdir().unwrap();
    let ca_key = rcgen::KeyPair::generate().unwrap();
    let mut ca_params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    ca_params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca_params
        .distinguished_name
        .push(rcgen::DnType::CommonName, "Test Relay CA");
    let ca_cert = ca_params.self_signed(&ca_key).unwrap();
    let issuer = rcgen::Issuer::new(ca_params, ca_key);
    let relay_key = rcgen::KeyPair::generate().unwrap();
    let relay_params = rcgen::CertificateParams::new(vec!["relay.test".to_string()]).unwrap();
    let relay_cert = relay_params.signed_by(&relay_key, &issuer).unwrap();
    std::fs::write(dir.path().join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.path().join("relay.pem"), relay_cert.pem()).unwrap();
    std::fs::write(dir.path().join("relay.key"), relay_key.serialize_pem()).unwrap();
    let (cert, key) = (dir.path().join("relay.pem"), dir.path().join("relay.key"));
    let relay = TestRelay::builder()
        .config(move |c| c.tls = TlsSource::Files { cert, key })
        .start()
        .await;

    let token = relay.tenant("contoso").token(Persona::Helper);
    let mut options = relay.options(token.clone(), Role::Helper);
    options.trust = RelayTrust::ca_file(&dir.path().join("ca.pem")).unwrap();
    options.server_name = "relay.test".into();
    let client = common::within(remote_help_relay::client::Client::connect(options.clone()))
        .await
        .unwrap();
    client.close().await;

    // The right CA but the wrong name, or another CA: no connection.
    let mut wrong_name = options.clone();
    wrong_name.server_name = "other.test".into();
    assert!(
        common::within(remote_help_relay::client::Client::connect(wrong_name))
            .await
            .is_err()
    );
    let other_ca = rcgen::generate_simple_self_signed(vec!["relay.test".to_string()]).unwrap();
    let mut wrong_ca = options;
    wrong_ca.trust = RelayTrust::CaCerts(vec![other_ca.cert.der().clone()]);
    assert!(
        common::within(remote_help_relay::client::Client::connect(wrong_ca))
            .await
            .is_err()
    );
    relay.stop().await;
}

/// The tenant's key, as jsonwebtoken wants it, for tokens with hand-made headers.
fn contoso_key(relay: &TestRelay) -> EncodingKey {
    EncodingKey::from_ed_pem(relay.tenant("contoso").signer.private_pem().as_bytes()).unwrap()
}

#[tokio::test]
async fn a_token_with_a_critical_header_extension_is_refused() {
    // RFC 7515 §4.1.11: a recipient that does not understand every parameter `crit` lists
    // must reject the JWS. The relay understands none.
    let relay = TestRelay::start().await;
    let contoso = relay.tenant("contoso");
    let claims = contoso.spec(Persona::Helper).claims();
    let mut header = Header::new(Algorithm::EdDSA);
    header.kid = Some(contoso.signer.kid().into());
    let key = contoso_key(&relay);
    // The same header without `crit` verifies: the signature and claims are sound.
    let plain = jsonwebtoken::encode(&header, &claims, &key).unwrap();
    relay
        .connect(plain, Role::Helper)
        .await
        .unwrap()
        .close()
        .await;
    for crit in [
        vec!["exp".to_string()],
        vec!["urn:example:ext".into()],
        vec![],
    ] {
        let mut critical = header.clone();
        critical.crit = Some(crit.clone());
        let token = jsonwebtoken::encode(&critical, &claims, &key).unwrap();
        let err = relay.connect(token, Role::Helper).await.unwrap_err();
        assert_eq!(
            err.code(),
            Some(ErrorCode::TokenInvalid),
            "crit {crit:?}: {err}"
        );
        assert!(err.to_string().contains("crit"), "{err}");
    }
    relay.wait_until_empty().await;
    relay.stop().await;
}

#[tokio::test]
async fn time_claims_of_the_wrong_type_are_token_invalid() {
    let relay = TestRelay::start().await;
    let contoso = relay.tenant("contoso");
    let valid = contoso.spec(Persona::Helper).claims();
    // Numbers of any kind are times for `iat`; `null` counts as absent.
    for iat in [json!(1.5), json!(null)] {
        let mut claims = valid.clone();
        claims["iat"] = iat.clone();
        relay
            .connect(contoso.sign_claims(&claims), Role::Helper)
            .await
            .unwrap_or_else(|e| panic!("iat {iat}: {e}"))
            .close()
            .await;
    }
    let cases = [
        ("iat", json!("yesterday")),
        ("iat", json!([1])),
        ("iat", json!({"t": 1})),
        ("iat", json!(true)),
        ("exp", json!("tomorrow")),
        ("exp", json!([now() + 3600])),
        ("exp", json!(null)),
        ("nbf", json!("yesterday")),
        ("nbf", json!([1])),
        ("jti", json!(7)),
    ];
    for (name, value) in cases {
        let mut claims = valid.clone();
        claims[name] = value.clone();
        let err = relay
            .connect(contoso.sign_claims(&claims), Role::Helper)
            .await
            .err()
            .unwrap_or_else(|| panic!("{name} = {value} was accepted"));
        assert_eq!(
            err.code(),
            Some(ErrorCode::TokenInvalid),
            "{name} = {value}: {err}"
        );
        assert!(err.to_string().contains(name), "{name} = {value}: {err}");
    }
    relay.wait_until_empty().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_claim_named_twice_is_token_invalid() {
    // RFC 7519 §4: duplicate member names are rejected, so no two JSON parsers can read
    // one token two ways (here: a second `tid`, and a second nested `roles`).
    let relay = TestRelay::start().await;
    let contoso = relay.tenant("contoso");
    let valid = contoso.spec(Persona::Helper).claims();
    let body = serde_json::to_string(&valid).unwrap();
    let header = {
        let mut h = Header::new(Algorithm::EdDSA);
        h.kid = Some(contoso.signer.kid().into());
        b64(&serde_json::to_vec(&h).unwrap())
    };
    let key = ring::signature::Ed25519KeyPair::from_pkcs8_maybe_unchecked(&pem_der(
        contoso.signer.private_pem(),
    ))
    .unwrap();
    let sign = |payload: &str| {
        let message = format!("{header}.{}", b64(payload.as_bytes()));
        let signature = key.sign(message.as_bytes());
        format!("{message}.{}", b64(signature.as_ref()))
    };
    // The hand-signed token without duplicates verifies.
    relay
        .connect(sign(&body), Role::Helper)
        .await
        .unwrap()
        .close()
        .await;
    let twice = body.replacen('{', "{\"tid\":\"fabrikam\",", 1);
    let nested = body.replacen('{', "{\"x\":{\"roles\":[],\"roles\":[\"a\"]},", 1);
    for payload in [twice, nested] {
        let err = relay
            .connect(sign(&payload), Role::Helper)
            .await
            .unwrap_err();
        assert_eq!(
            err.code(),
            Some(ErrorCode::TokenInvalid),
            "{payload}: {err}"
        );
    }
    relay.wait_until_empty().await;
    relay.stop().await;
}

/// The DER inside a PEM text.
fn pem_der(pem: &str) -> Vec<u8> {
    let body: String = pem.lines().filter(|l| !l.starts_with("-----")).collect();
    base64::engine::general_purpose::STANDARD
        .decode(body)
        .unwrap()
}

#[test]
fn an_rsa_key_below_2048_bits_is_refused_when_the_config_loads() {
    use remote_help_relay::config::{Config, ConfigError};
    use remote_help_relay::issuer::jwks_of;
    let dir = tempfile::tempdir().unwrap();
    let weak = TokenSigner::from_pem(
        "weak-1024",
        Algorithm::RS256,
        include_str!("fixtures/rsa-1024-test-key.pem"),
    )
    .unwrap();
    let strong = rsa_signer("strong-2048");
    std::fs::write(
        dir.path().join("k.json"),
        serde_json::to_string(&jwks_of(&[&strong, &weak]).unwrap()).unwrap(),
    )
    .unwrap();
    let text = "[[tenants]]\nid = \"initech\"\nissuer = \"https://login.initech.example/\"\njwks_file = \"k.json\"\n";
    std::fs::write(dir.path().join("relay.toml"), text).unwrap();
    let problems = match Config::load(&dir.path().join("relay.toml")) {
        Err(ConfigError::Invalid(problems)) => problems,
        other => panic!("a 1,024-bit key loaded: {other:?}"),
    };
    assert_eq!(problems.len(), 1, "{problems:?}");
    assert_eq!(problems[0].field, "tenants[0].jwks_file");
    let reason = &problems[0].reason;
    for needle in [
        "\"initech\"",
        "keys[1]",
        "\"weak-1024\"",
        "1024 bits",
        "2048",
    ] {
        assert!(reason.contains(needle), "{needle} not in {reason}");
    }
    // The 2,048-bit key alone loads.
    std::fs::write(
        dir.path().join("k.json"),
        serde_json::to_string(&jwks_of(&[&strong]).unwrap()).unwrap(),
    )
    .unwrap();
    Config::load(&dir.path().join("relay.toml")).unwrap();
}
