//! Observability end to end: Prometheus metrics scraped from a live relay, durable audit
//! events with who helped whom on which device in which modes, the admin endpoint, and
//! readiness. HTTP is spoken by hand over a real TCP socket.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use common::{TestRelay, http, raise_with_consent, with_claims, within};
use remote_help_proto::ErrorCode;
use remote_help_relay::audit::{AuditEvent, EventKind, audit_files, read_events, verify_file};
use remote_help_relay::core::{Channel, Mode, Role};
use remote_help_relay::dev::Persona;
use remote_help_relay::issuer::TokenSigner;
use serde_json::json;

const ADMIN_TOKEN: &str = "test-admin-token-0123456789";

/// Parses the Prometheus text exposition into `series → value`, failing on any line
/// that is not a comment, blank, or `name{labels} value`.
fn scrape_values(text: &str) -> HashMap<String, f64> {
    let mut values = HashMap::new();
    for line in text.lines() {
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let (series, value) = line
            .rsplit_once(' ')
            .unwrap_or_else(|| panic!("bad exposition line {line:?}"));
        let value: f64 = value
            .parse()
            .unwrap_or_else(|_| panic!("bad value in {line:?}"));
        let name = series.split('{').next().unwrap();
        assert!(
            !name.is_empty()
                && name
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == ':'),
            "bad metric name in {line:?}"
        );
        values.insert(series.to_string(), value);
    }
    values
}

fn sum_of(values: &HashMap<String, f64>, name: &str, label: &str) -> f64 {
    values
        .iter()
        .filter(|(k, _)| {
            (k.as_str() == name || k.starts_with(&format!("{name}{{"))) && k.contains(label)
        })
        .map(|(_, v)| v)
        .sum()
}

fn events_of(relay: &TestRelay) -> Vec<AuditEvent> {
    read_events(&audit_files(&relay.audit_dir()))
}

#[tokio::test]
async fn the_metrics_endpoint_parses_and_its_series_exist_and_move() {
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let admin = relay.handle.admin_addr().unwrap();
    let (status, before) = http(admin, "GET", "/metrics", None).await;
    assert_eq!(status, 200);
    let before = scrape_values(&before);
    assert!(
        before.contains_key("relay_audit_available"),
        "the audit gauge is there from the first scrape"
    );

    // Drive traffic: a whole session with input, screen and chat; a bad token; a bad code.
    let (mut helper, mut sharer) = relay.paired("contoso", Mode::FullControl).await;
    let mut input = within(helper.open_unsealed_channel(Channel::Input))
        .await
        .unwrap();
    within(input.send(Bytes::from(vec![1u8; 1000])))
        .await
        .unwrap();
    let (_, mut input_in) = within(sharer.accept_unsealed_channel()).await.unwrap();
    within(input_in.recv()).await.unwrap();
    let _ = relay.connect("not.a.token".into(), Role::Helper).await;
    let mut guesser = relay.sharer("contoso").await;
    let _ = within(guesser.join("00000-00000")).await;
    within(helper.end_session()).await.unwrap();
    within(sharer.wait_for_end()).await;

    let (_, after) = http(admin, "GET", "/metrics", None).await;
    let after = scrape_values(&after);
    let moved = |name: &str, label: &str| {
        let (b, a) = (sum_of(&before, name, label), sum_of(&after, name, label));
        assert!(a > b, "{name} {label}: {b} → {a}");
    };
    moved("relay_sessions_started_total", "contoso");
    moved("relay_sessions_ended_total", "PEER_ENDED");
    moved("relay_forwarded_bytes_total", "channel=\"input\"");
    moved("relay_auth_failures_total", "malformed");
    moved("relay_refusals_total", "CODE_INVALID");
    moved("relay_session_setup_seconds_count", "");
    moved("relay_consent_wait_seconds_count", "");
    moved("relay_audit_write_seconds_count", "");
    // The hub's lock: every acquisition is counted (its contention is what sharding it
    // would be for; BENCHMARKS.md).
    moved("relay_hub_lock_acquisitions_total", "");
    for present in [
        "relay_build_info",
        "relay_connections_open",
        "relay_sessions_active",
        "relay_session_setup_seconds_bucket",
    ] {
        assert!(
            after.keys().any(|k| k.starts_with(present)),
            "{present} missing"
        );
    }
    // Nothing personal in labels: no user names or subjects.
    for series in after.keys() {
        for personal in ["Ada", "Grace", "helper-ada", "user-grace"] {
            assert!(
                !series.contains(personal),
                "personal data in a label: {series}"
            );
        }
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_session_is_audited_with_who_helped_whom_on_which_device_modes_and_bytes() {
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let mut helper = relay.helper("contoso").await;
    let mut sharer = relay.sharer("contoso").await;
    let created = within(helper.create_session_with_reason(Mode::ViewOnly, "INC-42"))
        .await
        .unwrap();
    common::join_and_consent(&mut helper, &mut sharer, &created.code).await;

    // The start event is on disk before the clients were told the session started.
    let started: Vec<AuditEvent> = events_of(&relay)
        .into_iter()
        .filter(|e| {
            e.session_id == created.session_id && e.event == Some(EventKind::SessionStarted)
        })
        .collect();
    assert_eq!(
        started.len(),
        1,
        "session_started must be durable before SessionStarted"
    );

    raise_with_consent(&mut helper, &mut sharer, Mode::FullControl, "").await;
    let mut chat = within(sharer.open_unsealed_channel(Channel::Chat))
        .await
        .unwrap();
    within(chat.send(Bytes::from_static(b"thanks")))
        .await
        .unwrap();
    let mut screen = within(sharer.open_unsealed_channel(Channel::Screen))
        .await
        .unwrap();
    within(screen.send(Bytes::from(vec![0u8; 10_000])))
        .await
        .unwrap();
    for _ in 0..2 {
        let (_, mut rx) = within(helper.accept_unsealed_channel()).await.unwrap();
        within(rx.recv()).await.unwrap();
    }
    within(helper.end_session()).await.unwrap();
    assert_eq!(within(sharer.wait_for_end()).await, ErrorCode::PeerEnded);

    let events: Vec<AuditEvent> = events_of(&relay)
        .into_iter()
        .filter(|e| e.session_id == created.session_id)
        .collect();
    let kinds: Vec<EventKind> = events.iter().filter_map(|e| e.event).collect();
    assert_eq!(
        kinds,
        [
            EventKind::SessionStarted,
            EventKind::ModeChanged,
            EventKind::SessionEnded
        ]
    );
    let start = &events[0];
    assert_eq!(start.schema, 1);
    assert_eq!(start.tenant, "contoso");
    assert_eq!(start.helper_id.as_deref(), Some("helper-ada"));
    assert_eq!(start.helper_name.as_deref(), Some("Ada Lovelace"));
    assert_eq!(start.sharer_id.as_deref(), Some("user-grace"));
    assert_eq!(start.sharer_name.as_deref(), Some("Grace Hopper"));
    assert_eq!(start.device_id.as_deref(), Some("dev-device-1"));
    assert_eq!(start.device_name.as_deref(), Some("GRACE-LAPTOP"));
    assert_eq!(start.platform.as_deref(), Some("windows"));
    assert_eq!(start.control_type.as_deref(), Some("view_only"));
    assert_eq!(start.reason.as_deref(), Some("INC-42"));
    assert_eq!(events[1].mode.as_deref(), Some("full_control"));
    let end = &events[2];
    assert_eq!(end.end_reason.as_deref(), Some("PEER_ENDED"));
    assert_eq!(end.modes, ["chat", "full_control", "view_only"]);
    assert!(end.duration_secs.unwrap() >= 0.0);
    assert!(end.bytes_sharer_to_helper.unwrap() >= 10_000);
    assert!(end.start_time.is_some() && end.end_time.is_some());
    assert!(
        time::OffsetDateTime::parse(&end.time, &time::format_description::well_known::Rfc3339)
            .is_ok()
    );
    for file in audit_files(&relay.audit_dir()) {
        verify_file(&file).unwrap();
    }
    relay.stop().await;
}

#[tokio::test]
async fn an_unattended_session_records_the_recipient_as_dashes() {
    let relay = TestRelay::start().await;
    let contoso = relay.tenant("contoso");
    let agent_token = contoso.sign(&with_claims(
        contoso.spec(Persona::Sharer),
        json!({"kind": "device", "licenses": [], "device_id": "kiosk-9", "device_name": "KIOSK-9",
               "platform": "android-dedicated", "manufacturer": "Samsung"}),
    ));
    let mut agent = relay.connect(agent_token, Role::Sharer).await.unwrap();
    within(agent.register_device()).await.unwrap();
    let mut helper = relay.helper("contoso").await;
    let started = within(helper.connect_unattended("kiosk-9", "CHG-7"))
        .await
        .unwrap();
    within(helper.end_session()).await.unwrap();
    within(agent.wait_for_end()).await;
    let end = events_of(&relay)
        .into_iter()
        .find(|e| e.session_id == started.session_id && e.event == Some(EventKind::SessionEnded))
        .unwrap();
    assert_eq!(end.sharer_id.as_deref(), Some("--"));
    assert_eq!(end.sharer_name.as_deref(), Some("--"));
    assert_eq!(end.device_name.as_deref(), Some("KIOSK-9"));
    assert_eq!(end.control_type.as_deref(), Some("unattended"));
    assert_eq!(end.reason.as_deref(), Some("CHG-7"));
    relay.stop().await;
}

#[tokio::test]
async fn refusals_are_audited_under_the_refused_partys_tenant() {
    let relay = TestRelay::builder()
        .tenant("contoso", TokenSigner::generate_ed25519("c1").unwrap())
        .tenant("fabrikam", TokenSigner::generate_ed25519("f1").unwrap())
        .start()
        .await;
    let mut helper = relay.helper("contoso").await;
    let created = within(helper.create_session(Mode::ViewOnly)).await.unwrap();
    let mut intruder = relay.sharer("fabrikam").await;
    within(intruder.join(&created.code)).await.unwrap_err();
    let mut declining = relay.sharer("contoso").await;
    within(declining.join(&created.code)).await.unwrap();
    within(declining.decline()).await.unwrap();
    // Refusals are queued without waiting; a later durable write flushes them in order.
    let (mut h2, _s2) = relay.paired("contoso", Mode::ViewOnly).await;
    within(h2.end_session()).await.unwrap();
    let refusals: Vec<(String, String)> = events_of(&relay)
        .into_iter()
        .filter(|e| e.event == Some(EventKind::SessionRefused))
        .map(|e| (e.tenant, e.refusal.unwrap_or_default()))
        .collect();
    assert!(
        refusals.contains(&("fabrikam".into(), "CROSS_TENANT".into())),
        "{refusals:?}"
    );
    assert!(
        refusals.contains(&("contoso".into(), "DECLINED".into())),
        "{refusals:?}"
    );
    relay.stop().await;
}

// The audit log under disk faults (full, read-only, torn lines, restarts): tests/audit_faults.rs
// (a real tmpfs filled up) and the faulty-disk unit tests in src/audit.rs.

#[tokio::test]
async fn the_admin_endpoint_lists_sessions_per_tenant_and_ends_one() {
    let relay = TestRelay::builder()
        .tenant("contoso", TokenSigner::generate_ed25519("c1").unwrap())
        .tenant("fabrikam", TokenSigner::generate_ed25519("f1").unwrap())
        .config(|c| c.admin.token = Some(ADMIN_TOKEN.into()))
        .start()
        .await;
    let admin = relay.handle.admin_addr().unwrap();
    let (mut helper, mut sharer) = relay.paired("contoso", Mode::FullControl).await;
    let (_fh, _fs) = relay.paired("fabrikam", Mode::ViewOnly).await;

    assert_eq!(http(admin, "GET", "/admin/sessions", None).await.0, 401);
    assert_eq!(
        http(
            admin,
            "GET",
            "/admin/sessions",
            Some("wrong-token-wrong-token")
        )
        .await
        .0,
        401
    );
    let (status, body) = http(
        admin,
        "GET",
        "/admin/sessions?tenant=contoso",
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 200);
    let listed: Vec<serde_json::Value> = serde_json::from_str(&body).unwrap();
    assert_eq!(listed.len(), 1, "only contoso's session: {body}");
    assert_eq!(listed[0]["tenant"], "contoso");
    assert_eq!(listed[0]["helper_name"], "Ada Lovelace");
    assert_eq!(listed[0]["mode"], "full_control");
    let (_, all) = http(admin, "GET", "/admin/sessions", Some(ADMIN_TOKEN)).await;
    assert_eq!(
        serde_json::from_str::<Vec<serde_json::Value>>(&all)
            .unwrap()
            .len(),
        2
    );

    let id = listed[0]["session_id"].as_str().unwrap().to_string();
    let (status, _) = http(
        admin,
        "POST",
        &format!("/admin/sessions/{id}/end"),
        Some(ADMIN_TOKEN),
    )
    .await;
    assert_eq!(status, 204);
    assert_eq!(within(helper.wait_for_end()).await, ErrorCode::AdminEnded);
    assert_eq!(within(sharer.wait_for_end()).await, ErrorCode::AdminEnded);
    let end = events_of(&relay)
        .into_iter()
        .find(|e| e.session_id == id && e.event == Some(EventKind::SessionEnded))
        .unwrap();
    assert_eq!(end.end_reason.as_deref(), Some("ADMIN_ENDED"));
    assert_eq!(
        http(
            admin,
            "POST",
            &format!("/admin/sessions/{id}/end"),
            Some(ADMIN_TOKEN)
        )
        .await
        .0,
        404
    );
    relay.stop().await;
}

#[tokio::test]
async fn health_is_live_and_readiness_drops_while_draining() {
    let relay = TestRelay::builder()
        .config(|c| c.drain_timeout = Duration::from_secs(600))
        .start()
        .await;
    let admin = relay.handle.admin_addr().unwrap();
    assert_eq!(http(admin, "GET", "/healthz", None).await.0, 200);
    assert_eq!(http(admin, "GET", "/readyz", None).await.0, 200);
    let (mut helper, mut sharer) = relay.paired("contoso", Mode::ViewOnly).await;
    let mut idle = relay.helper("contoso").await;
    relay.handle.begin_shutdown();
    // An idle connection is told at once: draining has begun. The active session keeps
    // the relay up, but it is no longer ready.
    assert_eq!(within(idle.wait_for_end()).await, ErrorCode::RelayShutdown);
    assert_eq!(
        http(admin, "GET", "/readyz", None).await,
        (503, "draining\n".to_string())
    );
    assert_eq!(http(admin, "GET", "/healthz", None).await.0, 200);
    within(helper.end_session()).await.unwrap();
    within(sharer.wait_for_end()).await;
    within(relay.handle.stopped()).await;
}

#[tokio::test]
async fn an_administrator_can_drain_the_relay_and_only_with_the_token() {
    const TOKEN: &str = "drain-test-admin-token-0123456789";
    let relay = TestRelay::builder()
        .config(|c| c.admin.token = Some(TOKEN.into()))
        .start()
        .await;
    let admin = relay.handle.admin_addr().unwrap();
    let wrong = http(
        admin,
        "POST",
        "/admin/drain",
        Some("not-the-token-0123456789"),
    )
    .await;
    assert_eq!(wrong.0, 401);
    assert_eq!(http(admin, "GET", "/readyz", None).await.0, 200);
    let (status, body) = http(admin, "POST", "/admin/drain", Some(TOKEN)).await;
    assert_eq!((status, body.as_str()), (202, "draining\n"));
    within(relay.handle.drain_requested()).await;
    // With no sessions to wait for, the relay stops by itself.
    let TestRelay { handle, .. } = relay;
    within(handle.stopped()).await;
}
