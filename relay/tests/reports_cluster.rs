//! The reports API in a cluster, over real sockets: two in-process nodes on reserved ports
//! (QUIC and admin), each with its own generated audit history and live sessions over real
//! QUIC, each knowing the other's admin address. Any node answers for the whole cluster
//! with the caller's own token; a node that does not answer is named, never silently left
//! out.

mod common;

use std::collections::BTreeSet;
use std::net::{SocketAddr, TcpListener, UdpSocket};
use std::time::{Duration, SystemTime};

use common::{TestRelay, http, http_with_head, join_and_consent, metrics, with_claims, within};
use remote_help_proto::ErrorCode;
use remote_help_relay::audit::{
    AuditConfig, EventKind, KEY_FILE, audit_files, read_events, write_history,
};
use remote_help_relay::client::Client;
use remote_help_relay::config::{ClusterConfig, TlsSource};
use remote_help_relay::core::cluster::NodeId;
use remote_help_relay::core::{Mode, Role};
use remote_help_relay::dev::Persona;
use remote_help_relay::issuer::TokenSigner;
use remote_help_relay::report::index::IndexedSession;
use remote_help_relay::report::synth::{Spec, history};
use remote_help_relay::report::{self, Filter, SessionRow};
use remote_help_relay::tls::RelayIdentity as _;
use serde_json::{Value, json};

use common::{ADMIN_AUDIENCE, OPERATOR_TOKEN, report_roles};

struct Cluster {
    nodes: Vec<Option<TestRelay>>,
    admin: Vec<SocketAddr>,
    /// Tenant ids: `a` (most of the history) and `b`, unique to the test.
    a: String,
    b: String,
    _tls: tempfile::TempDir,
}

/// Two nodes sharing tenants `{prefix}-a` and `{prefix}-b` (the same keys) and a
/// certificate; node `i` starts with `events` generated events of history (seed `i`).
async fn cluster(prefix: &str, events: u64) -> Cluster {
    let (a, b) = (format!("{prefix}-a"), format!("{prefix}-b"));
    let tls = tempfile::tempdir().unwrap();
    remote_help_relay::tls::ServerIdentity::self_signed_in(tls.path(), vec!["localhost".into()])
        .unwrap();
    let quic: Vec<UdpSocket> = (0..2)
        .map(|_| UdpSocket::bind("127.0.0.1:0").unwrap())
        .collect();
    let admin: Vec<TcpListener> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let quic_addrs: Vec<SocketAddr> = quic.iter().map(|s| s.local_addr().unwrap()).collect();
    let admin_addrs: Vec<SocketAddr> = admin.iter().map(|s| s.local_addr().unwrap()).collect();
    drop((quic, admin));
    let mut nodes: Vec<Option<TestRelay>> = Vec::new();
    for id in 0..2usize {
        let shared = nodes
            .first()
            .and_then(|n| n.as_ref())
            .map(|n| vec![n.tenant(&a).config(), n.tenant(&b).config()]);
        let cert = TlsSource::Files {
            cert: tls.path().join("relay-cert.pem"),
            key: tls.path().join("relay-key.pem"),
        };
        let (quic_addrs, admin_addrs) = (quic_addrs.clone(), admin_addrs.clone());
        let tenants = [(a.clone(), 3), (b.clone(), 1)];
        let relay = TestRelay::builder()
            .tenant(&a, TokenSigner::generate_ed25519("a-1").unwrap())
            .tenant(&b, TokenSigner::generate_ed25519("b-1").unwrap())
            .config(move |c| {
                c.listen = quic_addrs[id];
                c.admin.listen = Some(admin_addrs[id]);
                c.admin.token = Some(OPERATOR_TOKEN.into());
                c.tls = cert;
                let mut cluster = ClusterConfig::new(
                    NodeId::new(id as u8).unwrap(),
                    quic_addrs.iter().map(|a| a.to_string()).collect(),
                );
                cluster.admin_nodes = admin_addrs.iter().map(|a| format!("http://{a}")).collect();
                c.cluster = Some(cluster);
                // The same tenants, keys and all, on every node.
                if let Some(shared) = shared {
                    c.tenants = shared;
                }
                let spec = Spec {
                    tenants: tenants.iter().map(|(t, w)| (t.clone(), *w)).collect(),
                    days: 20,
                    events,
                    end: SystemTime::now() - Duration::from_secs(3600),
                    seed: 100 + id as u64,
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
            .policy(&a, report_roles)
            .policy(&b, report_roles)
            .start()
            .await;
        nodes.push(Some(relay));
    }
    Cluster {
        nodes,
        admin: admin_addrs,
        a,
        b,
        _tls: tls,
    }
}

impl Cluster {
    fn node(&self, id: usize) -> &TestRelay {
        self.nodes[id].as_ref().unwrap()
    }

    /// Tokens are signed with node 0's tenants' keys, which every node trusts.
    fn keys(&self, tenant: &str) -> &common::TestTenant {
        self.node(0).tenant(tenant)
    }

    /// A tenant administrator's token for `tenant` with `groups`.
    fn admin_token(&self, tenant: &str, groups: &[&str]) -> String {
        let t = self.keys(tenant);
        let mut spec = with_claims(t.spec(Persona::Helper), json!({ "groups": groups }));
        spec.audience = ADMIN_AUDIENCE.into();
        spec.subject = format!("{tenant}-admin");
        t.sign(&spec)
    }

    /// A helper and a sharer of `tenant` in a session held by node `id`.
    async fn paired_on(&self, id: usize, tenant: &str) -> (Client, Client) {
        let node = self.node(id);
        let connect =
            |persona, role| Client::connect(node.options(self.keys(tenant).token(persona), role));
        let mut helper = within(connect(Persona::Helper, Role::Helper))
            .await
            .unwrap();
        let mut sharer = within(connect(Persona::Sharer, Role::Sharer))
            .await
            .unwrap();
        let created = within(helper.create_session(Mode::FullControl))
            .await
            .unwrap();
        assert!(
            created.code.starts_with(&id.to_string()),
            "{}",
            created.code
        );
        join_and_consent(&mut helper, &mut sharer, &created.code).await;
        (helper, sharer)
    }

    /// What `relay sessions --audit-dir` over both nodes' folders reports for `tenant`.
    fn audit_rows(&self, tenant: &str) -> Vec<SessionRow> {
        let mut files = Vec::new();
        for node in self.nodes.iter().flatten() {
            files.extend(audit_files(&node.audit_dir()));
        }
        report::sessions(
            &read_events(&files),
            &Filter {
                tenant: Some(tenant.into()),
                ..Filter::default()
            },
        )
    }

    async fn stop(self) {
        for node in self.nodes.into_iter().flatten() {
            node.stop().await;
        }
    }
}

async fn get_json(admin: SocketAddr, path: &str, token: &str) -> (u16, Value) {
    let (status, body) = http(admin, "GET", path, Some(token)).await;
    let value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{path}: {e}: {body}"));
    (status, value)
}

/// Every page of `/sessions` with `query`, following cursors; fails on a repeated row or a
/// partial page.
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
        assert_eq!(page["partial"], false, "{path}");
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

fn ids(rows: &[Value]) -> BTreeSet<String> {
    rows.iter()
        .map(|r| r["session_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn a_tenant_administrator_asking_one_node_gets_the_whole_clusters_report() {
    let cluster = cluster("fan-whole", 1_500).await;
    let (a, b) = (cluster.a.clone(), cluster.b.clone());
    let node0 = cluster.admin[0];
    let reader = cluster.admin_token(&a, &["report-readers"]);
    let (_h0, _s0) = cluster.paired_on(0, &a).await;
    let (mut h1, mut s1) = cluster.paired_on(1, &a).await;

    // Active: both nodes' sessions, each naming its node.
    let (status, active) = get_json(node0, "/api/v1/reports/active", &reader).await;
    assert_eq!(status, 200, "{active}");
    assert_eq!(active["partial"], false);
    assert_eq!(active["missing_nodes"], json!([]));
    let rows = active["sessions"].as_array().unwrap();
    assert_eq!(rows.len(), 2, "{active}");
    let nodes: BTreeSet<u64> = rows
        .iter()
        .map(|r| r["relay_node"].as_u64().unwrap())
        .collect();
    assert_eq!(nodes, [0, 1].into());
    let on_node_1 = rows.iter().find(|r| r["relay_node"] == 1).unwrap()["session_id"]
        .as_str()
        .unwrap()
        .to_string();
    // A forwarded request (scope=node) is answered for that node only, never fanned out.
    let (_, own) = get_json(node0, "/api/v1/reports/active?scope=node", &reader).await;
    assert_eq!(own["sessions"].as_array().unwrap().len(), 1, "{own}");
    assert!(own.get("partial").is_none(), "{own}");

    // Sessions: every row of both nodes' audit files exactly once, in order, across pages.
    let expected = cluster.audit_rows(&a);
    for node in 0..2 {
        let own = report::sessions(
            &read_events(&audit_files(&cluster.node(node).audit_dir())),
            &Filter {
                tenant: Some(a.clone()),
                ..Filter::default()
            },
        );
        assert!(own.len() > 50, "node {node} holds its own sessions");
    }
    let api = all_pages(node0, &reader, "limit=37&sort=start_time&order=asc").await;
    assert_eq!(
        api.iter().map(|s| s.row.clone()).collect::<Vec<_>>(),
        expected,
        "the cluster's rows are both audit logs', in start order"
    );
    let only_node_0 = cluster.node(0).handle.admin_addr().unwrap();
    let (_, own) = get_json(
        only_node_0,
        "/api/v1/reports/sessions?scope=node&limit=1000",
        &reader,
    )
    .await;
    assert!(
        own["sessions"].as_array().unwrap().len() < expected.len(),
        "scope=node is this node's part only"
    );
    // A cluster's cursor is not a node's, and neither is valid for the other.
    let (_, first) = get_json(node0, "/api/v1/reports/sessions?limit=3", &reader).await;
    let cluster_cursor = first["next_cursor"].as_str().unwrap().to_string();
    let (_, own_first) = get_json(
        node0,
        "/api/v1/reports/sessions?limit=3&scope=node",
        &reader,
    )
    .await;
    let node_cursor = own_first["next_cursor"].as_str().unwrap().to_string();
    for path in [
        format!("/api/v1/reports/sessions?limit=3&cursor={node_cursor}"),
        format!("/api/v1/reports/sessions?limit=3&scope=node&cursor={cluster_cursor}"),
        format!("/api/v1/reports/sessions?limit=3&order=asc&cursor={cluster_cursor}"),
    ] {
        let (status, body) = get_json(node0, &path, &reader).await;
        assert_eq!(
            (status, &body["error"]["code"]),
            (400, &json!("bad_cursor")),
            "{path}"
        );
    }
    for (sort, order) in [
        ("duration", "desc"),
        ("helper", "asc"),
        ("start_time", "desc"),
    ] {
        let listed = all_pages(
            node0,
            &reader,
            &format!("limit=41&sort={sort}&order={order}"),
        )
        .await;
        let got: BTreeSet<String> = listed.iter().map(|s| s.row.session_id.clone()).collect();
        let want: BTreeSet<String> = expected.iter().map(|r| r.session_id.clone()).collect();
        assert_eq!(got, want, "{sort} {order}: every row once");
        let in_order = listed.windows(2).all(|w| match sort {
            "duration" => {
                w[0].row.duration_secs.unwrap_or(-1.0) >= w[1].row.duration_secs.unwrap_or(-1.0)
            }
            "helper" => w[0].row.helper <= w[1].row.helper,
            _ => w[0].row.start_time >= w[1].row.start_time,
        });
        assert!(in_order, "{sort} {order} is in order across nodes");
    }

    // CSV: the same rows, oldest first, complete.
    let (status, head, csv) =
        http_with_head(node0, "GET", "/api/v1/reports/sessions.csv", Some(&reader)).await;
    assert_eq!(status, 200);
    assert!(
        head.to_ascii_lowercase()
            .contains("relay-report-partial: false"),
        "{head}"
    );
    let csv_ids = common::csv::column(&common::csv::parse(&csv), "session_id");
    assert_eq!(
        csv_ids,
        expected
            .iter()
            .map(|r| r.session_id.clone())
            .collect::<Vec<_>>()
    );

    // Summary: exactly what both nodes' audit files give.
    let (status, summary) = get_json(node0, "/api/v1/reports/summary", &reader).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(summary["partial"], false);
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
    let per_day: u64 = summary["sessions_per_day"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(per_day as usize, reference.count);
    let mut files = audit_files(&cluster.node(0).audit_dir());
    files.extend(audit_files(&cluster.node(1).audit_dir()));
    let refusals = read_events(&files)
        .iter()
        .filter(|e| e.tenant == a && e.event == Some(EventKind::SessionRefused))
        .count();
    let counted: u64 = summary["refusals_by_reason"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(counted as usize, refusals);

    // Detail of node 1's live session, through node 0.
    let detail_path = format!("/api/v1/reports/sessions/{on_node_1}");
    let (status, detail) = get_json(node0, &detail_path, &reader).await;
    assert_eq!(status, 200, "{detail}");
    assert_eq!(detail["active"], true);
    assert_eq!(detail["session"]["relay_node"], 1);

    // Tenant isolation through the fan-out: b sees nothing of a on either node.
    let other = cluster.admin_token(&b, &["report-admins"]);
    let (_, theirs) = get_json(node0, "/api/v1/reports/active", &other).await;
    assert!(
        theirs["sessions"].as_array().unwrap().is_empty(),
        "{theirs}"
    );
    let b_rows = all_pages(node0, &other, "limit=100").await;
    assert!(b_rows.iter().all(|r| r.row.tenant == b));
    assert_eq!(b_rows.len(), cluster.audit_rows(&b).len());
    let (status, hidden) = http(node0, "GET", &detail_path, Some(&other)).await;
    let (status_none, none) = http(
        node0,
        "GET",
        "/api/v1/reports/sessions/00000000000000000000000000000000",
        Some(&other),
    )
    .await;
    assert_eq!(
        (status, &hidden),
        (status_none, &none),
        "a's session looks like none"
    );
    assert_eq!(status, 404);
    let end_path = format!("{detail_path}/end");
    let (status, refused) = http(node0, "POST", &end_path, Some(&other)).await;
    assert_eq!((status, refused), (404, none), "b cannot end a's session");
    for node in &cluster.admin {
        let (_, theirs) = get_json(*node, "/api/v1/reports/summary", &other).await;
        assert_eq!(theirs["sessions"], json!(cluster.audit_rows(&b).len()));
    }

    // End node 1's session through node 0: its parties hear ADMIN_ENDED, node 1's audit
    // log names the administrator.
    let ender = cluster.admin_token(&a, &["report-admins"]);
    let (status, body) = http(node0, "POST", &end_path, Some(&reader)).await;
    assert_eq!(status, 403, "reading is not ending: {body}");
    let (status, body) = http(node0, "POST", &end_path, Some(&ender)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(within(h1.wait_for_end()).await, ErrorCode::AdminEnded);
    assert_eq!(within(s1.wait_for_end()).await, ErrorCode::AdminEnded);
    let logged = read_events(&audit_files(&cluster.node(1).audit_dir()))
        .into_iter()
        .find(|e| e.session_id == on_node_1 && e.event == Some(EventKind::SessionEnded))
        .unwrap();
    assert_eq!(
        logged.administrator.as_deref(),
        Some(format!("tenant:{a}-admin").as_str())
    );
    assert_eq!(http(node0, "POST", &end_path, Some(&ender)).await.0, 404);
    cluster.stop().await;
}

#[tokio::test]
async fn a_node_that_does_not_answer_is_named_and_the_answer_is_flagged_partial() {
    let mut cluster = cluster("fan-partial", 300).await;
    let a = cluster.a.clone();
    let node0 = cluster.admin[0];
    let reader = cluster.admin_token(&a, &["report-admins"]);
    let (_h0, _s0) = cluster.paired_on(0, &a).await;
    let failures = |m: &std::collections::HashMap<String, f64>| {
        m.get("relay_reports_fanout_failures_total{node=\"1\"}")
            .copied()
            .unwrap_or(0.0)
    };
    let before = failures(&metrics(node0).await);
    cluster.nodes[1].take().unwrap().stop().await;

    let (status, active) = get_json(node0, "/api/v1/reports/active", &reader).await;
    assert_eq!(status, 200, "{active}");
    assert_eq!(active["partial"], true);
    assert_eq!(active["missing_nodes"], json!([1]));
    assert_eq!(
        ids(active["sessions"].as_array().unwrap()).len(),
        1,
        "node 0's part is there"
    );

    let (status, page) = get_json(node0, "/api/v1/reports/sessions?limit=5", &reader).await;
    assert_eq!(status, 200, "{page}");
    assert_eq!(
        (&page["partial"], &page["missing_nodes"]),
        (&json!(true), &json!([1]))
    );
    assert_eq!(page["sessions"].as_array().unwrap().len(), 5);

    let (status, summary) = get_json(node0, "/api/v1/reports/summary", &reader).await;
    assert_eq!(status, 200);
    assert_eq!(
        (&summary["partial"], &summary["missing_nodes"]),
        (&json!(true), &json!([1]))
    );

    let (status, head, _) =
        http_with_head(node0, "GET", "/api/v1/reports/sessions.csv", Some(&reader)).await;
    assert_eq!(status, 200);
    let head = head.to_ascii_lowercase();
    assert!(head.contains("relay-report-partial: true"), "{head}");
    assert!(head.contains("relay-report-missing-nodes: 1"), "{head}");
    assert!(head.contains("sessions-partial.csv"), "{head}");

    for (method, path) in [
        (
            "GET",
            "/api/v1/reports/sessions/00000000000000000000000000000000",
        ),
        (
            "POST",
            "/api/v1/reports/sessions/00000000000000000000000000000000/end",
        ),
    ] {
        let (status, body) = http(node0, method, path, Some(&reader)).await;
        let body: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(status, 404, "{body}");
        assert_eq!(body["error"]["code"], "not_found");
        assert_eq!(
            (&body["partial"], &body["missing_nodes"]),
            (&json!(true), &json!([1]))
        );
    }
    assert!(
        failures(&metrics(node0).await) >= before + 6.0,
        "each node that did not answer is counted"
    );
    cluster.stop().await;
}

#[tokio::test]
async fn a_node_that_accepts_but_never_answers_is_named_once_the_fanout_timeout_passes() {
    // Node 1's admin address accepts connections and never answers (a hung process).
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let held = tokio::spawn(async move {
        let mut open = Vec::new();
        while let Ok((stream, _)) = hung.accept().await {
            open.push(stream);
        }
    });
    let tenant = "fan-hung";
    let relay = TestRelay::builder()
        .tenant(tenant, TokenSigner::generate_ed25519("h-1").unwrap())
        .policy(tenant, report_roles)
        .config(move |c| {
            let mut cluster = ClusterConfig::new(
                NodeId::new(0).unwrap(),
                vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            );
            cluster.admin_nodes = vec!["http://127.0.0.1:3".into(), format!("http://{hung_addr}")];
            cluster.fanout_timeout = Duration::from_millis(300);
            c.cluster = Some(cluster);
        })
        .start()
        .await;
    let admin = relay.handle.admin_addr().unwrap();
    let t = relay.tenant(tenant);
    let mut spec = with_claims(
        t.spec(Persona::Helper),
        json!({ "groups": ["report-readers"] }),
    );
    spec.audience = ADMIN_AUDIENCE.into();
    let token = t.sign(&spec);
    let (status, summary) = get_json(admin, "/api/v1/reports/summary", &token).await;
    assert_eq!(status, 200, "{summary}");
    assert_eq!(
        (&summary["partial"], &summary["missing_nodes"]),
        (&json!(true), &json!([1]))
    );
    held.abort();
    relay.stop().await;
}

#[tokio::test]
async fn a_tenant_past_its_concurrent_report_queries_gets_429_while_another_tenant_is_answered() {
    // Node 1's admin address takes requests and never answers until told: a query of
    // node 0 waits on it while holding its slot, so the slots in use are known exactly.
    let hung = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let hung_addr = hung.local_addr().unwrap();
    let (asked, mut requests) = tokio::sync::mpsc::unbounded_channel::<()>();
    let (release, released) = tokio::sync::oneshot::channel::<()>();
    let held = tokio::spawn(async move {
        use tokio::io::AsyncReadExt;
        let mut open = Vec::new();
        let accept = async {
            loop {
                let (mut stream, _) = hung.accept().await.unwrap();
                let mut head = Vec::new();
                let mut byte = [0u8; 1];
                while !head.ends_with(b"\r\n\r\n") && stream.read(&mut byte).await.unwrap() == 1 {
                    head.push(byte[0]);
                }
                asked.send(()).unwrap();
                open.push(stream);
            }
        };
        tokio::select! {
            _ = accept => {}
            _ = released => {}
        }
        // Dropping the streams answers every waiting request with a closed connection.
    });
    let (busy, other) = ("throttle-busy", "throttle-other");
    let relay = TestRelay::builder()
        .tenant(busy, TokenSigner::generate_ed25519("tb-1").unwrap())
        .tenant(other, TokenSigner::generate_ed25519("to-1").unwrap())
        .policy(busy, report_roles)
        .policy(other, report_roles)
        .config(move |c| {
            let mut cluster = ClusterConfig::new(
                NodeId::new(0).unwrap(),
                vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            );
            cluster.admin_nodes = vec!["http://127.0.0.1:3".into(), format!("http://{hung_addr}")];
            // Longer than the test: the held queries end when node 1's streams close.
            cluster.fanout_timeout = Duration::from_secs(600);
            c.cluster = Some(cluster);
            c.admin.reports_queries_per_tenant = 2;
            c.admin.reports_queued_per_tenant = 0;
        })
        .start()
        .await;
    let admin = relay.handle.admin_addr().unwrap();
    let token = |tenant: &str| {
        let t = relay.tenant(tenant);
        let mut spec = with_claims(
            t.spec(Persona::Helper),
            json!({ "groups": ["report-readers"] }),
        );
        spec.audience = ADMIN_AUDIENCE.into();
        t.sign(&spec)
    };
    let (busy_token, other_token) = (token(busy), token(other));

    // Two summaries of the busy tenant hold its two slots (both reached node 1).
    let holding: Vec<_> = (0..2)
        .map(|_| {
            let token = busy_token.clone();
            tokio::spawn(async move { get_json(admin, "/api/v1/reports/summary", &token).await })
        })
        .collect();
    for _ in 0..2 {
        within(requests.recv()).await.unwrap();
    }

    // A third query of the busy tenant, even one for this node only, is refused at once.
    let (status, head, body) = http_with_head(
        admin,
        "GET",
        "/api/v1/reports/sessions?scope=node",
        Some(&busy_token),
    )
    .await;
    assert_eq!(status, 429, "{body}");
    assert!(
        head.to_ascii_lowercase().contains("\r\nretry-after: 1"),
        "{head}"
    );
    let error: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(error["error"]["code"], "too_many_queries");
    let (status, _) = get_json(admin, "/api/v1/reports/summary", &busy_token).await;
    assert_eq!(status, 429);
    let throttled = metrics(admin).await;
    assert!(
        throttled
            .get("relay_reports_throttled_total{reason=\"queue_full\"}")
            .is_some_and(|n| *n >= 2.0),
        "{throttled:?}"
    );

    // Another tenant's queries are answered meanwhile.
    let (status, page) = get_json(admin, "/api/v1/reports/sessions?scope=node", &other_token).await;
    assert_eq!(status, 200, "{page}");
    let (status, _, csv) = http_with_head(
        admin,
        "GET",
        "/api/v1/reports/sessions.csv?scope=node",
        Some(&other_token),
    )
    .await;
    assert_eq!(status, 200, "{csv}");

    // Node 1 gives up: the held queries end (partial), and their slots are free again.
    release.send(()).unwrap();
    held.await.unwrap();
    for query in holding {
        let (status, summary) = within(query).await.unwrap();
        assert_eq!(status, 200, "{summary}");
        assert_eq!(summary["missing_nodes"], json!([1]));
    }
    let (status, page) = get_json(admin, "/api/v1/reports/sessions?scope=node", &busy_token).await;
    assert_eq!(status, 200, "{page}");
    relay.stop().await;
}

/// What answering for the cluster costs over answering for one node, on loopback: the
/// median of 30 requests each, printed. Not a test of speed (no threshold); run with
/// `cargo test -p remote-help-relay --all-features --test reports_cluster -- --ignored
/// --nocapture bench`.
#[tokio::test]
#[ignore = "a measurement; run by hand"]
async fn bench_cluster_fanout_against_one_node() {
    let events: u64 = std::env::var("BENCH_EVENTS")
        .ok()
        .and_then(|e| e.parse().ok())
        .unwrap_or(40_000);
    let cluster = cluster("fan-bench", events).await;
    let a = cluster.a.clone();
    let node0 = cluster.admin[0];
    let reader = cluster.admin_token(&a, &["report-readers"]);
    // Warm both indexes.
    for path in [
        "/api/v1/reports/summary",
        "/api/v1/reports/summary?scope=node",
    ] {
        get_json(node0, path, &reader).await;
    }
    println!("{events} events per node, 2 nodes, tenant {a}");
    for path in [
        "/api/v1/reports/sessions?limit=100&scope=node",
        "/api/v1/reports/sessions?limit=100",
        "/api/v1/reports/summary?scope=node",
        "/api/v1/reports/summary",
        "/api/v1/reports/active?scope=node",
        "/api/v1/reports/active",
    ] {
        let mut times = Vec::new();
        for _ in 0..30 {
            let started = std::time::Instant::now();
            let (status, _) = get_json(node0, path, &reader).await;
            times.push(started.elapsed());
            assert_eq!(status, 200);
        }
        times.sort();
        println!("{path}: median {:?}", times[times.len() / 2]);
    }
    cluster.stop().await;
}

/// A TLS-terminating proxy on 127.0.0.1 in front of `backend` (plain HTTP), with a
/// certificate from a test CA; returns its address and the CA's PEM file.
async fn tls_proxy(backend: SocketAddr, dir: &std::path::Path) -> (SocketAddr, std::path::PathBuf) {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    common::oidc::write_test_pki(dir);
    let certs = CertificateDer::pem_file_iter(dir.join("cert.pem"))
        .unwrap()
        .collect::<Result<Vec<_>, _>>()
        .unwrap();
    let key = PrivateKeyDer::from_pem_file(dir.join("key.pem")).unwrap();
    let config = rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(certs, key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(std::sync::Arc::new(config));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((tcp, _)) = listener.accept().await {
            let acceptor = acceptor.clone();
            tokio::spawn(async move {
                let Ok(mut tls) = acceptor.accept(tcp).await else {
                    return;
                };
                let Ok(mut plain) = tokio::net::TcpStream::connect(backend).await else {
                    return;
                };
                let _ = tokio::io::copy_bidirectional(&mut tls, &mut plain).await;
            });
        }
    });
    (addr, dir.join("ca.pem"))
}

#[tokio::test]
async fn a_node_behind_https_is_asked_over_tls_trusting_the_configured_ca() {
    let tenant = "fan-https";
    let tls = tempfile::tempdir().unwrap();
    // Node 1, plain HTTP on its admin listener, with a live session.
    let node1 = TestRelay::builder()
        .tenant(tenant, TokenSigner::generate_ed25519("s-1").unwrap())
        .policy(tenant, report_roles)
        .config(|c| {
            c.cluster = Some(ClusterConfig::new(
                NodeId::new(1).unwrap(),
                vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            ));
        })
        .start()
        .await;
    let (_helper, _sharer) = node1.paired(tenant, Mode::ViewOnly).await;
    let (proxy, ca) = tls_proxy(node1.handle.admin_addr().unwrap(), tls.path()).await;
    // Node 0 reaches node 1 only through the proxy, over https, trusting the test CA.
    let shared = node1.tenant(tenant).config();
    let node0 = TestRelay::builder()
        .tenant(tenant, TokenSigner::generate_ed25519("s-0").unwrap())
        .config(move |c| {
            c.tenants = vec![shared];
            let mut cluster = ClusterConfig::new(
                NodeId::new(0).unwrap(),
                vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            );
            cluster.admin_nodes = vec!["http://127.0.0.1:3".into(), format!("https://{proxy}")];
            cluster.admin_ca_file = Some(ca);
            c.cluster = Some(cluster);
        })
        .policy(tenant, report_roles)
        .start()
        .await;
    let t = node1.tenant(tenant);
    let mut spec = with_claims(
        t.spec(Persona::Helper),
        json!({ "groups": ["report-readers"] }),
    );
    spec.audience = ADMIN_AUDIENCE.into();
    let token = t.sign(&spec);
    let admin = node0.handle.admin_addr().unwrap();
    let (status, active) = get_json(admin, "/api/v1/reports/active", &token).await;
    assert_eq!(status, 200, "{active}");
    assert_eq!(active["partial"], false, "{active}");
    let rows = active["sessions"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{active}");
    assert_eq!(rows[0]["relay_node"], 1);
    node0.stop().await;
    node1.stop().await;
}
