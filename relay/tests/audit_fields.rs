//! The audit log tells the true story (docs/audit.md): a refused helper is recorded as the
//! helper, a device agent as `--`, refusals carry the device's name, `session_ended` says
//! who ended it, byte counts include datagrams, and a cross-tenant attempt shows in the
//! owning tenant's log too, without the other tenant's identities.

mod common;

use bytes::Bytes;
use common::{TestRelay, with_claims, within};
use remote_help_proto::ErrorCode;
use remote_help_relay::audit::{AuditEvent, EndedBy, EventKind, audit_files, read_events};
use remote_help_relay::core::policy::{Assignment, Permission, PermissionSet, Scope};
use remote_help_relay::core::{Mode, Role};
use remote_help_relay::dev::Persona;
use remote_help_relay::issuer::TokenSigner;
use serde_json::json;

fn events_of(relay: &TestRelay) -> Vec<AuditEvent> {
    read_events(&audit_files(&relay.audit_dir()))
}

/// The raw lines of the audit log.
fn lines_of(relay: &TestRelay) -> Vec<String> {
    audit_files(&relay.audit_dir())
        .iter()
        .flat_map(|f| {
            std::fs::read_to_string(f)
                .unwrap()
                .lines()
                .map(str::to_string)
                .collect::<Vec<_>>()
        })
        .collect()
}

/// Refusals are queued without waiting; a whole session afterwards, whose end is written
/// (fsynced) before the sharer hears of it, puts every earlier event on disk.
async fn flush(relay: &TestRelay, tenant: &str) {
    let (mut helper, mut sharer) = relay.paired(tenant, Mode::ViewOnly).await;
    within(helper.end_session()).await.unwrap();
    assert_eq!(within(sharer.wait_for_end()).await, ErrorCode::PeerEnded);
}

fn refusals(relay: &TestRelay, code: &str) -> Vec<AuditEvent> {
    events_of(relay)
        .into_iter()
        .filter(|e| {
            e.event == Some(EventKind::SessionRefused) && e.refusal.as_deref() == Some(code)
        })
        .collect()
}

fn agent_token(relay: &TestRelay, tenant: &str, device_id: &str) -> String {
    let t = relay.tenant(tenant);
    t.sign(&with_claims(
        t.spec(Persona::Sharer),
        json!({
            "kind": "device", "licenses": [], "groups": [],
            "device_id": device_id, "device_name": "KIOSK", "platform": "android-dedicated",
            "manufacturer": "Zebra", "os_version": "14", "device_groups": ["kiosks"],
        }),
    ))
}

#[tokio::test]
async fn a_helper_refused_at_sign_in_is_recorded_as_the_helper() {
    let relay = TestRelay::start().await;
    let contoso = relay.tenant("contoso");
    let unlicensed = contoso.sign(&with_claims(
        contoso.spec(Persona::Helper),
        json!({"licenses": []}),
    ));
    let err = relay.connect(unlicensed, Role::Helper).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::LicenseRequired));
    let unlicensed = contoso.sign(&with_claims(
        contoso.spec(Persona::Sharer),
        json!({"licenses": []}),
    ));
    let err = relay.connect(unlicensed, Role::Sharer).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::LicenseRequired));
    flush(&relay, "contoso").await;

    let found = refusals(&relay, "LICENSE_REQUIRED");
    assert_eq!(found.len(), 2, "{found:?}");
    let helper = &found[0];
    assert_eq!(helper.refused_role.as_deref(), Some("helper"));
    assert_eq!(helper.helper_id.as_deref(), Some("helper-ada"));
    assert_eq!(helper.helper_name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(helper.sharer_id, None, "a helper is not a sharer");
    assert_eq!(helper.sharer_name, None);
    let sharer = &found[1];
    assert_eq!(sharer.refused_role.as_deref(), Some("sharer"));
    assert_eq!(sharer.sharer_id.as_deref(), Some("user-grace"));
    assert_eq!(sharer.helper_id, None);
    assert_eq!(sharer.device_id.as_deref(), Some("dev-device-1"));
    assert_eq!(sharer.device_name.as_deref(), Some("GRACE-LAPTOP"));
    relay.stop().await;
}

#[tokio::test]
async fn a_declined_session_records_both_parties_and_the_device_name() {
    let relay = TestRelay::start().await;
    let mut helper = relay.helper("contoso").await;
    let created = within(helper.create_session(Mode::ViewOnly)).await.unwrap();
    let mut sharer = relay.sharer("contoso").await;
    within(sharer.join(&created.code)).await.unwrap();
    within(sharer.decline()).await.unwrap();
    flush(&relay, "contoso").await;
    let found = refusals(&relay, "DECLINED");
    assert_eq!(found.len(), 1, "{found:?}");
    let declined = &found[0];
    assert_eq!(declined.session_id, created.session_id);
    assert_eq!(declined.refused_role.as_deref(), Some("sharer"));
    assert_eq!(declined.helper_id.as_deref(), Some("helper-ada"));
    assert_eq!(declined.sharer_id.as_deref(), Some("user-grace"));
    assert_eq!(declined.device_name.as_deref(), Some("GRACE-LAPTOP"));
    relay.stop().await;
}

#[tokio::test]
async fn a_device_agent_refused_not_in_scope_is_recorded_as_dashes_with_its_device() {
    let relay = TestRelay::builder()
        .policy("contoso", |p| {
            p.assignments = vec![Assignment {
                permissions: PermissionSet::granting([
                    Permission::OfferRemoteAssistance,
                    Permission::UnattendedControl,
                ]),
                role: "custom".into(),
                members: ["helpdesk".to_string()].into_iter().collect(),
                // Users and laptops, not kiosks.
                scope: Scope::from_entries(["all_users", "laptops"]),
            }]
        })
        .start()
        .await;
    let mut agent = relay
        .connect(agent_token(&relay, "contoso", "kiosk-7"), Role::Sharer)
        .await
        .unwrap();
    within(agent.register_device()).await.unwrap();
    let mut helper = relay.helper("contoso").await;
    let err = within(helper.connect_unattended("kiosk-7", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotInScope));
    flush(&relay, "contoso").await;

    let found = refusals(&relay, "NOT_IN_SCOPE");
    assert_eq!(found.len(), 1, "{found:?}");
    let refused = &found[0];
    assert_eq!(refused.refused_role.as_deref(), Some("helper"));
    assert_eq!(refused.helper_id.as_deref(), Some("helper-ada"));
    assert_eq!(refused.sharer_id.as_deref(), Some("--"));
    assert_eq!(refused.sharer_name.as_deref(), Some("--"));
    assert_eq!(refused.device_id.as_deref(), Some("kiosk-7"));
    assert_eq!(refused.device_name.as_deref(), Some("KIOSK"));
    relay.stop().await;
}

#[tokio::test]
async fn a_cross_tenant_attempt_is_recorded_in_the_owning_tenants_log_without_the_intruder() {
    let relay = TestRelay::builder()
        .tenant("contoso", TokenSigner::generate_ed25519("c1").unwrap())
        .tenant("fabrikam", TokenSigner::generate_ed25519("f1").unwrap())
        .start()
        .await;
    let fabrikam = relay.tenant("fabrikam");
    let intruder_claims = json!({
        "given_name": "Mallory", "family_name": "Intruder",
        "device_id": "mallory-pc", "device_name": "MALLORY-PC",
    });
    let mut sharer_spec = with_claims(fabrikam.spec(Persona::Sharer), intruder_claims.clone());
    sharer_spec.subject = "intruder-mallory".into();
    let mut helper_spec = with_claims(fabrikam.spec(Persona::Helper), intruder_claims);
    helper_spec.subject = "intruder-mallory".into();

    // A join with contoso's code...
    let mut helper = relay.helper("contoso").await;
    let created = within(helper.create_session(Mode::ViewOnly)).await.unwrap();
    let mut intruder = relay
        .connect(fabrikam.sign(&sharer_spec), Role::Sharer)
        .await
        .unwrap();
    let err = within(intruder.join(&created.code)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CrossTenant));
    // ...and an unattended connect to contoso's device.
    let mut agent = relay
        .connect(agent_token(&relay, "contoso", "kiosk-7"), Role::Sharer)
        .await
        .unwrap();
    within(agent.register_device()).await.unwrap();
    let mut foreign = relay
        .connect(fabrikam.sign(&helper_spec), Role::Helper)
        .await
        .unwrap();
    let err = within(foreign.connect_unattended("kiosk-7", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CrossTenant));
    flush(&relay, "contoso").await;

    let found = refusals(&relay, "CROSS_TENANT");
    let in_tenant =
        |t: &str| -> Vec<&AuditEvent> { found.iter().filter(|e| e.tenant == t).collect() };
    // The intruder's own tenant: who tried, and nothing of contoso's.
    let theirs = in_tenant("fabrikam");
    assert_eq!(theirs.len(), 2, "{found:?}");
    assert_eq!(theirs[0].refused_role.as_deref(), Some("sharer"));
    assert_eq!(theirs[0].sharer_id.as_deref(), Some("intruder-mallory"));
    assert_eq!(theirs[0].session_id, "", "contoso's session is not named");
    assert_eq!(theirs[0].helper_id, None);
    assert_eq!(theirs[1].refused_role.as_deref(), Some("helper"));
    assert_eq!(theirs[1].helper_id.as_deref(), Some("intruder-mallory"));
    assert_eq!(
        theirs[1].device_id, None,
        "contoso's device is not described"
    );
    // The owner: its own session and helper, its own device; nothing of the intruder.
    let ours = in_tenant("contoso");
    assert_eq!(ours.len(), 2, "{found:?}");
    assert_eq!(ours[0].session_id, created.session_id);
    assert_eq!(ours[0].helper_id.as_deref(), Some("helper-ada"));
    assert_eq!(ours[0].refused_role.as_deref(), Some("sharer"));
    assert_eq!(ours[0].sharer_id, None);
    assert_eq!(ours[0].device_id, None);
    assert_eq!(ours[1].refused_role.as_deref(), Some("helper"));
    assert_eq!(ours[1].helper_id, None);
    assert_eq!(ours[1].sharer_id.as_deref(), Some("--"));
    assert_eq!(ours[1].device_id.as_deref(), Some("kiosk-7"));
    for line in lines_of(&relay)
        .iter()
        .filter(|l| l.contains("\"tenant\":\"contoso\"") && l.contains("CROSS_TENANT"))
    {
        for secret in ["fabrikam", "intruder", "Mallory", "MALLORY"] {
            assert!(
                !line.contains(secret),
                "{secret} leaked into contoso's log: {line}"
            );
        }
    }
    relay.stop().await;
}

/// The `session_ended` event of `session`.
fn end_of(relay: &TestRelay, session: &str) -> AuditEvent {
    events_of(relay)
        .into_iter()
        .find(|e| e.session_id == session && e.event == Some(EventKind::SessionEnded))
        .unwrap_or_else(|| panic!("no session_ended for {session}"))
}

#[tokio::test]
async fn session_ended_says_who_ended_it() {
    const TOKEN: &str = "audit-fields-admin-token-0123";
    let relay = TestRelay::builder()
        .config(|c| c.admin.token = Some(TOKEN.into()))
        .start()
        .await;
    // The helper ends it.
    let (mut helper, mut sharer, by_helper) = pair(&relay).await;
    within(helper.end_session()).await.unwrap();
    assert_eq!(within(sharer.wait_for_end()).await, ErrorCode::PeerEnded);
    // The sharer ends it.
    let (mut helper, mut sharer, by_sharer) = pair(&relay).await;
    within(sharer.end_session()).await.unwrap();
    assert_eq!(within(helper.wait_for_end()).await, ErrorCode::PeerEnded);
    // The sharer's connection goes away.
    let (mut helper, sharer, lost) = pair(&relay).await;
    within(sharer.close()).await;
    assert_eq!(within(helper.wait_for_end()).await, ErrorCode::PeerLost);
    // An administrator ends it.
    let (mut helper, _sharer, by_admin) = pair(&relay).await;
    let admin = relay.handle.admin_addr().unwrap();
    let (status, _) = common::http(
        admin,
        "POST",
        &format!("/admin/sessions/{by_admin}/end"),
        Some(TOKEN),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(within(helper.wait_for_end()).await, ErrorCode::AdminEnded);
    // The relay shuts down under it.
    let (mut helper, _sharer, by_relay) = pair(&relay).await;
    relay.handle.begin_shutdown();
    assert_eq!(
        within(helper.wait_for_end()).await,
        ErrorCode::RelayShutdown
    );

    for (session, reason, by) in [
        (&by_helper, "PEER_ENDED", EndedBy::Helper),
        (&by_sharer, "PEER_ENDED", EndedBy::Sharer),
        (&lost, "PEER_LOST", EndedBy::Sharer),
        (&by_admin, "ADMIN_ENDED", EndedBy::Administrator),
        (&by_relay, "RELAY_SHUTDOWN", EndedBy::Relay),
    ] {
        let end = end_of(&relay, session);
        assert_eq!(end.end_reason.as_deref(), Some(reason), "{end:?}");
        assert_eq!(end.ended_by, Some(by), "{end:?}");
    }
    relay.stop().await;
}

/// A helper and a sharer of contoso in an active view-only session, and its id.
async fn pair(
    relay: &TestRelay,
) -> (
    remote_help_relay::client::Client,
    remote_help_relay::client::Client,
    String,
) {
    let mut helper = relay.helper("contoso").await;
    let mut sharer = relay.sharer("contoso").await;
    let created = within(helper.create_session(Mode::ViewOnly)).await.unwrap();
    common::join_and_consent(&mut helper, &mut sharer, &created.code).await;
    (helper, sharer, created.session_id)
}

#[tokio::test]
async fn audited_bytes_include_datagrams_like_the_metrics() {
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let (mut helper, mut sharer, session) = pair(&relay).await;
    let frame = Bytes::from(vec![7u8; 1000]);
    sharer
        .unsealed_data()
        .unwrap()
        .send_datagram(frame)
        .unwrap();
    let received = within(helper.unsealed_data().unwrap().read_datagram())
        .await
        .unwrap();
    assert_eq!(received.len(), 1000);
    within(helper.end_session()).await.unwrap();
    assert_eq!(within(sharer.wait_for_end()).await, ErrorCode::PeerEnded);
    let end = end_of(&relay, &session);
    let counted = end.bytes_sharer_to_helper.unwrap();
    assert_eq!(
        counted, 1000,
        "one datagram and nothing else flowed sharer → helper"
    );
    assert_eq!(end.bytes_helper_to_sharer, Some(0));
    relay.stop().await;
}
