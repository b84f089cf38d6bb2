//! Remote Help policy end to end over QUIC: every refusal code, compliance confirmation,
//! consent timeout, mode changes, chat disabled, unattended device agents, and reload.

mod common;

use std::time::Duration;

use bytes::Bytes;
use common::{TestRelay, raise_with_consent, with_claims, within};
use remote_help_proto::ErrorCode;
use remote_help_relay::core::policy::{Assignment, Permission, PermissionSet, Scope, TenantPolicy};
use remote_help_relay::core::{Channel, Mode, Role};
use remote_help_relay::dev::Persona;
use remote_help_relay::issuer::TokenSigner;
use serde_json::json;

fn assignment(permissions: &[Permission], members: &[&str], scope: &[&str]) -> Assignment {
    Assignment {
        permissions: PermissionSet::granting(permissions.iter().copied()),
        role: "custom".into(),
        members: members.iter().map(|m| m.to_string()).collect(),
        scope: Scope::from_entries(scope.iter().copied()),
    }
}

/// A sharer token of contoso with `extra` claims over the default persona.
fn sharer_token(relay: &TestRelay, extra: serde_json::Value) -> String {
    let contoso = relay.tenant("contoso");
    contoso.sign(&with_claims(contoso.spec(Persona::Sharer), extra))
}

fn helper_token(relay: &TestRelay, extra: serde_json::Value) -> String {
    let contoso = relay.tenant("contoso");
    contoso.sign(&with_claims(contoso.spec(Persona::Helper), extra))
}

fn agent_token(relay: &TestRelay, device_id: &str) -> String {
    sharer_token(
        relay,
        json!({
            "kind": "device", "licenses": [], "groups": [],
            "device_id": device_id, "device_name": "KIOSK", "platform": "android-dedicated",
            "manufacturer": "Zebra", "os_version": "14", "device_groups": ["kiosks"],
        }),
    )
}

#[tokio::test]
async fn a_disabled_tenant_refuses_helpers_and_sharers() {
    let relay = TestRelay::builder()
        .policy("contoso", |p| p.enabled = false)
        .start()
        .await;
    for (role, persona) in [
        (Role::Helper, Persona::Helper),
        (Role::Sharer, Persona::Sharer),
    ] {
        let err = relay
            .connect(relay.tenant("contoso").token(persona), role)
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::TenantDisabled), "{role:?}");
    }
    relay.wait_until_empty().await;
    relay.stop().await;
}

#[tokio::test]
async fn sharers_are_admitted_only_with_licence_supported_platform_and_enrolment() {
    let relay = TestRelay::start().await;
    let cases = [
        (
            "no licence",
            json!({"licenses": []}),
            Some(ErrorCode::LicenseRequired),
        ),
        (
            "other licence",
            json!({"licenses": ["office"]}),
            Some(ErrorCode::LicenseRequired),
        ),
        (
            "linux",
            json!({"platform": "linux"}),
            Some(ErrorCode::PlatformNotSupported),
        ),
        (
            "macOS 12",
            json!({"platform": "macos", "os_version": "12.7"}),
            Some(ErrorCode::PlatformNotSupported),
        ),
        (
            "macOS 15",
            json!({"platform": "macos", "os_version": "15.1"}),
            None,
        ),
        (
            "android from Google",
            json!({"platform": "android-dedicated", "manufacturer": "Google"}),
            Some(ErrorCode::PlatformNotSupported),
        ),
        (
            "android from Samsung",
            json!({"platform": "android-dedicated", "manufacturer": "Samsung"}),
            None,
        ),
        ("windows 365", json!({"platform": "windows365"}), None),
        (
            "unenrolled",
            json!({"enrolled": false}),
            Some(ErrorCode::UnenrolledDeviceNotAllowed),
        ),
        (
            "enrolment missing",
            json!({"enrolled": null}),
            Some(ErrorCode::UnenrolledDeviceNotAllowed),
        ),
    ];
    for (name, extra, expected) in cases {
        let result = relay
            .connect(sharer_token(&relay, extra), Role::Sharer)
            .await;
        match (expected, result) {
            (None, Ok(c)) => c.close().await,
            (None, Err(e)) => panic!("{name}: {e}"),
            (Some(code), Ok(_)) => panic!("{name}: admitted, expected {code}"),
            (Some(code), Err(e)) => assert_eq!(e.code(), Some(code), "{name}"),
        }
    }
    let err = relay
        .connect(helper_token(&relay, json!({"licenses": []})), Role::Helper)
        .await
        .unwrap_err();
    assert_eq!(
        err.code(),
        Some(ErrorCode::LicenseRequired),
        "unlicensed helper"
    );
    relay.wait_until_empty().await;
    relay.stop().await;
}

#[tokio::test]
async fn unenrolled_devices_are_admitted_when_the_tenant_allows_them() {
    let relay = TestRelay::builder()
        .policy("contoso", |p| p.allow_unenrolled_devices = true)
        .start()
        .await;
    let sharer = relay
        .connect(
            sharer_token(&relay, json!({"enrolled": false})),
            Role::Sharer,
        )
        .await
        .unwrap();
    sharer.close().await;
    relay.stop().await;
}

#[tokio::test]
async fn a_helper_without_the_permission_cannot_even_create_a_session() {
    let relay = TestRelay::builder()
        .policy("contoso", |p| {
            p.assignments = vec![assignment(
                &[Permission::OfferRemoteAssistance, Permission::ViewScreen],
                &["helpdesk"],
                &["all_users"],
            )]
        })
        .start()
        .await;
    let mut helper = relay.helper("contoso").await;
    let err = within(helper.create_session(Mode::FullControl))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PermissionDenied));
    // Not fatal: view only is within the role.
    within(helper.create_session(Mode::ViewOnly)).await.unwrap();
    let mut stranger = relay
        .connect(
            helper_token(&relay, json!({"groups": ["marketing"]})),
            Role::Helper,
        )
        .await
        .unwrap();
    let err = within(stranger.create_session(Mode::ViewOnly))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PermissionDenied));
    relay.stop().await;
}

#[tokio::test]
async fn a_sharer_outside_the_helpers_scope_is_refused_before_seeing_the_helper() {
    use Permission::*;
    let relay = TestRelay::builder()
        .policy("contoso", |p| {
            p.assignments = vec![
                assignment(
                    &[OfferRemoteAssistance, ViewScreen],
                    &["helpdesk"],
                    &["finance"],
                ),
                assignment(
                    &[OfferRemoteAssistance, TakeFullControl],
                    &["helpdesk"],
                    &["laptops"],
                ),
            ]
        })
        .start()
        .await;
    // The sharer is in "engineering" with a device in "laptops".
    let mut helper = relay.helper("contoso").await;
    let created = within(helper.create_session(Mode::FullControl))
        .await
        .unwrap();
    let mut outsider = relay
        .connect(
            sharer_token(&relay, json!({"device_groups": ["desktops"]})),
            Role::Sharer,
        )
        .await
        .unwrap();
    let err = within(outsider.join(&created.code)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::NotInScope));
    assert!(
        !err.to_string().contains("Ada"),
        "nothing about the helper: {err}"
    );
    assert_eq!(within(helper.wait_for_end()).await, ErrorCode::NotInScope);

    // In scope through the device: full control is granted by the laptops assignment.
    let created = within(helper.create_session(Mode::FullControl))
        .await
        .unwrap();
    let mut sharer = relay.sharer("contoso").await;
    within(sharer.join(&created.code)).await.unwrap();

    // In scope only through an assignment that grants view: full control is denied.
    let mut helper = relay.helper("contoso").await;
    let created = within(helper.create_session(Mode::FullControl))
        .await
        .unwrap();
    let mut finance = relay
        .connect(
            sharer_token(&relay, json!({"groups": ["finance"], "device_groups": []})),
            Role::Sharer,
        )
        .await
        .unwrap();
    let err = within(finance.join(&created.code)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PermissionDenied));
    relay.stop().await;
}

#[tokio::test]
async fn a_non_compliant_device_needs_the_helpers_confirmation_first() {
    let relay = TestRelay::start().await;
    let token = sharer_token(&relay, json!({"compliant": false}));

    // Confirmed: the sharer is asked only after the helper goes on.
    let mut helper = relay.helper("contoso").await;
    let mut sharer = relay.connect(token.clone(), Role::Sharer).await.unwrap();
    let created = within(helper.create_session(Mode::FullControl))
        .await
        .unwrap();
    let (request, ()) = within(async {
        tokio::join!(sharer.join(&created.code), async {
            let joined = helper.wait_for_peer_joined().await.unwrap();
            assert!(joined.compliance_warning);
            helper.confirm_compliance(true).await.unwrap();
        })
    })
    .await;
    assert_eq!(request.unwrap().helper.unwrap().given_name, "Ada");
    within(sharer.accept()).await.unwrap();
    within(helper.wait_for_start()).await.unwrap();

    // Not confirmed: the session ends for both.
    let mut helper = relay.helper("contoso").await;
    let mut sharer = relay.connect(token, Role::Sharer).await.unwrap();
    let created = within(helper.create_session(Mode::ViewOnly)).await.unwrap();
    let (joined, ()) = within(async {
        tokio::join!(sharer.join(&created.code), async {
            helper.wait_for_peer_joined().await.unwrap();
            helper.confirm_compliance(false).await.unwrap();
        })
    })
    .await;
    assert_eq!(
        joined.unwrap_err().code(),
        Some(ErrorCode::ComplianceNotConfirmed)
    );
    assert_eq!(
        within(helper.wait_for_end()).await,
        ErrorCode::ComplianceNotConfirmed
    );
    relay.stop().await;
}

#[tokio::test]
async fn an_unanswered_consent_prompt_times_out_for_both() {
    let relay = TestRelay::builder()
        .config(|c| c.consent_timeout = Duration::ZERO)
        .start()
        .await;
    let mut helper = relay.helper("contoso").await;
    let mut sharer = relay.sharer("contoso").await;
    let created = within(helper.create_session(Mode::ViewOnly)).await.unwrap();
    within(sharer.join(&created.code)).await.unwrap();
    assert_eq!(
        within(sharer.wait_for_end()).await,
        ErrorCode::ConsentTimeout
    );
    within(helper.wait_for_sharer()).await.unwrap();
    assert_eq!(
        within(helper.wait_for_end()).await,
        ErrorCode::ConsentTimeout
    );
    // An answer that raced the timeout is refused, but not fatally.
    let late = within(sharer.accept()).await.unwrap_err();
    assert_eq!(late.code(), Some(ErrorCode::ConsentTimeout));
    within(sharer.ping()).await.unwrap();
    relay.stop().await;
}

#[tokio::test]
async fn raising_the_mode_needs_fresh_consent_and_lowering_it_stops_input() {
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let (mut helper, mut sharer) = relay.paired("contoso", Mode::ViewOnly).await;

    // View → control: the sharer is asked and accepts; input then flows.
    let request =
        raise_with_consent(&mut helper, &mut sharer, Mode::FullControl, "ticket 4711").await;
    assert!(request.mode_change);
    assert_eq!(
        request.mode,
        remote_help_proto::v1::Mode::FullControl as i32
    );
    let mut input = within(helper.open_unsealed_channel(Channel::Input))
        .await
        .unwrap();
    within(input.send(Bytes::from_static(b"click")))
        .await
        .unwrap();
    let (_, mut input_in) = within(sharer.accept_unsealed_channel()).await.unwrap();
    assert_eq!(
        &within(input_in.recv()).await.unwrap().unwrap()[..],
        b"click"
    );

    // Control → elevation, declined: the helper hears MODE_DECLINED, the session goes on.
    let (changed, answered) = within(async {
        tokio::join!(helper.request_mode(Mode::Elevation, ""), async {
            sharer.wait_for_consent_request().await.unwrap();
            sharer.answer_mode_change(false).await
        })
    })
    .await;
    assert_eq!(changed.unwrap_err().code(), Some(ErrorCode::ModeDeclined));
    assert_eq!(answered.unwrap(), None);

    // Control → view: at once, no consent; the input stream is cut.
    assert_eq!(
        within(helper.request_mode(Mode::ViewOnly, ""))
            .await
            .unwrap(),
        Mode::ViewOnly
    );
    assert_eq!(
        within(sharer.wait_for_mode_change()).await.unwrap(),
        Mode::ViewOnly
    );
    let cut = within(input_in.recv()).await;
    assert!(
        !matches!(cut, Ok(Some(_))),
        "input still flowing after the downgrade: {cut:?}"
    );
    relay.stop().await;
}

#[tokio::test]
async fn raising_the_mode_beyond_the_role_is_denied_and_the_session_goes_on() {
    use Permission::*;
    let relay = TestRelay::builder()
        .policy("contoso", |p| {
            p.assignments = vec![assignment(
                &[OfferRemoteAssistance, TakeFullControl],
                &["helpdesk"],
                &["all_users"],
            )]
        })
        .start()
        .await;
    let (mut helper, _sharer) = relay.paired("contoso", Mode::FullControl).await;
    let err = within(helper.request_mode(Mode::Elevation, ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::PermissionDenied));
    within(helper.ping()).await.unwrap();
    relay.stop().await;
}

#[tokio::test]
async fn with_chat_disabled_both_are_told_and_a_chat_stream_is_refused() {
    let relay = TestRelay::builder()
        .plaintext_clients()
        .policy("contoso", |p| p.disable_chat = true)
        .start()
        .await;
    let mut helper = relay.helper("contoso").await;
    let mut sharer = relay.sharer("contoso").await;
    let created = within(helper.create_session(Mode::FullControl))
        .await
        .unwrap();
    within(sharer.join(&created.code)).await.unwrap();
    within(helper.wait_for_sharer()).await.unwrap();
    let started = within(sharer.accept()).await.unwrap();
    assert!(started.chat_disabled);
    assert_eq!(
        started.channels,
        vec![Channel::Screen, Channel::Input, Channel::Keys]
    );
    let helper_view = within(helper.wait_for_start()).await.unwrap();
    assert!(helper_view.chat_disabled);

    let mut chat = within(helper.connection().open_uni()).await.unwrap();
    within(chat.write_all(&[Channel::Chat.to_wire() as u8, 0, 0, 0, 1, b'x']))
        .await
        .unwrap();
    let stopped = within(chat.stopped()).await.unwrap();
    assert_eq!(
        stopped.map(|c| c.into_inner()),
        Some(u64::from(ErrorCode::ChatDisabled.to_quic()))
    );
    // The session itself goes on.
    let mut input = within(helper.open_unsealed_channel(Channel::Input))
        .await
        .unwrap();
    within(input.send(Bytes::from_static(b"ok"))).await.unwrap();
    let (channel, _) = within(sharer.accept_unsealed_channel()).await.unwrap();
    assert_eq!(channel, Channel::Input);
    relay.stop().await;
}

#[tokio::test]
async fn an_unattended_device_agent_is_controlled_without_consent_and_only_the_helper_ends() {
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let mut agent = relay
        .connect(agent_token(&relay, "kiosk-7"), Role::Sharer)
        .await
        .unwrap();
    assert_eq!(within(agent.register_device()).await.unwrap(), "kiosk-7");

    let mut helper = relay.helper("contoso").await;
    let started = within(helper.connect_unattended("kiosk-7", "INC-1234"))
        .await
        .unwrap();
    assert_eq!(started.mode, Mode::Unattended);
    assert_eq!(
        started
            .peer
            .as_ref()
            .unwrap()
            .device
            .as_ref()
            .unwrap()
            .device_id,
        "kiosk-7"
    );
    let agent_view = within(agent.wait_for_start()).await.unwrap();
    assert_eq!(agent_view.mode, Mode::Unattended);
    assert_eq!(agent_view.peer.unwrap().given_name, "Ada");

    let mut input = within(helper.open_unsealed_channel(Channel::Input))
        .await
        .unwrap();
    within(input.send(Bytes::from_static(b"tap")))
        .await
        .unwrap();
    let (_, mut input_in) = within(agent.accept_unsealed_channel()).await.unwrap();
    assert_eq!(&within(input_in.recv()).await.unwrap().unwrap()[..], b"tap");

    let err = within(agent.end_session()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CannotEnd));
    within(helper.end_session()).await.unwrap();
    assert_eq!(within(agent.wait_for_end()).await, ErrorCode::PeerEnded);

    // The agent stays registered for the next session.
    within(helper.connect_unattended("kiosk-7", ""))
        .await
        .unwrap();
    relay.stop().await;
}

#[tokio::test]
async fn unattended_access_needs_the_permission_the_scope_and_the_same_tenant() {
    use Permission::*;
    let relay = TestRelay::builder()
        .tenant("contoso", TokenSigner::generate_ed25519("c1").unwrap())
        .tenant("fabrikam", TokenSigner::generate_ed25519("f1").unwrap())
        .policy("contoso", |p| {
            p.assignments = vec![
                assignment(
                    &[OfferRemoteAssistance, Elevation],
                    &["tier1"],
                    &["all_devices"],
                ),
                assignment(
                    &[OfferRemoteAssistance, UnattendedControl],
                    &["tier2"],
                    &["laptops"],
                ),
            ]
        })
        .start()
        .await;
    let mut agent = relay
        .connect(agent_token(&relay, "kiosk-7"), Role::Sharer)
        .await
        .unwrap();
    within(agent.register_device()).await.unwrap();

    let cases = [
        (
            "elevation is not unattended",
            json!({"groups": ["tier1"]}),
            ErrorCode::PermissionDenied,
        ),
        (
            "scope misses the kiosk",
            json!({"groups": ["tier2"]}),
            ErrorCode::NotInScope,
        ),
    ];
    for (name, extra, expected) in cases {
        let mut helper = relay
            .connect(helper_token(&relay, extra), Role::Helper)
            .await
            .unwrap();
        let err = within(helper.connect_unattended("kiosk-7", ""))
            .await
            .unwrap_err();
        assert_eq!(err.code(), Some(expected), "{name}");
    }
    let mut helper = relay
        .connect(
            helper_token(&relay, json!({"groups": ["tier2"]})),
            Role::Helper,
        )
        .await
        .unwrap();
    let err = within(helper.connect_unattended("no-such-device", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::DeviceUnavailable));

    let mut foreign = relay
        .connect(
            relay.tenant("fabrikam").token(Persona::Helper),
            Role::Helper,
        )
        .await
        .unwrap();
    let err = within(foreign.connect_unattended("kiosk-7", ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CrossTenant));

    // A user's token cannot register as a device agent.
    let mut user = relay.sharer("contoso").await;
    assert_eq!(
        within(user.register_device()).await.unwrap_err().code(),
        Some(ErrorCode::WrongRole)
    );
    relay.stop().await;
}

#[tokio::test]
async fn a_reload_applies_to_new_requests_and_spares_active_sessions() {
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let (mut helper, sharer) = relay.paired("contoso", Mode::FullControl).await;

    let mut disabled = remote_help_relay::config::Config::with_defaults(
        "127.0.0.1:0".parse().unwrap(),
        vec![relay.tenant("contoso").config()],
    );
    disabled.tenants[0].policy = TenantPolicy::default();
    relay.handle.reload(&disabled);

    let err = relay
        .connect(relay.tenant("contoso").token(Persona::Helper), Role::Helper)
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TenantDisabled));
    // The session that was already running carries on.
    let mut input = within(helper.open_unsealed_channel(Channel::Input))
        .await
        .unwrap();
    within(input.send(Bytes::from_static(b"still allowed")))
        .await
        .unwrap();
    let (_, mut input_in) = within(sharer.accept_unsealed_channel()).await.unwrap();
    assert_eq!(
        &within(input_in.recv()).await.unwrap().unwrap()[..],
        b"still allowed"
    );
    // A client that signed in before the reload cannot start anything new.
    within(helper.end_session()).await.unwrap();
    let err = within(helper.create_session(Mode::ViewOnly))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TenantDisabled));
    relay.stop().await;
}

#[test]
fn the_worked_example_in_config_example_decides_as_documented() {
    use remote_help_relay::auth::{DeviceClaims, Principal, PrincipalKind, ProfileClaims};
    use remote_help_relay::core::TenantId;
    let example = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.example.toml");
    let config = remote_help_relay::config::Config::load(&example).unwrap();
    let policy = &config.tenants[0].policy;
    let person = |groups: &[&str], device_groups: Option<&[&str]>, kind: PrincipalKind| Principal {
        tenant: TenantId::new("contoso"),
        subject: "s".into(),
        kind,
        profile: ProfileClaims::default(),
        groups: groups.iter().map(|g| g.to_string()).collect(),
        licenses: vec!["remote-help".into()],
        device: device_groups.map(|groups| DeviceClaims {
            platform: "windows".into(),
            enrolled: true,
            compliant: true,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            ..DeviceClaims::default()
        }),
        token_id: None,
        expires_at: 0,
    };
    let desk = person(&["grp-service-desk"], None, PrincipalKind::User);
    let engineering = person(&["grp-desktop-engineering"], None, PrincipalKind::User);
    let marketing = person(&["grp-marketing"], None, PrincipalKind::User);
    let finance_user = person(&["grp-finance-users"], Some(&[]), PrincipalKind::User);
    let hr_on_finance_laptop = person(
        &["grp-hr"],
        Some(&["grp-finance-laptops"]),
        PrincipalKind::User,
    );
    let hr_elsewhere = person(&["grp-hr"], Some(&["grp-other"]), PrincipalKind::User);
    let agent = person(&[], Some(&["grp-kiosks"]), PrincipalKind::Device);
    let cases = [
        (&desk, &finance_user, Mode::FullControl, None),
        (&desk, &finance_user, Mode::ViewOnly, None),
        (
            &desk,
            &finance_user,
            Mode::Elevation,
            Some(ErrorCode::PermissionDenied),
        ),
        (&desk, &hr_on_finance_laptop, Mode::FullControl, None),
        (
            &desk,
            &hr_elsewhere,
            Mode::ViewOnly,
            Some(ErrorCode::NotInScope),
        ),
        (&engineering, &hr_elsewhere, Mode::Elevation, None),
        (&engineering, &agent, Mode::Unattended, None),
        (
            &marketing,
            &finance_user,
            Mode::ViewOnly,
            Some(ErrorCode::PermissionDenied),
        ),
    ];
    assert!(policy.enabled);
    for (i, (helper, sharer, mode, expected)) in cases.into_iter().enumerate() {
        let decided = policy
            .may_help(helper, sharer, mode)
            .err()
            .map(|r| r.code());
        assert_eq!(
            decided,
            expected,
            "row {} of the table in docs/policy.md",
            i + 1
        );
    }
}

#[tokio::test]
async fn an_answer_to_a_lapsed_mode_prompt_is_refused_with_consent_timeout_and_the_session_goes_on()
{
    // Long enough for the first consent to be given at once, short enough to wait out.
    let relay = TestRelay::builder()
        .config(|c| c.consent_timeout = Duration::from_secs(3))
        .start()
        .await;
    let (mut helper, mut sharer) = relay.paired("contoso", Mode::ViewOnly).await;
    let (raised, lapsed) = within(async {
        tokio::join!(helper.request_mode(Mode::FullControl, ""), async {
            sharer.wait_for_consent_request().await.unwrap();
            // The sharer leaves the prompt unanswered: both are told it lapsed.
            sharer.wait_for_mode_change().await
        })
    })
    .await;
    assert_eq!(raised.unwrap_err().code(), Some(ErrorCode::ConsentTimeout));
    assert_eq!(lapsed.unwrap_err().code(), Some(ErrorCode::ConsentTimeout));
    // The answer comes too late: refused with CONSENT_TIMEOUT, not fatally, and the mode
    // did not change.
    let late = within(sharer.answer_mode_change(true)).await.unwrap_err();
    assert_eq!(late.code(), Some(ErrorCode::ConsentTimeout));
    within(sharer.ping()).await.unwrap();
    within(helper.ping()).await.unwrap();
    // The session goes on: a new raise is asked and granted as usual.
    raise_with_consent(&mut helper, &mut sharer, Mode::FullControl, "").await;
    relay.stop().await;
}

/// The relay's config with contoso's policy as `tweak` makes it (for reloads).
fn reloaded(
    relay: &TestRelay,
    tweak: impl FnOnce(&mut TenantPolicy),
) -> remote_help_relay::config::Config {
    let mut config = remote_help_relay::config::Config::with_defaults(
        "127.0.0.1:0".parse().unwrap(),
        vec![relay.tenant("contoso").config()],
    );
    tweak(&mut config.tenants[0].policy);
    config
}

#[tokio::test]
async fn a_tenant_disabled_during_a_session_grants_no_raised_mode_but_the_session_goes_on() {
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let (mut helper, mut sharer) = relay.paired("contoso", Mode::ViewOnly).await;

    // A raise the sharer is asked about when the reload lands: accepting it no longer
    // raises anything; both are told why.
    let (raised, answered) = within(async {
        tokio::join!(helper.request_mode(Mode::FullControl, ""), async {
            sharer.wait_for_consent_request().await.unwrap();
            relay
                .handle
                .reload(&reloaded(&relay, |p| p.enabled = false));
            sharer.answer_mode_change(true).await
        })
    })
    .await;
    assert_eq!(raised.unwrap_err().code(), Some(ErrorCode::TenantDisabled));
    assert_eq!(
        answered.unwrap_err().code(),
        Some(ErrorCode::TenantDisabled)
    );

    // A raise asked after the reload is refused at once, before the sharer is asked.
    let err = within(helper.request_mode(Mode::Elevation, ""))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::TenantDisabled));
    within(sharer.ping()).await.unwrap();

    // The session itself carries on, still view only: keeping (or lowering) the mode works.
    assert_eq!(
        within(helper.request_mode(Mode::ViewOnly, ""))
            .await
            .unwrap(),
        Mode::ViewOnly
    );
    assert_eq!(
        within(sharer.wait_for_mode_change()).await.unwrap(),
        Mode::ViewOnly
    );
    let mut screen = within(sharer.open_unsealed_channel(Channel::Screen))
        .await
        .unwrap();
    within(screen.send(Bytes::from_static(b"still shared")))
        .await
        .unwrap();
    let (_, mut screen_in) = within(helper.accept_unsealed_channel()).await.unwrap();
    assert_eq!(
        &within(screen_in.recv()).await.unwrap().unwrap()[..],
        b"still shared"
    );
    // Enabled again, raising works again.
    relay.handle.reload(&reloaded(&relay, |_| {}));
    raise_with_consent(&mut helper, &mut sharer, Mode::FullControl, "").await;
    relay.stop().await;
}

#[tokio::test]
async fn a_second_mode_request_while_one_waits_is_busy_and_says_so() {
    use futures_util::{SinkExt, StreamExt};
    use remote_help_proto::framing::ControlCodec;
    use remote_help_proto::v1::{self, client_to_relay::Msg as Out, relay_to_client::Msg as In};
    use tokio_util::codec::{FramedRead, FramedWrite};

    let relay = TestRelay::start().await;
    let (helper, mut sharer) = relay.paired("contoso", Mode::ViewOnly).await;
    let (_endpoint, _connection, send, recv) = helper.into_raw_parts().unwrap();
    let mut send = FramedWrite::new(
        send,
        ControlCodec::<v1::RelayToClient, v1::ClientToRelay>::new(1 << 20),
    );
    let mut recv = FramedRead::new(
        recv,
        ControlCodec::<v1::RelayToClient, v1::ClientToRelay>::new(1 << 20),
    );
    let request = |mode: Mode| v1::ClientToRelay {
        msg: Some(Out::RequestMode(v1::RequestMode {
            mode: mode.to_wire() as i32,
            reason: String::new(),
        })),
    };
    within(send.send(request(Mode::FullControl))).await.unwrap();
    within(sharer.wait_for_consent_request()).await.unwrap();
    within(send.send(request(Mode::Elevation))).await.unwrap();
    let answer = within(recv.next()).await.unwrap().unwrap().msg.unwrap();
    let In::Error(busy) = answer else {
        panic!("{answer:?}")
    };
    assert_eq!(busy.code, ErrorCode::SessionBusy as i32);
    assert!(!busy.fatal, "{busy:?}");
    assert!(
        busy.message.contains("mode change is already waiting"),
        "{}",
        busy.message
    );
    // The first request still stands: the sharer's answer raises the mode.
    assert_eq!(
        within(sharer.answer_mode_change(true)).await.unwrap(),
        Some(Mode::FullControl)
    );
    relay.stop().await;
}

#[tokio::test]
async fn an_unattended_session_in_a_tenant_without_chat_carries_no_chat() {
    let relay = TestRelay::builder()
        .plaintext_clients()
        .policy("contoso", |p| p.disable_chat = true)
        .start()
        .await;
    let mut agent = relay
        .connect(agent_token(&relay, "kiosk-9"), Role::Sharer)
        .await
        .unwrap();
    within(agent.register_device()).await.unwrap();
    let mut helper = relay.helper("contoso").await;
    let started = within(helper.connect_unattended("kiosk-9", ""))
        .await
        .unwrap();
    let agent_view = within(agent.wait_for_start()).await.unwrap();
    for view in [&started, &agent_view] {
        assert!(view.chat_disabled, "{view:?}");
        assert_eq!(
            view.channels,
            vec![Channel::Screen, Channel::Input, Channel::Keys]
        );
    }
    // A chat stream from either side is refused, alone.
    for side in [&helper, &agent] {
        let mut chat = within(side.connection().open_uni()).await.unwrap();
        within(chat.write_all(&[Channel::Chat.to_wire() as u8, 0, 0, 0, 1, b'x']))
            .await
            .unwrap();
        let stopped = within(chat.stopped()).await.unwrap();
        assert_eq!(
            stopped.map(|c| c.into_inner()),
            Some(u64::from(ErrorCode::ChatDisabled.to_quic()))
        );
    }
    let mut input = within(helper.open_unsealed_channel(Channel::Input))
        .await
        .unwrap();
    within(input.send(Bytes::from_static(b"tap")))
        .await
        .unwrap();
    let (channel, _) = within(agent.accept_unsealed_channel()).await.unwrap();
    assert_eq!(channel, Channel::Input);
    relay.stop().await;
}

#[tokio::test]
async fn the_probe_completes_in_a_tenant_without_chat() {
    use remote_help_relay::probe::{self, ProbeSettings};
    let relay = TestRelay::builder()
        .policy("contoso", |p| p.disable_chat = true)
        .start()
        .await;
    let contoso = relay.tenant("contoso");
    let mut steps = Vec::new();
    let report = within(probe::run(
        relay.options(contoso.token(Persona::Helper), Role::Helper),
        relay.options(contoso.token(Persona::Sharer), Role::Sharer),
        ProbeSettings {
            round_trips: 20,
            screen_bytes: 1024 * 1024,
            frame_size: 64 * 1024,
        },
        |step| steps.push(step.to_string()),
    ))
    .await
    .unwrap();
    assert_eq!(report.screen_bytes, 1024 * 1024);
    assert_eq!(report.sharer_end_reason, "PEER_ENDED");
    assert!(
        steps.iter().any(|s| s.contains("the tenant disabled chat")),
        "{steps:?}"
    );
    relay.stop().await;
}
