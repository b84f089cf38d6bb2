//! The Monitor page in a real headless Chromium, against a real relay: real QUIC sessions,
//! the real audit log, real signed administrator tokens. The browser is driven over the
//! DevTools pipe (`common::browser`). Screenshots of each tab (desktop and 375 px wide) are
//! kept in `target/test-artefacts/monitor/`.

mod common;

use std::collections::BTreeSet;
use std::net::SocketAddr;

use common::browser::{Browser, have_chromium};
use common::{TestRelay, http, with_claims, within};
use remote_help_proto::ErrorCode;
use remote_help_relay::audit::{audit_files, read_events};
use remote_help_relay::core::Mode;
use remote_help_relay::core::policy::{Assignment, Permission, PermissionSet, Scope};
use remote_help_relay::dev::Persona;
use remote_help_relay::issuer::TokenSigner;
use remote_help_relay::report::{self, Filter, SessionRow};
use serde_json::json;

const ADMIN_AUDIENCE: &str = "remote-help-relay/admin";
const OPERATOR_TOKEN: &str = "operator-token-0123456789";

/// Where the screenshots go: `target/test-artefacts/monitor/` of the workspace.
fn artefacts() -> std::path::PathBuf {
    common::browser::artefacts("monitor")
}

/// `report-readers` may read reports, `report-admins` also end sessions.
fn roles(policy: &mut remote_help_relay::core::policy::TenantPolicy) {
    for (group, permission) in [
        ("report-readers", Permission::ReadReports),
        ("report-admins", Permission::EndSessions),
    ] {
        policy.assignments.push(Assignment {
            permissions: PermissionSet::granting([permission]),
            role: format!("{group} role"),
            members: [group.to_string()].into(),
            scope: Scope::from_entries(["all_users"]),
        });
    }
}

/// Contoso and Fabrikam, each with [`roles`].
async fn relay() -> TestRelay {
    TestRelay::builder()
        .tenant(
            "contoso",
            TokenSigner::generate_ed25519("contoso-1").unwrap(),
        )
        .tenant(
            "fabrikam",
            TokenSigner::generate_ed25519("fabrikam-1").unwrap(),
        )
        .policy("contoso", roles)
        .policy("fabrikam", roles)
        .config(|c| c.admin.token = Some(OPERATOR_TOKEN.into()))
        .start()
        .await
}

fn admin_token(relay: &TestRelay, tenant: &str, groups: &[&str]) -> String {
    let t = relay.tenant(tenant);
    let mut spec = with_claims(t.spec(Persona::Helper), json!({ "groups": groups }));
    spec.audience = ADMIN_AUDIENCE.into();
    spec.subject = format!("{tenant}-admin");
    t.sign(&spec)
}

/// A session in `mode` that the helper ends: it is in the audit log, started and ended.
async fn ended_session(relay: &TestRelay, tenant: &str, mode: Mode) {
    let (mut helper, mut sharer) = relay.paired(tenant, mode).await;
    within(helper.end_session()).await.unwrap();
    assert_eq!(within(sharer.wait_for_end()).await, ErrorCode::PeerEnded);
}

/// What the audit log says of `tenant`'s sessions.
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

fn ids<'a>(rows: impl IntoIterator<Item = &'a SessionRow>) -> BTreeSet<String> {
    rows.into_iter().map(|r| r.session_id.clone()).collect()
}

/// The session ids in the Sessions tab's table.
async fn table_ids(page: &mut Browser) -> BTreeSet<String> {
    let value = page
        .eval("[...document.querySelectorAll('#sessions-table tbody tr')].map(tr => tr.dataset.session)")
        .await;
    serde_json::from_value(value).unwrap()
}

/// Opens the page and signs in by typing `token` into the sign-in form.
async fn sign_in(page: &mut Browser, admin: SocketAddr, token: &str) {
    page.navigate(&format!("http://{admin}/monitor/")).await;
    page.wait_until("document.readyState === 'complete' && document.getElementById('token')")
        .await;
    page.eval("document.getElementById('token').focus()").await;
    page.type_text(token).await;
    page.eval("document.querySelector('#token-form button[type=submit]').click()")
        .await;
}

#[tokio::test]
async fn a_tenant_administrator_signs_in_sees_only_their_sessions_filters_exports_and_ends_one() {
    let test =
        "a_tenant_administrator_signs_in_sees_only_their_sessions_filters_exports_and_ends_one";
    if !have_chromium(test) {
        return;
    }
    let relay = relay().await;
    let admin = relay.handle.admin_addr().unwrap();
    let out = artefacts();

    // A run: contoso's two ended sessions and a live one; fabrikam's ended and live ones.
    ended_session(&relay, "contoso", Mode::ViewOnly).await;
    ended_session(&relay, "contoso", Mode::FullControl).await;
    let (mut helper, mut sharer) = relay.paired("contoso", Mode::FullControl).await;
    ended_session(&relay, "fabrikam", Mode::FullControl).await;
    let (_fabrikam_helper, _fabrikam_sharer) = relay.paired("fabrikam", Mode::FullControl).await;
    let contoso = audit_rows(&relay, "contoso");
    let fabrikam = audit_rows(&relay, "fabrikam");
    assert_eq!((contoso.len(), fabrikam.len()), (3, 2));
    let live = contoso
        .iter()
        .find(|r| r.end_time.is_none())
        .unwrap()
        .session_id
        .clone();

    let token = admin_token(&relay, "contoso", &["report-admins"]);
    let mut page = Browser::launch(&out.join("chromium-admin.log")).await;
    page.viewport(1280, 900, false).await;
    // Every Content-Security-Policy violation the page causes is collected, to check at the end.
    page.call("Page.enable", json!({})).await;
    page.call(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({ "source": "window.cspViolations = []; document.addEventListener('securitypolicyviolation', \
            e => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`))" }),
    )
    .await;
    sign_in(&mut page, admin, &token).await;
    page.wait_until(
        "document.body.dataset.monitorLoaded === 'true' && document.body.dataset.sessionsLoaded",
    )
    .await;

    // The page is served with its strict headers.
    let csp = page
        .eval("fetch('/monitor/').then(r => r.headers.get('content-security-policy'))")
        .await;
    assert!(csp.as_str().unwrap().contains("script-src 'self'"), "{csp}");

    // Monitor tab: contoso's one live session, and the history of the run.
    let who = page
        .eval("document.getElementById('who').textContent")
        .await;
    assert_eq!(who, json!("Signed in as contoso-admin of tenant contoso"));
    assert_eq!(
        page.eval("document.getElementById('active-count').textContent")
            .await,
        json!("1")
    );
    assert_eq!(
        page.eval("document.getElementById('total-count').textContent")
            .await,
        json!("3")
    );
    // The charts: 30 days, today's bar the run's three sessions, and today's durations.
    let mut per_day = vec![0; 29];
    per_day.push(3);
    assert_eq!(
        page.eval(
            "[...document.querySelectorAll('#chart rect')].map(r => Number(r.dataset.value))"
        )
        .await,
        json!(per_day)
    );
    assert_eq!(
        page.eval("document.querySelectorAll('#duration-chart rect').length")
            .await,
        json!(60),
        "a median and a 90th percentile bar per day"
    );
    page.screenshot(&out.join("monitor-desktop.png")).await;

    // Sessions tab: exactly contoso's sessions of the audit log, nothing of fabrikam's.
    page.eval("document.getElementById('tab-sessions').click()")
        .await;
    page.wait_until("!document.getElementById('panel-sessions').hidden")
        .await;
    assert_eq!(table_ids(&mut page).await, ids(&contoso));
    let html = page
        .eval("document.documentElement.outerHTML")
        .await
        .as_str()
        .unwrap()
        .to_string();
    for row in &fabrikam {
        assert!(
            !html.contains(&row.session_id[..8]),
            "fabrikam's session {} shows in contoso's page",
            row.session_id
        );
    }
    page.screenshot(&out.join("sessions-desktop.png")).await;

    // Sorting by a column header: the table's order is the API's for that sort, and
    // `aria-sort` says which way.
    for order in ["desc", "asc"] {
        let loaded = page.eval("document.body.dataset.sessionsLoaded").await;
        page.eval("document.querySelector('th[data-sort=duration] button').click()")
            .await;
        page.wait_until(&format!(
            "document.body.dataset.sessionsLoaded !== {loaded}"
        ))
        .await;
        let shown = page
            .eval("[...document.querySelectorAll('#sessions-table tbody tr')].map(tr => tr.dataset.session)")
            .await;
        let (status, body) = http(
            admin,
            "GET",
            &format!("/api/v1/reports/sessions?sort=duration&order={order}"),
            Some(&token),
        )
        .await;
        assert_eq!(status, 200, "{body}");
        let api: serde_json::Value = serde_json::from_str(&body).unwrap();
        let api_order: Vec<&serde_json::Value> = api["sessions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| &s["session_id"])
            .collect();
        assert_eq!(shown, json!(api_order), "sorted by duration, {order}");
        assert_eq!(
            page.eval("document.querySelector('th[data-sort=duration]').getAttribute('aria-sort')")
                .await,
            json!(if order == "asc" {
                "ascending"
            } else {
                "descending"
            })
        );
    }

    // Filter: full control only.
    let loaded = page.eval("document.body.dataset.sessionsLoaded").await;
    page.eval("document.querySelector('#filters [name=mode]').value = 'full_control'; document.querySelector('#filters button[type=submit]').click()")
        .await;
    page.wait_until(&format!(
        "document.body.dataset.sessionsLoaded !== {loaded}"
    ))
    .await;
    let full_control: Vec<&SessionRow> = contoso
        .iter()
        .filter(|r| r.modes.iter().any(|m| m == "full_control"))
        .collect();
    assert_eq!(full_control.len(), 2);
    assert_eq!(
        table_ids(&mut page).await,
        ids(full_control.iter().copied())
    );

    // CSV: the page's download is the API's export for the same filter, and its sessions
    // are the audit log's.
    page.eval("document.getElementById('csv').click()").await;
    page.wait_until("document.getElementById('csv-link').href.startsWith('blob:')")
        .await;
    let csv = page
        .eval("fetch(document.getElementById('csv-link').href).then(r => r.text())")
        .await;
    let csv = csv.as_str().unwrap();
    let (status, api_csv) = http(
        admin,
        "GET",
        "/api/v1/reports/sessions.csv?mode=full_control",
        Some(&token),
    )
    .await;
    assert_eq!(status, 200);
    assert_eq!(csv, api_csv);
    let records = common::csv::parse(csv);
    let csv_ids: BTreeSet<String> = common::csv::column(&records, "session_id")
        .into_iter()
        .collect();
    assert_eq!(csv_ids, ids(full_control.iter().copied()));
    assert!(
        common::csv::column(&records, "tenant")
            .iter()
            .all(|tenant| tenant == "contoso")
    );

    // Detail of the live session, with "End session"; ending it tells both parties.
    page.eval(&format!(
        "document.querySelector('#sessions-table button[data-session=\"{live}\"]').click()"
    ))
    .await;
    page.wait_until(&format!(
        "document.body.dataset.detail === '{live}' && !document.getElementById('panel-detail').hidden \
         && !document.getElementById('end').hidden"
    ))
    .await;
    page.screenshot(&out.join("detail-desktop.png")).await;
    page.eval("document.getElementById('end').click()").await;
    assert_eq!(within(helper.wait_for_end()).await, ErrorCode::AdminEnded);
    assert_eq!(within(sharer.wait_for_end()).await, ErrorCode::AdminEnded);
    page.wait_until("document.getElementById('end-status').textContent.includes('ended')")
        .await;
    let shown = page
        .eval("document.getElementById('detail').textContent")
        .await;
    let shown = shown.as_str().unwrap();
    assert!(
        shown.contains("ADMIN_ENDED") && shown.contains("tenant:contoso-admin"),
        "{shown}"
    );
    page.wait_until("document.getElementById('active-count').textContent === '0'")
        .await;
    let ended = audit_rows(&relay, "contoso")
        .into_iter()
        .find(|r| r.session_id == live)
        .unwrap();
    assert_eq!(ended.end_reason.as_deref(), Some("ADMIN_ENDED"));

    // A phone-sized screen: every tab fits 375 px without the page scrolling sideways.
    page.viewport(375, 812, true).await;
    for tab in ["monitor", "sessions", "detail"] {
        page.eval(&format!("document.getElementById('tab-{tab}').click()"))
            .await;
        page.wait_until(&format!("!document.getElementById('panel-{tab}').hidden"))
            .await;
        assert_eq!(
            page.eval("document.documentElement.scrollWidth <= 375")
                .await,
            json!(true),
            "the {tab} tab is wider than a phone"
        );
        page.screenshot(&out.join(format!("{tab}-phone.png"))).await;
    }
    assert_eq!(
        page.eval("window.cspViolations").await,
        json!([]),
        "the page breaks its own Content-Security-Policy"
    );
    drop(page);
    relay.stop().await;
}

#[tokio::test]
async fn a_reader_sees_no_end_button_and_a_helper_token_is_refused_with_a_sentence() {
    let test = "a_reader_sees_no_end_button_and_a_helper_token_is_refused_with_a_sentence";
    if !have_chromium(test) {
        return;
    }
    let relay = relay().await;
    let admin = relay.handle.admin_addr().unwrap();
    let out = artefacts();
    let (_helper, _sharer) = relay.paired("contoso", Mode::ViewOnly).await;
    let live = audit_rows(&relay, "contoso")[0].session_id.clone();

    let mut page = Browser::launch(&out.join("chromium-reader.log")).await;
    page.viewport(1280, 900, false).await;

    // A helper's token is for sessions, not for reports: the page says so in words.
    let helper_token = relay.tenant("contoso").token(Persona::Helper);
    sign_in(&mut page, admin, &helper_token).await;
    page.wait_until("!document.getElementById('error').hidden")
        .await;
    assert_eq!(
        page.eval("document.getElementById('error').textContent")
            .await,
        json!(
            "This token is not accepted for reports: it is not for the administration audience (a helper's token?)."
        )
    );
    assert_eq!(
        page.eval("document.getElementById('app').hidden").await,
        json!(true)
    );

    // A reader signs in, opens the live session: no "End session".
    let reader = admin_token(&relay, "contoso", &["report-readers"]);
    sign_in(&mut page, admin, &reader).await;
    page.wait_until("document.body.dataset.monitorLoaded === 'true'")
        .await;
    page.eval(&format!(
        "document.querySelector('#active-table button[data-session=\"{live}\"]').click()"
    ))
    .await;
    page.wait_until(&format!("document.body.dataset.detail === '{live}'"))
        .await;
    assert_eq!(
        page.eval("document.getElementById('end').hidden").await,
        json!(true)
    );
    // Keyboard: the tabs move with the arrow keys.
    page.eval("document.getElementById('tab-detail').focus()")
        .await;
    page.call(
        "Input.dispatchKeyEvent",
        json!({ "type": "keyDown", "key": "Home", "code": "Home", "windowsVirtualKeyCode": 36 }),
    )
    .await;
    page.wait_until("document.activeElement.id === 'tab-monitor' && !document.getElementById('panel-monitor').hidden")
        .await;
    drop(page);
    relay.stop().await;
}

#[tokio::test]
async fn in_a_cluster_whose_other_node_does_not_answer_the_page_says_which_node_is_missing() {
    let test = "in_a_cluster_whose_other_node_does_not_answer_the_page_says_which_node_is_missing";
    if !have_chromium(test) {
        return;
    }
    // Node 1's admin address refuses connections (a stopped node).
    let gone = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let gone_addr = gone.local_addr().unwrap();
    drop(gone);
    let relay = TestRelay::builder()
        .tenant(
            "contoso",
            TokenSigner::generate_ed25519("contoso-1").unwrap(),
        )
        .policy("contoso", |policy| {
            policy.assignments.push(Assignment {
                permissions: PermissionSet::granting([Permission::ReadReports]),
                role: "readers".into(),
                members: ["report-readers".to_string()].into(),
                scope: Scope::from_entries(["all_users"]),
            });
        })
        .config(move |c| {
            let mut cluster = remote_help_relay::config::ClusterConfig::new(
                remote_help_relay::core::cluster::NodeId::new(0).unwrap(),
                vec!["127.0.0.1:1".into(), "127.0.0.1:2".into()],
            );
            cluster.admin_nodes = vec!["http://127.0.0.1:3".into(), format!("http://{gone_addr}")];
            c.cluster = Some(cluster);
        })
        .start()
        .await;
    let admin = relay.handle.admin_addr().unwrap();
    let mut page = Browser::launch(&artefacts().join("chromium-partial.log")).await;
    page.viewport(1280, 900, false).await;
    sign_in(
        &mut page,
        admin,
        &admin_token(&relay, "contoso", &["report-readers"]),
    )
    .await;
    page.wait_until("document.body.dataset.monitorLoaded === 'true'")
        .await;
    page.wait_until("!document.getElementById('partial').hidden")
        .await;
    assert_eq!(
        page.eval("document.getElementById('partial').textContent")
            .await,
        json!(
            "Relay node 1 did not answer: what is shown lacks their sessions. Refresh to ask again."
        )
    );
    drop(page);
    relay.stop().await;
}

/// One GET; the status line and headers (lower-cased names) and the body.
async fn get_with_headers(addr: SocketAddr, path: &str) -> (String, String) {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: relay\r\nConnection: close\r\n\r\n");
    within(stream.write_all(request.as_bytes())).await.unwrap();
    let mut response = String::new();
    within(stream.read_to_string(&mut response)).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.to_ascii_lowercase(), body.to_string())
}

/// Runs without a browser: the files and their headers, and `me` for each kind of caller.
#[tokio::test]
async fn the_page_is_served_with_strict_headers_and_me_says_who_may_end_sessions() {
    let relay = relay().await;
    let admin = relay.handle.admin_addr().unwrap();
    for (path, content_type) in [
        ("/monitor/", "text/html"),
        ("/monitor/monitor.js", "text/javascript"),
        ("/monitor/monitor.css", "text/css"),
        ("/monitor/oidc.js", "text/javascript"),
    ] {
        let (head, body) = get_with_headers(admin, path).await;
        assert!(head.starts_with("http/1.1 200"), "{path}: {head}");
        for header in [
            format!("content-type: {content_type}"),
            "content-security-policy: default-src 'none'; script-src 'self';".into(),
            "x-content-type-options: nosniff".into(),
            "referrer-policy: no-referrer".into(),
            "x-frame-options: deny".into(),
            "cache-control: no-cache".into(),
        ] {
            assert!(head.contains(&header), "{path} lacks {header}: {head}");
        }
        assert!(!body.is_empty());
    }
    // No inline script: the only script is the module file.
    let (_, html) = get_with_headers(admin, "/monitor/").await;
    assert_eq!(html.matches("<script").count(), 1);
    assert!(html.contains(r#"<script type="module" src="monitor.js"></script>"#));
    // No tenant signs in at a provider here: no choices, and no origin besides the page's.
    let (head, choices) = get_with_headers(admin, "/monitor/sign-in.json").await;
    assert!(head.starts_with("http/1.1 200"), "{head}");
    assert_eq!(choices, "[]");
    let (head, _) = get_with_headers(admin, "/monitor/").await;
    assert!(head.contains("connect-src 'self' blob:; "), "{head}");
    let (head, _) = get_with_headers(admin, "/monitor").await;
    assert!(
        head.starts_with("http/1.1 308") && head.contains("location: /monitor/"),
        "{head}"
    );

    for (groups, may_end) in [(["report-readers"], false), (["report-admins"], true)] {
        let token = admin_token(&relay, "contoso", &groups);
        let (status, body) = http(admin, "GET", "/api/v1/reports/me", Some(&token)).await;
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&body).unwrap(),
            json!({ "operator": false, "tenant": "contoso", "subject": "contoso-admin", "may_end": may_end })
        );
    }
    let (status, body) = http(admin, "GET", "/api/v1/reports/me", Some(OPERATOR_TOKEN)).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        json!({ "operator": true, "tenant": null, "subject": null, "may_end": true })
    );
    let nobody = admin_token(&relay, "contoso", &["someone-else"]);
    let (status, body) = http(admin, "GET", "/api/v1/reports/me", Some(&nobody)).await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = http(
        admin,
        "GET",
        "/api/v1/reports/me?tenant=x",
        Some(&admin_token(&relay, "contoso", &["report-readers"])),
    )
    .await;
    assert_eq!(status, 400, "unknown parameters are refused: {body}");

    // A reload that gives contoso a browser sign-in: offered at once, and its issuer's
    // origin (only) joins the page's connect-src.
    let mut contoso = relay.tenant("contoso").config();
    contoso.trust.issuer = "https://Login.Contoso.example:8443/tenant/v2.0".into();
    contoso.web_sign_in = Some(remote_help_relay::config::WebSignIn {
        client_id: "monitor".into(),
        scopes: vec!["openid".into(), "api://reports/Reports.Read".into()],
        resource: None,
        helper_resource: None,
        display_name: None,
    });
    relay
        .handle
        .reload(&remote_help_relay::config::Config::with_defaults(
            relay.addr(),
            vec![contoso, relay.tenant("fabrikam").config()],
        ));
    let (_, choices) = get_with_headers(admin, "/monitor/sign-in.json").await;
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&choices).unwrap(),
        json!([{
            "tenant": "contoso", "display_name": "contoso",
            "issuer": "https://Login.Contoso.example:8443/tenant/v2.0", "client_id": "monitor",
            "scopes": ["openid", "api://reports/Reports.Read"], "resource": null,
            "audience": ADMIN_AUDIENCE
        }])
    );
    let (head, _) = get_with_headers(admin, "/monitor/monitor.js").await;
    assert!(
        head.contains("connect-src 'self' blob: https://login.contoso.example:8443; "),
        "{head}"
    );
    relay.stop().await;
}

/// The administration audience of the tenant that signs in at its provider: a URI, since the
/// page names it as the `resource` (RFC 8707) and the provider makes it the tokens' `aud`.
const SSO_ADMIN_AUDIENCE: &str = "urn:contoso-sso:remote-help-reports";

/// What the page says when the provider's answer carries another sign-in's `state`
/// (docs/reports.md, "Signing in with the tenant's provider").
const STATE_MISMATCH: &str = "The sign-in answer does not belong to a sign-in started in this tab (state mismatch); sign in again.";

#[tokio::test]
async fn a_tenant_administrator_signs_in_at_the_tenants_provider_with_pkce_and_sees_only_their_sessions()
 {
    use common::oidc::{OidcProvider, ProviderOptions};

    use remote_help_relay::claim_map::{ClaimMapping, Preset};
    use remote_help_relay::config::WebSignIn;
    use remote_help_relay::core::Role;
    use remote_help_relay::tenant_keys::ProviderKeys;

    let test = "a_tenant_administrator_signs_in_at_the_tenants_provider_with_pkce_and_sees_only_their_sessions";
    if !have_chromium(test) {
        return;
    }
    // Keycloak-shaped claims: realm roles are the groups role assignments name.
    let Some(provider) = OidcProvider::start(
        ProviderOptions::new(test)
            .client(
                "helper-app",
                json!({"realm_access": {"roles": ["remote-help", "helpdesk"]}, "name": "Ada Lovelace"}),
            )
            .client(
                "sharer-app",
                json!({
                    "realm_access": {"roles": ["remote-help"]}, "name": "Grace Hopper",
                    "device_id": "d-1", "device_name": "GRACE-LAPTOP", "platform": "windows",
                    "enrolled": true, "compliant": true
                }),
            )
            .account(
                "alice",
                json!({"realm_access": {"roles": ["report-readers"]}, "name": "Alice Admin"}),
            )
            .resource(SSO_ADMIN_AUDIENCE),
    )
    .await
    else {
        return;
    };
    let issuer = provider.issuer().to_string();
    let ca = provider.ca_pem_path();
    let relay = TestRelay::builder()
        .provider_tenant(
            "contoso-sso",
            // Signs nothing the tenant accepts: its keys come from the provider.
            TokenSigner::generate_es256("unused").unwrap(),
            &issuer,
            None,
            ClaimMapping::preset(Preset::Keycloak),
        )
        .tenant(
            "fabrikam-sso",
            TokenSigner::generate_ed25519("fabrikam-sso-1").unwrap(),
        )
        .policy("contoso-sso", roles)
        .policy("fabrikam-sso", roles)
        .config({
            let issuer = issuer.clone();
            move |c| {
                let source = ProviderKeys {
                    issuer,
                    jwks_uri: None,
                    ca_file: Some(ca),
                };
                let tenant = common::keys_from_provider(c, "contoso-sso", source);
                tenant.admin_audience = Some(SSO_ADMIN_AUDIENCE.into());
                tenant.web_sign_in = Some(WebSignIn {
                    client_id: "monitor".into(),
                    scopes: vec!["openid".into()],
                    resource: Some(SSO_ADMIN_AUDIENCE.into()),
                    helper_resource: None,
                    display_name: Some("Contoso (single sign-on)".into()),
                });
            }
        })
        .start()
        .await;
    let admin = relay.handle.admin_addr().unwrap();
    let out = artefacts();

    // Contoso's sessions, with the provider's own helper and sharer tokens: one ended, one
    // live; fabrikam's, ended and live, which contoso's administrator must never see.
    let mut live_parties = Vec::new();
    for live in [false, true] {
        let mut helper = relay
            .connect(provider.token("helper-app").await, Role::Helper)
            .await
            .unwrap();
        let mut sharer = relay
            .connect(provider.token("sharer-app").await, Role::Sharer)
            .await
            .unwrap();
        let created = within(helper.create_session(Mode::FullControl))
            .await
            .unwrap();
        common::join_and_consent(&mut helper, &mut sharer, &created.code).await;
        if live {
            live_parties.push((helper, sharer));
        } else {
            within(helper.end_session()).await.unwrap();
            assert_eq!(within(sharer.wait_for_end()).await, ErrorCode::PeerEnded);
        }
    }
    ended_session(&relay, "fabrikam-sso", Mode::FullControl).await;
    let (_fabrikam_helper, _fabrikam_sharer) = relay.paired("fabrikam-sso", Mode::ViewOnly).await;
    let contoso = audit_rows(&relay, "contoso-sso");
    let fabrikam = audit_rows(&relay, "fabrikam-sso");
    assert_eq!((contoso.len(), fabrikam.len()), (2, 2));

    // What the page is offered, without a token: the tenant's public sign-in, no more.
    let (status, body) = http(admin, "GET", "/monitor/sign-in.json", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap(),
        json!([{
            "tenant": "contoso-sso", "display_name": "Contoso (single sign-on)",
            "issuer": issuer, "client_id": "monitor", "scopes": ["openid"],
            "resource": SSO_ADMIN_AUDIENCE, "audience": SSO_ADMIN_AUDIENCE
        }])
    );
    // The page may reach exactly this issuer's origin besides its own.
    let (head, _) = get_with_headers(admin, "/monitor/").await;
    assert!(
        head.contains(&format!("connect-src 'self' blob: {issuer}; ")),
        "{head}"
    );

    // The page is the client's redirect URI; the browser trusts the provider's certificate
    // by its key's hash, and no other certificate.
    let page_url = format!("http://{admin}/monitor/");
    provider.add_public_client("monitor", &page_url).await;
    let mut page = Browser::launch_with(
        &out.join("chromium-sso.log"),
        &[format!(
            "--ignore-certificate-errors-spki-list={}",
            provider.leaf_spki_sha256()
        )],
    )
    .await;
    page.viewport(1280, 900, false).await;
    page.call("Page.enable", json!({})).await;
    page.call(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({ "source": "window.cspViolations = []; document.addEventListener('securitypolicyviolation', \
            e => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`))" }),
    )
    .await;
    page.navigate(&page_url).await;
    page.wait_until(
        "document.body.dataset.choices === '1' && !document.getElementById('provider-form').hidden",
    )
    .await;
    assert_eq!(
        page.eval("document.getElementById('tenant-choice').selectedOptions[0].textContent")
            .await,
        json!("Contoso (single sign-on)")
    );
    page.screenshot(&out.join("sign-in-choice.png")).await;

    let to_provider = "document.querySelector('#provider-form button[type=submit]').click()";
    // A provider whose discovery document names another issuer is not followed.
    provider.serve_wrong_issuer(true).await;
    page.eval(to_provider).await;
    page.wait_until("!document.getElementById('error').hidden")
        .await;
    assert_eq!(
        page.eval("[location.href, document.getElementById('error').textContent]")
            .await,
        json!([
            page_url,
            "The sign-in provider's discovery document names another issuer than the tenant's."
        ])
    );
    provider.serve_wrong_issuer(false).await;

    // Off to the provider; an answer carrying another sign-in's state is refused, in words,
    // and leaves no token and no answer in the address bar.
    let at_login =
        format!("location.origin === '{issuer}' && document.querySelector('input[name=login]')");
    page.eval(to_provider).await;
    page.wait_across_navigation(&at_login).await;
    page.navigate(&format!(
        "{page_url}?code=forged-code&state=tampered&iss={}",
        urlencode(&issuer)
    ))
    .await;
    page.wait_across_navigation(&format!(
        "location.origin === 'http://{admin}' && document.body.dataset.signInFailed && document.body.dataset.choices"
    ))
    .await;
    assert_eq!(
        page.eval(
            "[document.body.dataset.signInFailed, document.getElementById('error').textContent, \
                   location.search, sessionStorage.getItem('rhr-monitor-token'), \
                   document.getElementById('app').hidden]"
        )
        .await,
        json!(["state", STATE_MISMATCH, "", null, true])
    );

    // The administrator cancels at the provider: its error comes back, said in words.
    page.eval(to_provider).await;
    page.wait_across_navigation(&at_login).await;
    page.eval(
        "[...document.querySelectorAll('a')].find(a => a.textContent.includes('Cancel')).click()",
    )
    .await;
    page.wait_across_navigation(&format!(
        "location.origin === 'http://{admin}' && document.body.dataset.signInFailed && document.body.dataset.choices"
    ))
    .await;
    assert_eq!(
        page.eval(
            "[document.body.dataset.signInFailed, document.getElementById('error').textContent, \
                   location.search, sessionStorage.getItem('rhr-monitor-token')]"
        )
        .await,
        json!([
            "provider",
            "The sign-in provider refused: End-User aborted interaction (access_denied).",
            "",
            null
        ])
    );

    // A real sign-in: the provider's login and consent forms, then back to the page.
    page.eval(to_provider).await;
    page.wait_across_navigation(&at_login).await;
    page.screenshot(&out.join("provider-login.png")).await;
    page.log_in_at_test_provider("alice").await;
    page.wait_across_navigation(&format!(
        "location.origin === 'http://{admin}' && document.body.dataset.monitorLoaded === 'true' \
         && document.body.dataset.sessionsLoaded"
    ))
    .await;

    // Signed in as the provider's account, in the tenant the relay selected by the token.
    assert_eq!(
        page.eval("document.getElementById('who').textContent")
            .await,
        json!("Signed in as alice of tenant contoso-sso")
    );
    // The answer is gone from the address bar; the token is in this tab's session storage
    // (and nowhere else), for the administration audience.
    assert_eq!(
        page.eval("[location.href, localStorage.length, document.cookie]")
            .await,
        json!([page_url, 0, ""])
    );
    let token = page
        .eval("sessionStorage.getItem('rhr-monitor-token')")
        .await;
    let claims = jwt_claims(token.as_str().unwrap());
    assert_eq!(claims["aud"], SSO_ADMIN_AUDIENCE, "{claims}");
    assert_eq!(claims["iss"], issuer.as_str(), "{claims}");
    assert_eq!(claims["sub"], "alice", "{claims}");
    // Contoso's live session and history, nothing of fabrikam's.
    assert_eq!(
        page.eval("document.getElementById('active-count').textContent")
            .await,
        json!("1")
    );
    assert_eq!(table_ids(&mut page).await, ids(&contoso));
    let html = page
        .eval("document.documentElement.outerHTML")
        .await
        .as_str()
        .unwrap()
        .to_string();
    for row in &fabrikam {
        assert!(
            !html.contains(&row.session_id[..8]),
            "fabrikam's session {} shows in contoso's page",
            row.session_id
        );
    }
    page.screenshot(&out.join("signed-in-at-provider.png"))
        .await;
    assert_eq!(
        page.eval("window.cspViolations").await,
        json!([]),
        "the page breaks its own Content-Security-Policy"
    );
    drop((page, live_parties));
    relay.stop().await;
}

/// `text` as a URL query value.
fn urlencode(text: &str) -> String {
    url::form_urlencoded::byte_serialize(text.as_bytes()).collect()
}

/// The claims of a JWT (not verified: the relay did that).
fn jwt_claims(token: &str) -> serde_json::Value {
    use base64::Engine as _;
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}
