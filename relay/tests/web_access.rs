//! How browsers reach the relay. WebTransport (PROTOCOL.md §2a): a relay on its
//! self-signed development certificate serves WebTransport clients a short-lived ECDSA
//! P-256 certificate that a page trusts by its published SHA-256 hash, rotates it without a
//! restart, and keeps serving native clients the long-lived certificate they pin. The
//! `[web]` listener (docs/operations.md): the web surface over HTTPS, or plain HTTP on
//! loopback only. Real relays, real QUIC and TCP on 127.0.0.1, real tokens.

mod common;

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use common::webtransport::{self, PATH, WtClient, browser_would_accept, presented};
use common::{TestRelay, http, within};
use futures_util::StreamExt as _;
use remote_help_proto::framing::channel_tag;
use remote_help_proto::v1::{self, client_to_relay::Msg as Out, relay_to_client::Msg as In};
use remote_help_relay::config::{TlsSource, WebConfig, WebTls};
use remote_help_relay::core::{Channel, Role};
use remote_help_relay::dev::Persona;
use remote_help_relay::tls::browser::{self, BrowserCertificates, CertificateHash, Rotation};
use remote_help_relay::tls::{Fingerprint, RelayTrust};

const DAY: Duration = Duration::from_secs(24 * 3600);

fn hash_of(der: &rustls::pki_types::CertificateDer<'_>) -> CertificateHash {
    CertificateHash::of(Fingerprint::of(der))
}

/// The certificate a native client (ALPN `remote-help/1`) pinning the relay's long-lived
/// certificate is presented; the connection must succeed for the pin to hold.
async fn presented_to_a_native_client(relay: &TestRelay) -> Fingerprint {
    let crypto = RelayTrust::Pin(relay.handle.fingerprint())
        .quic_client_config()
        .unwrap();
    let endpoint = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let connection = within(
        endpoint
            .connect_with(
                quinn::ClientConfig::new(Arc::new(crypto)),
                relay.addr(),
                "localhost",
            )
            .unwrap(),
    )
    .await
    .expect("a native client pinning the long-lived certificate connects");
    let fingerprint = Fingerprint::of(&presented(&connection));
    connection.close(0u32.into(), b"done");
    fingerprint
}

/// A WebTransport helper opens a session and a native sharer joins it; returns the helper
/// once a screen frame from the sharer has reached it (and the sharer, to keep it open).
async fn hold_a_session(
    relay: &TestRelay,
    mut helper: WtClient,
) -> (WtClient, remote_help_relay::client::Client) {
    helper
        .send(Out::CreateSession(v1::CreateSession {
            mode: v1::Mode::ViewOnly as i32,
            reason: String::new(),
        }))
        .await;
    let created = match helper.recv().await.unwrap() {
        In::SessionCreated(c) => c,
        other => panic!("expected SessionCreated, got {other:?}"),
    };
    let mut sharer = relay.sharer("contoso").await;
    within(sharer.join(&created.code)).await.unwrap();
    match helper.recv().await.unwrap() {
        In::PeerJoined(_) => {}
        other => panic!("expected PeerJoined, got {other:?}"),
    }
    within(sharer.accept()).await.unwrap();
    match helper.recv().await.unwrap() {
        In::SessionStarted(_) => {}
        other => panic!("expected SessionStarted, got {other:?}"),
    }
    let mut screen = within(sharer.open_unsealed_channel(Channel::Screen))
        .await
        .unwrap();
    within(screen.send(Bytes::from_static(b"a screen frame")))
        .await
        .unwrap();
    let (tag, mut screen_in) = helper.accept_channel().await;
    assert_eq!(tag, channel_tag(v1::Channel::Screen));
    let frame = within(screen_in.next()).await.unwrap().unwrap();
    assert_eq!(&frame[..], b"a screen frame");
    (helper, sharer)
}

#[tokio::test]
async fn a_webtransport_client_trusting_only_the_published_hash_holds_a_session_and_native_clients_keep_the_pinned_certificate()
 {
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let hashes = relay.handle.browser_certificate_hashes();
    assert_eq!(
        hashes.len(),
        1,
        "one browser certificate at first: {hashes:?}"
    );
    assert_eq!(hashes[0].algorithm, "sha-256");
    assert_ne!(hashes[0], CertificateHash::of(relay.handle.fingerprint()));

    // The browser's side: it trusts exactly the published hash (WtClient uses it).
    let token = relay.tenant("contoso").token(Persona::Helper);
    let helper = WtClient::connect(&relay, token, Role::Helper)
        .await
        .expect("a client trusting the published hash is welcomed");
    let served = presented(&helper.session);
    assert_eq!(hash_of(&served), hashes[0]);
    browser_would_accept(&served).expect("a browser accepts the served certificate");
    let (helper, sharer) = hold_a_session(&relay, helper).await;

    // On the same port, native clients are still presented the certificate they pin.
    assert_eq!(
        presented_to_a_native_client(&relay).await,
        relay.handle.fingerprint()
    );
    // A page given the long-lived certificate's hash instead is refused: a WebTransport
    // client is never presented that one.
    let refused = within(webtransport::session(
        relay.addr(),
        &[CertificateHash::of(relay.handle.fingerprint())],
        PATH,
    ))
    .await;
    assert!(
        refused.is_err(),
        "the long-lived certificate's hash let a WebTransport client in"
    );

    drop(helper);
    sharer.close().await;
    relay.wait_until_empty().await;
    relay.stop().await;
}

#[tokio::test]
async fn the_browser_certificate_is_p256_valid_under_two_weeks_and_kept_owner_only() {
    let relay = TestRelay::start().await;
    let session = within(webtransport::session(
        relay.addr(),
        &relay.handle.browser_certificate_hashes(),
        PATH,
    ))
    .await
    .unwrap();
    let served = presented(&session);
    // ECDSA on P-256; valid now; the period at most two weeks.
    browser_would_accept(&served).unwrap();
    let validity = browser::validity_of(&served).unwrap();
    let period = validity
        .not_after
        .duration_since(validity.not_before)
        .unwrap();
    assert!(period <= 14 * DAY, "valid for {period:?}");
    // Backdated for clients whose clocks are behind.
    assert!(validity.not_before < SystemTime::now() - Duration::from_secs(60));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt as _;
        let file = relay_state(&relay).join(browser::CURRENT_FILE);
        let mode = std::fs::metadata(&file).unwrap().permissions().mode();
        assert_eq!(mode & 0o077, 0, "{} is readable by others", file.display());
    }
    session.close(0, b"done");
    relay.stop().await;
}

/// The state folder of a [`TestRelay`] (its audit folder's sibling).
fn relay_state(relay: &TestRelay) -> std::path::PathBuf {
    relay.audit_dir().parent().unwrap().join("state")
}

#[tokio::test]
async fn near_its_end_the_next_certificate_is_published_beside_it_then_served_without_a_restart() {
    // A state folder whose browser certificate was made ten and a half days ago: two and a
    // half days left, under the three at which the next one is made.
    let state = tempfile::tempdir().unwrap();
    let now = SystemTime::now();
    let made_then = now - DAY * 21 / 2;
    let old = BrowserCertificates::open(state.path(), made_then)
        .unwrap()
        .served();
    let state_dir = state.path().to_path_buf();
    let relay = TestRelay::builder()
        .plaintext_clients()
        .config(move |c| c.state_dir = state_dir)
        .start()
        .await;

    // At start the relay made the next one and publishes both, the served one first.
    let hashes = relay.handle.browser_certificate_hashes();
    assert_eq!(hashes.len(), 2, "{hashes:?}");
    assert_eq!(hashes[0], hash_of(&old.der));
    let token = relay.tenant("contoso").token(Persona::Helper);
    let before = WtClient::connect(&relay, token.clone(), Role::Helper)
        .await
        .unwrap();
    assert_eq!(hash_of(&presented(&before.session)), hashes[0]);

    // A day and a half later (the rotation task's clock, given): under a day left, so the
    // next one is served; no restart.
    let certificates = relay.handle.browser_certificates().unwrap().clone();
    let later = now + DAY * 3 / 2;
    assert_eq!(certificates.refresh(later).unwrap(), [Rotation::Promote]);
    assert_eq!(
        relay.handle.browser_certificate_hashes(),
        [hashes[1].clone()]
    );
    // A page holding the two hashes it fetched before connects, to the new certificate.
    let session = within(webtransport::session(relay.addr(), &hashes, PATH))
        .await
        .expect("a page with the hashes fetched before the rotation connects");
    let served = presented(&session);
    assert_eq!(hash_of(&served), hashes[1]);
    browser_would_accept(&served).unwrap();
    // And so does a client of the running relay, end to end.
    let after = WtClient::connect(&relay, token, Role::Helper)
        .await
        .unwrap();
    assert_eq!(hash_of(&presented(&after.session)), hashes[1]);
    hold_a_session(&relay, after).await;
    // The session made before the rotation is untouched.
    assert!(before.session.close_reason().is_none());
    // Native clients never saw a change.
    assert_eq!(
        presented_to_a_native_client(&relay).await,
        relay.handle.fingerprint()
    );
    session.close(0, b"done");
    drop(before);
    relay.stop().await;
}

#[tokio::test]
async fn with_a_configured_certificate_there_are_no_hashes_and_webtransport_clients_get_that_certificate()
 {
    let pki = tempfile::tempdir().unwrap();
    let (ca, _) = common::oidc::write_test_pki(pki.path());
    let (cert, key) = (pki.path().join("cert.pem"), pki.path().join("key.pem"));
    let relay = TestRelay::builder()
        .config(move |c| c.tls = TlsSource::Files { cert, key })
        .start()
        .await;
    assert!(relay.handle.browser_certificate_hashes().is_empty());
    assert!(relay.handle.browser_certificates().is_none());
    let tls = RelayTrust::CaCerts(vec![ca.into()])
        .rustls_client_config()
        .unwrap();
    let session = within(webtransport::session_with_tls(
        relay.addr(),
        tls,
        PATH,
        None,
    ))
    .await
    .expect("a client trusting the CA reaches the relay over WebTransport");
    assert_eq!(
        Fingerprint::of(&presented(&session)),
        relay.handle.fingerprint()
    );
    session.close(0, b"done");
    relay.stop().await;
}

const ADMIN_TOKEN: &str = "a-web-listener-test-admin-token";

#[tokio::test]
async fn the_web_listener_serves_the_monitor_page_and_reports_api_over_https_but_not_metrics() {
    let pki = tempfile::tempdir().unwrap();
    let (ca, _) = common::oidc::write_test_pki(pki.path());
    let tls = WebTls {
        cert: pki.path().join("cert.pem"),
        key: pki.path().join("key.pem"),
    };
    let relay = TestRelay::builder()
        .config(move |c| {
            c.admin.token = Some(ADMIN_TOKEN.into());
            c.web = Some(WebConfig {
                listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                tls: Some(tls),
            });
        })
        .start()
        .await;
    let web = relay.handle.web_addr().expect("the web listener runs");
    let client = common::oidc::https_client(ca);
    let base = format!("https://127.0.0.1:{}", web.port());

    let page = within(client.get(format!("{base}/monitor/")).send())
        .await
        .unwrap();
    assert_eq!(page.status(), 200);
    assert!(
        page.headers()
            .get("content-security-policy")
            .is_some_and(|v| v.to_str().unwrap().contains("default-src 'none'"))
    );
    assert!(within(page.text()).await.unwrap().contains("<html"));

    let me = within(
        client
            .get(format!("{base}/api/v1/reports/me"))
            .bearer_auth(ADMIN_TOKEN)
            .send(),
    )
    .await
    .unwrap();
    assert_eq!(me.status(), 200);
    let me: serde_json::Value = serde_json::from_str(&within(me.text()).await.unwrap()).unwrap();
    assert_eq!(me["operator"], true);
    let refused = within(client.get(format!("{base}/api/v1/reports/me")).send())
        .await
        .unwrap();
    assert_eq!(refused.status(), 401);

    // The admin and metrics endpoints stay on the admin listener.
    for path in ["/metrics", "/healthz", "/admin/sessions"] {
        let response = within(
            client
                .get(format!("{base}{path}"))
                .bearer_auth(ADMIN_TOKEN)
                .send(),
        )
        .await
        .unwrap();
        assert_eq!(
            response.status(),
            404,
            "{path} is served on the web listener"
        );
    }
    // The admin listener serves the same web surface through the same routes.
    let admin = relay.handle.admin_addr().unwrap();
    assert_eq!(http(admin, "GET", "/monitor/", None).await.0, 200);
    assert_eq!(
        http(admin, "GET", "/api/v1/reports/me", Some(ADMIN_TOKEN))
            .await
            .0,
        200
    );
    // Plain HTTP to the HTTPS port gets no page, and is counted as a failed handshake.
    let handshake_failures = |metrics: &std::collections::HashMap<String, f64>| {
        metrics
            .get("relay_web_tls_failures_total{reason=\"handshake\"}")
            .copied()
            .unwrap_or(0.0)
    };
    let before = handshake_failures(&common::metrics(admin).await);
    let mut plain = within(tokio::net::TcpStream::connect(web)).await.unwrap();
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    within(plain.write_all(b"GET /monitor/ HTTP/1.1\r\nHost: relay\r\n\r\n"))
        .await
        .unwrap();
    let mut answer = Vec::new();
    let _ = within(plain.read_to_end(&mut answer)).await;
    assert!(!String::from_utf8_lossy(&answer).contains("200 OK"));
    within(async {
        while handshake_failures(&common::metrics(admin).await) <= before {
            tokio::task::yield_now().await;
        }
    })
    .await;
    relay.stop().await;
}

#[tokio::test]
async fn a_plain_http_web_listener_serves_on_loopback() {
    let relay = TestRelay::builder()
        .config(|c| {
            c.web = Some(WebConfig {
                listen: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                tls: None,
            })
        })
        .start()
        .await;
    let web = relay.handle.web_addr().unwrap();
    assert_eq!(http(web, "GET", "/monitor/", None).await.0, 200);
    assert_eq!(http(web, "GET", "/metrics", None).await.0, 404);
    relay.stop().await;
}

/// `relay check-config` on a config of one tenant followed by `text`.
fn check_config(text: &str) -> std::process::Output {
    use remote_help_relay::issuer::{TokenSigner, jwks_of};
    let dir = tempfile::tempdir().unwrap();
    let signer = TokenSigner::generate_ed25519("initech-1").unwrap();
    std::fs::write(
        dir.path().join("initech.jwks.json"),
        serde_json::to_string(&jwks_of(&[&signer]).unwrap()).unwrap(),
    )
    .unwrap();
    let path = dir.path().join("relay.toml");
    let tenant = "[[tenants]]\nid = \"initech\"\nissuer = \"https://login.initech.example/\"\njwks_file = \"initech.jwks.json\"\n";
    std::fs::write(&path, format!("{tenant}{text}")).unwrap();
    std::process::Command::new(env!("CARGO_BIN_EXE_relay"))
        .arg("check-config")
        .arg(&path)
        .output()
        .unwrap()
}

#[test]
fn check_config_refuses_plain_http_on_a_non_loopback_address() {
    let out = check_config("[web]\nlisten = \"0.0.0.0:8080\"\n");
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("web.listen")
            && stderr.contains("plain HTTP is allowed only on a loopback address"),
        "{stderr}"
    );
    // On loopback the same listener passes.
    let out = check_config("[web]\nlisten = \"127.0.0.1:8080\"\n");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // HTTPS files both or neither, and they must parse.
    let out = check_config("[web]\nlisten = \"0.0.0.0:8443\"\ntls_cert = \"relay.toml\"\n");
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("web.tls_key"));
    let out = check_config(
        "[web]\nlisten = \"0.0.0.0:8443\"\ntls_cert = \"relay.toml\"\ntls_key = \"relay.toml\"\n",
    );
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("web.tls_cert: "), "{stderr}");
}

/// What a page in headless Chromium gets from `new WebTransport(relay, {
/// serverCertificateHashes: hashes })` after sending `hello` (one framed `ClientToRelay`) on
/// its first bidirectional stream: `Ok(bytes read back)` once a whole frame came, or
/// `Err(the browser's error)` if the session never became ready.
async fn from_chromium(
    page: &mut common::browser::Browser,
    relay: SocketAddr,
    hashes: &[CertificateHash],
    hello: &[u8],
) -> Result<Vec<u8>, String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::STANDARD;
    let script = format!(
        r#"(async () => {{
  const bytes = (s) => Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
  const serverCertificateHashes = {hashes}.map((h) => ({{ algorithm: h.algorithm, value: bytes(h.value) }}));
  let transport;
  try {{
    transport = new WebTransport("https://{relay}/remote-help/1", {{ serverCertificateHashes }});
    await transport.ready;
  }} catch (e) {{
    return {{ ok: false, error: String(e) }};
  }}
  const stream = await transport.createBidirectionalStream();
  const writer = stream.writable.getWriter();
  await writer.write(bytes("{hello}"));
  const reader = stream.readable.getReader();
  let got = new Uint8Array(0);
  const whole = () => got.length >= 4 && got.length >= 4 + new DataView(got.buffer).getUint32(0);
  while (!whole()) {{
    const {{ value, done }} = await reader.read();
    if (done) break;
    const joined = new Uint8Array(got.length + value.length);
    joined.set(got);
    joined.set(value, got.length);
    got = joined;
  }}
  transport.close({{ closeCode: 0, reason: "done" }});
  return {{ ok: true, reply: btoa(String.fromCharCode(...got)) }};
}})()"#,
        hashes = serde_json::to_string(hashes).unwrap(),
        hello = b64.encode(hello),
    );
    let answer = page.eval(&script).await;
    if answer["ok"] == true {
        Ok(b64.decode(answer["reply"].as_str().unwrap()).unwrap())
    } else {
        Err(answer["error"].to_string())
    }
}

#[tokio::test]
async fn chromium_accepts_the_browser_certificate_by_its_published_hash_and_refuses_the_long_lived_one()
 {
    use bytes::BytesMut;
    use remote_help_proto::framing::ControlCodec;
    use tokio_util::codec::{Decoder as _, Encoder as _};
    if !common::skip::require_tools(
        "chromium_accepts_the_browser_certificate_by_its_published_hash_and_refuses_the_long_lived_one",
        &[("chromium", "chromium")],
    ) {
        return;
    }
    let relay = TestRelay::builder().plaintext_clients().start().await;
    let mut codec = ControlCodec::<v1::RelayToClient, v1::ClientToRelay>::new(
        remote_help_proto::framing::DEFAULT_MAX_CONTROL_MESSAGE,
    );
    let mut hello = BytesMut::new();
    codec
        .encode(
            v1::ClientToRelay {
                msg: Some(Out::Hello(v1::Hello {
                    protocol_version: remote_help_proto::PROTOCOL_VERSION,
                    token: relay.tenant("contoso").token(Persona::Helper),
                    role: v1::Role::Helper as i32,
                    client_name: "headless chromium".into(),
                    e2e_suites: Vec::new(),
                    ..Default::default()
                })),
            },
            &mut hello,
        )
        .unwrap();

    let log = tempfile::NamedTempFile::new().unwrap();
    let mut page = common::browser::Browser::launch(log.path()).await;
    // A page of the relay's own origin on loopback (a secure context; `/healthz` carries no
    // Content-Security-Policy that would stop a connection to another port).
    let admin = relay.handle.admin_addr().unwrap();
    page.navigate(&format!("http://{admin}/healthz")).await;
    page.wait_until("document.readyState === 'complete' && window.isSecureContext")
        .await;

    // The long-lived certificate's hash: Chromium refuses (valid for years, not two weeks),
    // and the relay presents the browser certificate anyway.
    let refused = from_chromium(
        &mut page,
        relay.addr(),
        &[CertificateHash::of(relay.handle.fingerprint())],
        &hello,
    )
    .await;
    assert!(
        refused.is_err(),
        "Chromium accepted the long-lived certificate's hash"
    );

    // The published hash: the session is ready and the relay answers Hello with Welcome.
    let reply = from_chromium(
        &mut page,
        relay.addr(),
        &relay.handle.browser_certificate_hashes(),
        &hello,
    )
    .await
    .unwrap_or_else(|e| {
        panic!(
            "Chromium refused the published hash: {e}\n{}",
            std::fs::read_to_string(log.path()).unwrap_or_default()
        )
    });
    let mut reply = BytesMut::from(&reply[..]);
    match codec.decode(&mut reply).unwrap() {
        Some(v1::RelayToClient {
            msg: Some(In::Welcome(welcome)),
        }) => assert!(welcome.you.is_some()),
        other => panic!("expected Welcome, got {other:?}"),
    }
    drop(page);
    relay.wait_until_empty().await;
    relay.stop().await;
}
