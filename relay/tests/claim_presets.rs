//! Tenants whose tokens come from real identity providers' shapes: Microsoft Entra ID v2.0
//! access tokens, Keycloak and Okta. Each tenant names a claim mapping preset; tokens with
//! the claims those providers issue (really signed) authenticate, produce the right
//! principal and pair in a session over real QUIC, and a token missing a mapped claim is
//! refused with a reason that names it.

mod common;

use common::{TestRelay, join_and_consent, now, within};
use remote_help_proto::ErrorCode;
use remote_help_relay::claim_map::{ClaimMapping, Preset};
use remote_help_relay::core::{Mode, Role};
use remote_help_relay::issuer::TokenSigner;
use serde_json::{Value, json};

const ENTRA_TID: &str = "72f988bf-86f1-41af-91ab-2d7cd011db47";
const ENTRA_ISSUER: &str =
    "https://login.microsoftonline.com/72f988bf-86f1-41af-91ab-2d7cd011db47/v2.0";
/// The relay's app registration (its client id is the v2.0 access tokens' `aud`).
const ENTRA_CLIENT_ID: &str = "6e74172b-be56-4843-9ff4-e66a39bb12e3";
/// The Entra group of the service desk (object id).
const ENTRA_HELPDESK_GROUP: &str = "b7a3e1c4-5d2f-4e8a-9c1b-3f6d8e2a4c10";
const KEYCLOAK_ISSUER: &str = "https://sso.initech.example/realms/initech";
const OKTA_ISSUER: &str = "https://globex.okta.com/oauth2/aus1a2b3c4d5e6f7g8h9";
const OKTA_AUDIENCE: &str = "api://remote-help-relay";

async fn relay() -> TestRelay {
    TestRelay::builder()
        // This project's own shape, side by side with the providers' tenants.
        .tenant(
            "contoso",
            TokenSigner::generate_ed25519("contoso-1").unwrap(),
        )
        .provider_tenant(
            "contoso-entra",
            common::rsa_signer("entra-key-1"),
            ENTRA_ISSUER,
            Some(ENTRA_CLIENT_ID),
            ClaimMapping::preset(Preset::Entra),
        )
        .provider_tenant(
            "initech",
            TokenSigner::generate_es256("kc-es256").unwrap(),
            KEYCLOAK_ISSUER,
            None,
            ClaimMapping::preset(Preset::Keycloak),
        )
        .provider_tenant(
            "globex",
            common::rsa_signer("okta-key-1"),
            OKTA_ISSUER,
            Some(OKTA_AUDIENCE),
            ClaimMapping::preset(Preset::Okta),
        )
        .policy("contoso-entra", |p| {
            p.assignments[0].members = [ENTRA_HELPDESK_GROUP.to_string()].into();
        })
        .policy("globex", |p| {
            p.assignments[0].members = ["Help Desk".to_string()].into();
        })
        .start()
        .await
}

/// Device claims the administrator adds for sharers (no provider issues them itself).
fn device_claims() -> Value {
    json!({
        "device_id": "d-1", "device_name": "GRACE-LAPTOP", "platform": "windows",
        "os_version": "10.0.22631", "manufacturer": "Contoso", "enrolled": true, "compliant": true
    })
}

fn merged(mut base: Value, extra: Value) -> Value {
    if let (Value::Object(b), Value::Object(e)) = (&mut base, extra) {
        b.extend(e);
    }
    base
}

/// An Entra ID v2.0 access token's claims, as Entra issues them for an app registration
/// with app roles and a groups claim (no `jti`, no `given_name`: `name` only).
fn entra(oid: &str, name: &str, roles: &[&str], groups: &[&str]) -> Value {
    let t = now();
    json!({
        "aud": ENTRA_CLIENT_ID, "iss": ENTRA_ISSUER, "iat": t, "nbf": t, "exp": t + 3900,
        "aio": "AWQAm/8ZAAAA", "azp": "1950a258-227b-4e31-a9cf-717495945fc2", "azpacr": "0",
        "name": name, "oid": oid, "preferred_username": "user@contoso.example",
        "rh": "0.AXkAv_j4cvGGr0GRqy180BHbRw.", "roles": roles, "groups": groups,
        "scp": "RemoteHelp.Session", "sub": "pairwise-AAAAAAAAAAAAAAAAAAAAAIkzqFVrSaSaFHy782bbtaQ",
        "tid": ENTRA_TID, "uti": "p1ufKM3qSUmFwSkJdTn0AA", "ver": "2.0"
    })
}

/// A Keycloak access token's claims with an audience mapper and a group-membership mapper.
fn keycloak(sub: &str, given: &str, family: &str, realm_roles: &[&str], groups: &[&str]) -> Value {
    let t = now();
    json!({
        "exp": t + 300, "iat": t, "jti": "onrtac:5c1e9f0e-7d2b-4c8e-9a3f-0b6d2e4c8a71",
        "iss": KEYCLOAK_ISSUER, "aud": ["remote-help-relay", "account"], "sub": sub,
        "typ": "Bearer", "azp": "remote-help-console", "sid": "2b1e0f9a-8b76-4c1e",
        "acr": "1", "allowed-origins": ["https://console.initech.example"],
        "realm_access": {"roles": realm_roles},
        "resource_access": {"account": {"roles": ["manage-account", "view-profile"]}},
        "scope": "openid profile email", "email_verified": true,
        "name": format!("{given} {family}"), "preferred_username": given.to_lowercase(),
        "given_name": given, "family_name": family, "email": "someone@initech.example",
        "groups": groups
    })
}

/// An Okta custom authorization server's access token with a `groups` and a `name` claim.
fn okta(uid: &str, login: &str, name: &str, groups: &[&str]) -> Value {
    let t = now();
    json!({
        "ver": 1, "jti": "AT.Jg5Vq0p6gQ3l8bYcH1X9W", "iss": OKTA_ISSUER, "aud": OKTA_AUDIENCE,
        "iat": t, "exp": t + 3600, "cid": "0oa1b2c3d4e5f6g7h8i9", "uid": uid,
        "scp": ["openid", "profile", "remote_help"], "auth_time": t, "sub": login,
        "name": name, "groups": groups
    })
}

#[tokio::test]
async fn provider_tokens_authenticate_as_the_right_principal_and_pair_end_to_end() {
    let relay = relay().await;
    struct Case {
        tenant: &'static str,
        helper: Value,
        sharer: Value,
        helper_subject: &'static str,
        helper_given: &'static str,
        helper_family: &'static str,
        sharer_subject: &'static str,
    }
    let cases = [
        Case {
            tenant: "contoso-entra",
            helper: entra(
                "9c2e6b1a-3f4d-4a8e-b7c5-2d1e0f9a8b76",
                "Ada Lovelace",
                &["remote-help"],
                &[ENTRA_HELPDESK_GROUP],
            ),
            sharer: merged(
                entra(
                    "5f1c2a9e-8d7b-4c1e-9a3f-0b6d2e4c8a71",
                    "Grace Hopper",
                    &["remote-help"],
                    &["0d1e2f3a-finance"],
                ),
                device_claims(),
            ),
            helper_subject: "9c2e6b1a-3f4d-4a8e-b7c5-2d1e0f9a8b76",
            helper_given: "Ada Lovelace",
            helper_family: "",
            sharer_subject: "5f1c2a9e-8d7b-4c1e-9a3f-0b6d2e4c8a71",
        },
        Case {
            tenant: "initech",
            helper: keycloak(
                "f3b5c7d9-1a2b-4c3d-8e9f-0a1b2c3d4e5f",
                "Ada",
                "Lovelace",
                &[
                    "offline_access",
                    "uma_authorization",
                    "remote-help",
                    "helpdesk",
                ],
                &["/support"],
            ),
            sharer: merged(
                keycloak(
                    "a1b2c3d4-0000-4000-8000-000000000001",
                    "Grace",
                    "Hopper",
                    &["offline_access", "remote-help"],
                    &["/engineering"],
                ),
                device_claims(),
            ),
            helper_subject: "f3b5c7d9-1a2b-4c3d-8e9f-0a1b2c3d4e5f",
            helper_given: "Ada",
            helper_family: "Lovelace",
            sharer_subject: "a1b2c3d4-0000-4000-8000-000000000001",
        },
        Case {
            tenant: "globex",
            helper: okta(
                "00u1ada2b3c4d5e6f7g8",
                "ada@globex.example",
                "Ada Lovelace",
                &["Everyone", "remote-help", "Help Desk"],
            ),
            sharer: merged(
                okta(
                    "00u1grace3c4d5e6f7g8",
                    "grace@globex.example",
                    "Grace Hopper",
                    &["Everyone", "remote-help"],
                ),
                device_claims(),
            ),
            helper_subject: "00u1ada2b3c4d5e6f7g8",
            helper_given: "Ada Lovelace",
            helper_family: "",
            sharer_subject: "00u1grace3c4d5e6f7g8",
        },
    ];
    for case in cases {
        let tenant = relay.tenant(case.tenant);
        let mut helper = relay
            .connect(tenant.sign_claims(&case.helper), Role::Helper)
            .await
            .unwrap_or_else(|e| panic!("{} helper: {e}", case.tenant));
        let me = helper.me().unwrap().clone();
        assert_eq!(me.tenant_id, case.tenant);
        assert_eq!(me.subject, case.helper_subject, "{}", case.tenant);
        assert_eq!(me.given_name, case.helper_given, "{}", case.tenant);
        assert_eq!(me.family_name, case.helper_family, "{}", case.tenant);
        let mut sharer = relay
            .connect(tenant.sign_claims(&case.sharer), Role::Sharer)
            .await
            .unwrap_or_else(|e| panic!("{} sharer: {e}", case.tenant));
        // The helper's permission comes from the mapped groups/roles: creating a session
        // needs a role assignment whose members include one of them.
        let created = within(helper.create_session(Mode::ViewOnly))
            .await
            .unwrap_or_else(|e| panic!("{} create: {e}", case.tenant));
        join_and_consent(&mut helper, &mut sharer, &created.code).await;
        assert_eq!(helper.peer().unwrap().subject, case.sharer_subject);
        assert_eq!(sharer.peer().unwrap().subject, case.helper_subject);
        helper.close().await;
        sharer.close().await;
    }
    // The relay's own shape keeps working beside them.
    relay.helper("contoso").await.close().await;
    relay.wait_until_empty().await;
    relay.stop().await;
}

#[tokio::test]
async fn mapped_claims_decide_permissions_and_licences() {
    let relay = relay().await;
    let entra_tenant = relay.tenant("contoso-entra");
    // Licensed (app role "remote-help") but not in the help desk group: may connect, may
    // not offer help.
    let no_group = entra("oid-1", "Someone", &["remote-help"], &["other-group"]);
    let mut helper = relay
        .connect(entra_tenant.sign_claims(&no_group), Role::Helper)
        .await
        .unwrap();
    let err = within(helper.create_session(Mode::ViewOnly))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PermissionDenied), "{err}");
    helper.close().await;
    // In the group but without the licence role: refused at Hello.
    let unlicensed = entra("oid-2", "Someone", &[], &[ENTRA_HELPDESK_GROUP]);
    let err = relay
        .connect(entra_tenant.sign_claims(&unlicensed), Role::Helper)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::LicenseRequired), "{err}");
    relay.wait_until_empty().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_missing_or_mistyped_mapped_claim_is_token_invalid_with_a_clear_reason() {
    let relay = relay().await;
    let entra_tenant = relay.tenant("contoso-entra");
    let keycloak_tenant = relay.tenant("initech");
    let okta_tenant = relay.tenant("globex");
    let mut no_oid = entra("x", "Ada", &["remote-help"], &[ENTRA_HELPDESK_GROUP]);
    no_oid.as_object_mut().unwrap().remove("oid");
    let mut no_uid = okta("x", "ada@globex.example", "Ada", &["remote-help"]);
    no_uid.as_object_mut().unwrap().remove("uid");
    let mut roles_not_a_list = keycloak("s", "Ada", "L", &[], &[]);
    roles_not_a_list["realm_access"]["roles"] = json!("remote-help");
    let mut realm_access_not_an_object = keycloak("s", "Ada", "L", &[], &[]);
    realm_access_not_an_object["realm_access"] = json!(["remote-help"]);
    let mut overage = entra("x", "Ada", &["remote-help"], &[]);
    let claims = overage.as_object_mut().unwrap();
    claims.remove("groups");
    claims.insert("_claim_names".into(), json!({"groups": "src1"}));
    claims.insert(
        "_claim_sources".into(),
        json!({"src1": {"endpoint": "https://graph.microsoft.com/v1.0/users/x/getMemberObjects"}}),
    );
    let empty_oid = entra("", "Ada", &["remote-help"], &[ENTRA_HELPDESK_GROUP]);
    let cases = [
        (entra_tenant.sign_claims(&no_oid), "missing claim oid"),
        (
            entra_tenant.sign_claims(&empty_oid),
            "oid (the user id) is empty",
        ),
        (okta_tenant.sign_claims(&no_uid), "missing claim uid"),
        (
            keycloak_tenant.sign_claims(&roles_not_a_list),
            "claim realm_access.roles (the tenant's roles) must be an array of strings",
        ),
        (
            keycloak_tenant.sign_claims(&realm_access_not_an_object),
            "claim realm_access must be an object",
        ),
        (entra_tenant.sign_claims(&overage), "group overage"),
    ];
    for (token, reason) in cases {
        let err = relay.connect(token, Role::Helper).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::TokenInvalid), "{err}");
        assert!(err.to_string().contains(reason), "{reason:?} not in {err}");
    }
    relay.wait_until_empty().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_provider_tenant_accepts_only_its_own_issuer_key_and_audience() {
    let relay = relay().await;
    let entra_tenant = relay.tenant("contoso-entra");
    let keycloak_tenant = relay.tenant("initech");
    let good = entra("oid-1", "Ada", &["remote-help"], &[ENTRA_HELPDESK_GROUP]);
    // The Entra tenant's claims signed by the Keycloak tenant's key: selected by issuer
    // as the Entra tenant, whose keys do not verify it.
    let err = relay
        .connect(keycloak_tenant.sign_claims(&good), Role::Helper)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TokenInvalid), "{err}");
    // The relay-wide audience is not this tenant's audience.
    let mut wrong_aud = good.clone();
    wrong_aud["aud"] = json!("remote-help-relay");
    let err = relay
        .connect(entra_tenant.sign_claims(&wrong_aud), Role::Helper)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TokenInvalid), "{err}");
    assert!(err.to_string().contains("wrong audience"), "{err}");
    // A v1.0 token (issuer sts.windows.net) selects no tenant: it has no matching issuer,
    // and its `tid` is a GUID no tenant is configured under.
    let mut v1 = good.clone();
    v1["iss"] = json!(format!("https://sts.windows.net/{ENTRA_TID}/"));
    let err = relay
        .connect(entra_tenant.sign_claims(&v1), Role::Helper)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TenantUnknown), "{err}");
    // And the good token does connect.
    relay
        .connect(entra_tenant.sign_claims(&good), Role::Helper)
        .await
        .unwrap()
        .close()
        .await;
    relay.wait_until_empty().await;
    relay.stop().await;
}
