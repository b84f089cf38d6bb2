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
