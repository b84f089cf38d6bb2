//! The web helper page (`/helper/`, docs/web-helper.md) in a real headless Chromium against
//! a real relay: the page reaches the relay over WebTransport with the relay's short-lived
//! ECDSA certificate accepted by hash (`serverCertificateHashes`), and a sharer on the Rust
//! SDK joins with the code the page shows. The page's end-to-end protection (suite 2,
//! WebCrypto) and content profile v1 meet the SDK's: the test reads the test card's frame
//! counter back from the page's canvas, and checks the exact input events and chat the
//! sharer receives. A screenshot of the session is kept in `target/test-artefacts/helper/`.

mod common;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use base64::Engine as _;
use common::browser::{Browser, artefacts, have_chromium};
use common::{TestRelay, http, within};
use remote_help_proto::ErrorCode;
use remote_help_relay::client::content::{
    ChatMessage, Content, ContentError, ContentReceiver, ContentSender, ImageFormat, InputEvent,
    Modifiers, ScreenFrame,
};
use remote_help_relay::client::secure;
use remote_help_relay::client::test_card::TestCard;
use remote_help_relay::client::{Client, ClientOptions};
use remote_help_relay::config::TlsSource;
use remote_help_relay::core::{Channel, Role};
use remote_help_relay::dev::Persona;
use remote_help_relay::issuer::TokenSigner;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// The test card's size: small, so the page shows it at its own size (one CSS pixel per
/// screen pixel), which makes the expected normalised coordinates exact.
const CARD: (u32, u32) = (320, 180);

/// A self-signed ECDSA P-256 certificate for 127.0.0.1, valid for 10 days: one a browser
/// accepts by its hash (WebTransport `serverCertificateHashes`). Returns (cert, key) files.
fn browser_certificate(dir: &Path) -> (PathBuf, PathBuf) {
    let key = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let mut params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()]).unwrap();
    params.not_before = time::OffsetDateTime::now_utc() - time::Duration::hours(1);
    params.not_after = params.not_before + time::Duration::days(10);
    let cert = params.self_signed(&key).unwrap();
    let (cert_file, key_file) = (dir.join("browser-cert.pem"), dir.join("browser-key.pem"));
    std::fs::write(&cert_file, cert.pem()).unwrap();
    std::fs::write(&key_file, key.serialize_pem()).unwrap();
    (cert_file, key_file)
}

/// Contoso and Fabrikam, the relay presenting a browser certificate.
async fn relay(dir: &Path) -> TestRelay {
    let (cert, key) = browser_certificate(dir);
    TestRelay::builder()
        .tenant(
            "contoso",
            TokenSigner::generate_ed25519("contoso-1").unwrap(),
        )
        .tenant(
            "fabrikam",
            TokenSigner::generate_ed25519("fabrikam-1").unwrap(),
        )
        .config(move |c| c.tls = TlsSource::Files { cert, key })
        .start()
        .await
}

/// Contoso and Fabrikam on a relay as development runs it (no certificate configured): its
/// long-lived self-signed certificate for native clients, which pin it, and its rotating
/// browser certificate for WebTransport clients, published in `config.json`.
async fn development_relay() -> TestRelay {
    TestRelay::builder()
        .tenant(
            "contoso",
            TokenSigner::generate_ed25519("contoso-1").unwrap(),
        )
        .tenant(
            "fabrikam",
            TokenSigner::generate_ed25519("fabrikam-1").unwrap(),
        )
        .start()
        .await
}

/// A page with every Content-Security-Policy violation collected in `window.cspViolations`.
async fn browser(log: &Path) -> Browser {
    let mut page = Browser::launch(log).await;
    page.viewport(1280, 1000, false).await;
    page.call("Page.enable", json!({})).await;
    page.call(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({ "source": "window.cspViolations = []; document.addEventListener('securitypolicyviolation', \
            e => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`))" }),
    )
    .await;
    page
}

/// Opens the page and signs in with `token`, typed into the form.
async fn sign_in(page: &mut Browser, admin: SocketAddr, token: &str) {
    page.navigate(&format!("http://{admin}/helper/")).await;
    page.wait_until("document.readyState === 'complete' && document.getElementById('token')")
        .await;
    page.eval("document.getElementById('token').focus()").await;
    page.type_text(token).await;
    page.eval("document.querySelector('#token-form button[type=submit]').click()")
        .await;
}

/// Waits for `condition` in the page; on failure, says what the page shows.
async fn wait(page: &mut Browser, condition: &str) {
    if !page.wait_for(condition).await {
        let state = page
            .eval(
                "JSON.stringify({state: document.body.dataset, error: document.getElementById('error').textContent, \
                 status: document.getElementById('status').textContent})",
            )
            .await;
        panic!("the page did not come to `{condition}`; it shows {state}");
    }
}

/// The text of element `id`.
async fn text(page: &mut Browser, id: &str) -> String {
    page.eval(&format!("document.getElementById('{id}').textContent"))
        .await
        .as_str()
        .unwrap()
        .to_string()
}

/// What the sharer saw.
#[derive(Debug)]
enum Seen {
    Verification(String),
    Input(InputEvent),
    Chat(String),
    Raised(Option<remote_help_relay::core::Mode>),
    Ended(ErrorCode),
}

/// A sharer on the SDK: joins `code`, consents, streams the test card (one frame every
/// 50 ms, counting up, as `rhelp share --test-pattern` does), says hello on chat, and
/// reports what arrives until the session ends. On a word on `raise`, it accepts the
/// helper's next request to raise the mode.
async fn share(
    options: ClientOptions,
    code: String,
    seen: mpsc::UnboundedSender<Seen>,
    mut raise: mpsc::UnboundedReceiver<()>,
) {
    let mut client = Client::connect(options).await.unwrap();
    client.join(&code).await.unwrap();
    let started = client.accept().await.unwrap();
    let mut session = secure::channels(&client, &started, Role::Sharer)
        .await
        .unwrap();
    let _ = seen.send(Seen::Verification(
        session.verification_code().unwrap().to_string(),
    ));
    let card = TestCard::new(CARD.0, CARD.1).unwrap();
    let mut screen = ContentSender::open(&session, Channel::Screen, "helper-page-test")
        .await
        .unwrap();
    let mut chat_out = ContentSender::open(&session, Channel::Chat, "helper-page-test")
        .await
        .unwrap();
    chat_out
        .send(&Content::Chat(ChatMessage {
            text: "hello from the sharer".into(),
            sent_at_ms: 0,
        }))
        .await
        .unwrap();
    let first = Instant::now();
    let mut ticker = tokio::time::interval(Duration::from_millis(50));
    let mut frame_number = 0u64;
    let (mut input, mut chat): (Option<ContentReceiver>, Option<ContentReceiver>) = (None, None);
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let frame = ScreenFrame {
                    frame_number,
                    timestamp_us: first.elapsed().as_micros() as u64,
                    width: card.width(),
                    height: card.height(),
                    format: ImageFormat::Png,
                    data: card.png(frame_number).unwrap().into(),
                };
                if screen.send(&Content::Screen(frame)).await.is_err() {
                    break;
                }
                frame_number += 1;
            }
            accepted = session.accept_channel() => match accepted {
                Ok((channel @ Channel::Input, r)) => input = Some(ContentReceiver::new(channel, r)),
                Ok((channel @ Channel::Chat, r)) => chat = Some(ContentReceiver::new(channel, r)),
                Ok(_) => {}
                Err(_) => break,
            },
            event = next(&mut input) => match event {
                Ok(Some(Content::Input(e))) => { let _ = seen.send(Seen::Input(e)); }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => input = None,
            },
            message = next(&mut chat) => match message {
                Ok(Some(Content::Chat(m))) => { let _ = seen.send(Seen::Chat(m.text)); }
                Ok(Some(_)) => {}
                Ok(None) | Err(_) => chat = None,
            },
            Some(()) = raise.recv() => {
                // A ModeChanged of an earlier lowering may come first.
                let request = loop {
                    match client.wait_for_consent_request().await {
                        Ok(request) => break request,
                        Err(remote_help_relay::client::ClientError::Unexpected(m))
                            if m.starts_with("ModeChanged") => continue,
                        Err(e) => panic!("waiting for the raise: {e}"),
                    }
                };
                assert!(request.mode_change);
                let raised = client.answer_mode_change(true).await.unwrap();
                let _ = seen.send(Seen::Raised(raised));
            }
            reason = client.wait_for_end() => {
                let _ = seen.send(Seen::Ended(reason));
                client.close().await;
                return;
            }
        }
    }
    let reason = client.wait_for_end().await;
    let _ = seen.send(Seen::Ended(reason));
    client.close().await;
}

async fn next(receiver: &mut Option<ContentReceiver>) -> Result<Option<Content>, ContentError> {
    match receiver {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// The next thing the sharer saw that is not a chat message or input (those are checked
/// where expected).
async fn next_seen(seen: &mut mpsc::UnboundedReceiver<Seen>) -> Seen {
    within(seen.recv()).await.expect("the sharer reports")
}

/// The page's canvas as RGB, and the frame number the page says it drew last.
async fn canvas(page: &mut Browser) -> (Vec<u8>, u64) {
    let value = page
        .eval(
            "(() => { const c = document.getElementById('screen'); \
             const rgba = c.getContext('2d').getImageData(0, 0, c.width, c.height).data; \
             const rgb = new Uint8Array(c.width * c.height * 3); \
             for (let i = 0, j = 0; i < rgba.length; i += 4) { rgb[j++] = rgba[i]; rgb[j++] = rgba[i + 1]; rgb[j++] = rgba[i + 2]; } \
             let s = ''; for (let i = 0; i < rgb.length; i += 0x8000) s += String.fromCharCode(...rgb.subarray(i, i + 0x8000)); \
             return { rgb: btoa(s), frame: Number(document.body.dataset.frameNumber), w: c.width, h: c.height }; })()",
        )
        .await;
    assert_eq!(
        (value["w"].as_u64(), value["h"].as_u64()),
        (Some(CARD.0.into()), Some(CARD.1.into()))
    );
    let rgb = base64::engine::general_purpose::STANDARD
        .decode(value["rgb"].as_str().unwrap())
        .unwrap();
    (rgb, value["frame"].as_u64().unwrap())
}

#[tokio::test]
async fn a_browser_helper_sees_the_sharers_screen_drives_it_chats_and_ends_the_session() {
    let test = "a_browser_helper_sees_the_sharers_screen_drives_it_chats_and_ends_the_session";
    if !have_chromium(test) {
        return;
    }
    let relay = development_relay().await;
    let admin = relay.handle.admin_addr().unwrap();
    let out = artefacts("helper");

    // The page learns where the relay is and which certificate to accept.
    let (status, body) = http(admin, "GET", "/helper/config.json", None).await;
    assert_eq!(status, 200, "{body}");
    let config: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(
        config["webtransport_url"],
        json!(format!(
            "https://relay:{}/remote-help/1",
            relay.addr().port()
        ))
    );
    // The development relay's browser certificate, not the long-lived one native clients
    // pin (which a browser refuses).
    let published = relay.handle.browser_certificate_hashes();
    assert!(!published.is_empty());
    assert_eq!(
        config["server_certificate_hashes"],
        serde_json::to_value(&published).unwrap()
    );
    let long_lived = base64::engine::general_purpose::STANDARD.encode(relay.handle.fingerprint().0);
    assert!(published.iter().all(|h| h.value != long_lived));

    let mut page = browser(&out.join("chromium-session.log")).await;
    sign_in(
        &mut page,
        admin,
        &relay.tenant("contoso").token(Persona::Helper),
    )
    .await;
    wait(&mut page, "document.body.dataset.state === 'idle'").await;
    assert_eq!(
        text(&mut page, "who").await,
        "Signed in as Ada Lovelace (IT Support, Dev Org, verified dev.example) of contoso"
    );

    // Full control is the default; the page shows the code to read out.
    page.eval("document.querySelector('#create-form button[type=submit]').click()")
        .await;
    wait(&mut page, "document.body.dataset.state === 'waiting'").await;
    let code = text(&mut page, "code").await;
    assert_eq!(code.len(), 11, "{code}");

    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let options = relay.options(relay.tenant("contoso").token(Persona::Sharer), Role::Sharer);
    let (raise, raise_rx) = mpsc::unbounded_channel();
    let sharer = tokio::spawn(share(options, code, seen_tx, raise_rx));

    // Consent given: both sides show the same verification code.
    wait(&mut page, "document.body.dataset.state === 'active'").await;
    let Seen::Verification(sharers_code) = next_seen(&mut seen).await else {
        panic!("the sharer's first report is its verification code");
    };
    wait(
        &mut page,
        "document.getElementById('verification').textContent !== ''",
    )
    .await;
    assert_eq!(text(&mut page, "verification").await, sharers_code);
    assert!(
        sharers_code.len() == 7 && sharers_code.as_bytes()[3] == b' ',
        "{sharers_code}"
    );

    // The canvas shows the test card, and its counter advances.
    wait(&mut page, "Number(document.body.dataset.frames) >= 1").await;
    let card = TestCard::new(CARD.0, CARD.1).unwrap();
    let (rgb, drawn) = canvas(&mut page).await;
    let first = card.read_counter(&rgb).expect("a counter on the canvas");
    assert_eq!(
        first,
        drawn % 1_000_000,
        "the canvas shows the frame the page drew"
    );
    wait(
        &mut page,
        &format!("Number(document.body.dataset.frameNumber) > {drawn}"),
    )
    .await;
    let (rgb, drawn) = canvas(&mut page).await;
    let later = card.read_counter(&rgb).expect("a counter on the canvas");
    assert_eq!(later, drawn % 1_000_000);
    assert!(later > first, "the counter advances: {first} then {later}");

    // The sharer's chat shows; the page's reaches the sharer.
    wait(
        &mut page,
        "document.getElementById('chat-log').textContent.includes('hello from the sharer')",
    )
    .await;
    wait(&mut page, "document.body.dataset.chat === 'ready'").await;
    page.eval("document.getElementById('chat-text').focus()")
        .await;
    page.type_text("grüezi from the browser").await;
    page.eval("document.querySelector('#chat-form button[type=submit]').click()")
        .await;

    // Input: a move, a click and a key on the canvas, a quarter of the way in each way.
    wait(&mut page, "document.body.dataset.input === 'ready'").await;
    let rect = page
        .eval(
            "(() => { const r = document.getElementById('screen').getBoundingClientRect(); \
               return [r.left, r.top, r.width, r.height]; })()",
        )
        .await;
    let rect: Vec<f64> = serde_json::from_value(rect).unwrap();
    assert_eq!(
        (rect[2], rect[3]),
        (f64::from(CARD.0), f64::from(CARD.1)),
        "drawn at its own size"
    );
    let (x, y) = (rect[0] + 80.0, rect[1] + 45.0);
    let (nx, ny) = ((x - rect[0]) / rect[2], (y - rect[1]) / rect[3]);
    page.mouse("mouseMoved", x, y, "none").await;
    page.mouse("mousePressed", x, y, "left").await;
    page.mouse("mouseReleased", x, y, "left").await;
    page.key("KeyA", "a", true).await;
    page.key("KeyA", "a", false).await;
    let expected = vec![
        InputEvent::PointerMove { x: nx, y: ny },
        InputEvent::PointerButton {
            button: 0,
            down: true,
            x: nx,
            y: ny,
        },
        InputEvent::PointerButton {
            button: 0,
            down: false,
            x: nx,
            y: ny,
        },
        InputEvent::Key {
            code: "KeyA".into(),
            down: true,
            modifiers: Modifiers::NONE,
        },
        InputEvent::Key {
            code: "KeyA".into(),
            down: false,
            modifiers: Modifiers::NONE,
        },
    ];
    let mut inputs = Vec::new();
    let mut chats = Vec::new();
    while inputs.len() < expected.len() || chats.is_empty() {
        match next_seen(&mut seen).await {
            Seen::Input(e) => inputs.push(e),
            Seen::Chat(t) => chats.push(t),
            other => panic!("unexpected {other:?}"),
        }
    }
    assert_eq!(inputs, expected);
    assert_eq!(chats, vec!["grüezi from the browser".to_string()]);
    assert_eq!((nx, ny), (0.25, 0.25));

    page.screenshot(&out.join("session.png")).await;
    // On a phone the picture shrinks to the width, never wider than the screen.
    page.viewport(375, 800, true).await;
    wait(
        &mut page,
        "document.getElementById('screen').getBoundingClientRect().right <= window.innerWidth",
    )
    .await;
    page.screenshot(&out.join("session-phone.png")).await;
    page.viewport(1280, 1000, false).await;

    // Down to view only: the page closes its input side; no more events go out.
    page.eval("document.getElementById('mode').value = '1'; document.getElementById('change-mode').click()")
        .await;
    wait(
        &mut page,
        "document.body.dataset.mode === '1' && document.body.dataset.input === undefined",
    )
    .await;
    page.eval("document.getElementById('screen').focus()").await;
    page.key("KeyB", "b", true).await;
    page.key("KeyB", "b", false).await;

    // Back up to full control, with the sharer's consent: the page opens a new input stream
    // (the channel's stream 1, sealed under a fresh stream number: the sharer's SDK refuses a
    // replayed one), and the next events are the new key's, none from view only.
    raise.send(()).unwrap();
    page.eval("document.getElementById('mode').value = '2'; document.getElementById('change-mode').click()")
        .await;
    let Seen::Raised(raised) = next_seen(&mut seen).await else {
        panic!("the sharer accepts the raise first");
    };
    assert_eq!(raised, Some(remote_help_relay::core::Mode::FullControl));
    wait(
        &mut page,
        "document.body.dataset.mode === '2' && document.body.dataset.input === 'ready'",
    )
    .await;
    page.key("KeyC", "c", true).await;
    page.key("KeyC", "c", false).await;
    for down in [true, false] {
        match next_seen(&mut seen).await {
            Seen::Input(e) => assert_eq!(
                e,
                InputEvent::Key {
                    code: "KeyC".into(),
                    down,
                    modifiers: Modifiers::NONE
                }
            ),
            other => panic!("expected KeyC, got {other:?}"),
        }
    }

    // The page ends the session: the sharer is told, the page says so.
    page.eval("document.getElementById('end').click()").await;
    wait(&mut page, "document.body.dataset.state === 'idle'").await;
    assert_eq!(
        text(&mut page, "status").await,
        "Session ended: you ended the session (ENDED_BY_CLIENT)."
    );
    loop {
        match next_seen(&mut seen).await {
            Seen::Ended(reason) => {
                assert_eq!(reason, ErrorCode::PeerEnded);
                break;
            }
            Seen::Input(e) => panic!("input after the last key: {e:?}"),
            _ => {}
        }
    }
    within(sharer).await.unwrap();

    let violations = page.eval("window.cspViolations").await;
    assert_eq!(violations, json!([]), "Content-Security-Policy violations");
    drop(page);
    relay.stop().await;
}

#[tokio::test]
async fn the_page_connects_to_its_tenants_unattended_device_refuses_another_tenants_and_a_bad_token()
 {
    let test = "the_page_connects_to_its_tenants_unattended_device_refuses_another_tenants_and_a_bad_token";
    if !have_chromium(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path()).await;
    let admin = relay.handle.admin_addr().unwrap();
    let out = artefacts("helper");

    // A device agent of Fabrikam waits for unattended help.
    let fabrikam = relay.tenant("fabrikam");
    let agent_claims = common::with_claims(
        fabrikam.spec(Persona::Sharer),
        json!({
            "kind": "device", "licenses": [], "groups": [],
            "device_id": "kiosk-7", "device_name": "KIOSK", "platform": "android-dedicated",
            "manufacturer": "Zebra", "os_version": "14", "device_groups": ["kiosks"],
        }),
    );
    let mut agent = relay
        .connect(fabrikam.sign(&agent_claims), Role::Sharer)
        .await
        .unwrap();
    within(agent.register_device()).await.unwrap();

    // A Contoso helper in the browser asks for it: refused, the sentence on screen.
    let mut page = browser(&out.join("chromium-refusals.log")).await;
    sign_in(
        &mut page,
        admin,
        &relay.tenant("contoso").token(Persona::Helper),
    )
    .await;
    wait(&mut page, "document.body.dataset.state === 'idle'").await;
    page.eval("document.getElementById('device-id').focus()")
        .await;
    page.type_text("kiosk-7").await;
    page.eval("document.querySelector('#device-form button[type=submit]').click()")
        .await;
    wait(&mut page, "document.body.dataset.error === 'CROSS_TENANT'").await;
    assert_eq!(
        text(&mut page, "error").await,
        format!("{} (CROSS_TENANT)", ErrorCode::CrossTenant.describe())
    );
    assert_eq!(
        page.eval("document.body.dataset.state").await,
        json!("idle"),
        "a refused request changes nothing"
    );
    page.screenshot(&out.join("cross-tenant.png")).await;

    // Contoso's own agent is connected to at once, unattended: no code, no consent; the
    // page names the agent (from SessionStarted.peer) and shows its verification code.
    let contoso = relay.tenant("contoso");
    let mut ours = relay
        .connect(
            contoso.sign(&common::with_claims(
                contoso.spec(Persona::Sharer),
                json!({
                    "kind": "device", "licenses": [], "groups": [],
                    "device_id": "kiosk-9", "device_name": "LOBBY", "platform": "android-dedicated",
                    "manufacturer": "Zebra", "os_version": "14", "device_groups": ["kiosks"],
                }),
            )),
            Role::Sharer,
        )
        .await
        .unwrap();
    within(ours.register_device()).await.unwrap();
    page.eval(
        "document.getElementById('device-id').value = 'kiosk-9'; \
               document.querySelector('#device-form button[type=submit]').click()",
    )
    .await;
    let start = within(ours.wait_for_start()).await.unwrap();
    let agent_session = within(secure::channels(&ours, &start, Role::Sharer))
        .await
        .unwrap();
    wait(
        &mut page,
        "document.getElementById('verification').textContent !== ''",
    )
    .await;
    assert_eq!(
        text(&mut page, "verification").await,
        agent_session.verification_code().unwrap()
    );
    // The agent's profile, from its token (the persona's names over the device claims).
    assert!(
        text(&mut page, "peer")
            .await
            .starts_with("Connected to Grace Hopper")
    );
    assert_eq!(page.eval("document.body.dataset.mode").await, json!("4"));
    assert!(page.eval("document.body.dataset.error").await.is_null());
    page.eval("document.getElementById('end').click()").await;
    assert_eq!(within(ours.wait_for_end()).await, ErrorCode::PeerEnded);
    wait(&mut page, "document.body.dataset.state === 'idle'").await;

    // A token the relay cannot verify: the relay closes the WebTransport session with the
    // code before Welcome, and the page shows its sentence.
    let stranger = TokenSigner::generate_ed25519("contoso-1").unwrap();
    let forged = stranger
        .sign(&relay.tenant("contoso").spec(Persona::Helper).claims())
        .unwrap();
    page.eval("document.getElementById('sign-out').click()")
        .await;
    wait(&mut page, "document.body.dataset.state === 'signed-out'").await;
    page.eval("document.getElementById('token').focus()").await;
    page.type_text(&forged).await;
    page.eval("document.querySelector('#token-form button[type=submit]').click()")
        .await;
    wait(&mut page, "document.body.dataset.error === 'TOKEN_INVALID'").await;
    assert_eq!(
        text(&mut page, "error").await,
        format!("{} (TOKEN_INVALID)", ErrorCode::TokenInvalid.describe())
    );
    assert_eq!(
        page.eval("document.body.dataset.state").await,
        json!("signed-out")
    );

    let violations = page.eval("window.cspViolations").await;
    assert_eq!(violations, json!([]), "Content-Security-Policy violations");
    drop(page);
    drop(agent);
    relay.stop().await;
}

/// The `key = value` lines of the fenced block after `marker` in PROTOCOL.md, from the line
/// `[section]` on (or from the start, for `None`) up to the next section.
fn published(marker: &str, section: Option<&str>) -> std::collections::HashMap<String, String> {
    let doc =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../PROTOCOL.md")).unwrap();
    let block = doc.split(marker).nth(1).unwrap();
    let block = block
        .split("```text")
        .nth(1)
        .unwrap()
        .split("```")
        .next()
        .unwrap();
    let mut inside = section.is_none();
    let mut values = std::collections::HashMap::new();
    for line in block.lines().map(str::trim) {
        if line.starts_with('[') {
            inside = Some(line) == section;
            continue;
        }
        if let Some((k, v)) = line.split_once(" = ")
            && inside
        {
            values.insert(k.to_string(), v.trim_matches('"').to_string());
        }
    }
    values
}

/// The page's own modules (e2e.js, content.js), loaded in Chromium, compute the published
/// test vectors of suite 2 (PROTOCOL.md §8.7.4) and the content worked examples (§8.8.7):
/// its WebCrypto protection and hand-written protobuf are the protocol's.
#[tokio::test]
async fn the_pages_modules_compute_the_published_test_vectors() {
    let test = "the_pages_modules_compute_the_published_test_vectors";
    if !have_chromium(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path()).await;
    let admin = relay.handle.admin_addr().unwrap();
    let mut page = browser(&artefacts("helper").join("chromium-vectors.log")).await;
    page.navigate(&format!("http://{admin}/helper/")).await;
    page.wait_until("document.readyState === 'complete'").await;

    let e2e = published("<!-- e2e-test-vectors -->", Some("[suite 2]"));
    let common = published("<!-- e2e-test-vectors -->", None);
    let list = |k: &str| format!("[{}]", e2e[k]);
    let script = format!(
        r#"(async () => {{
        const e2e = await import('/helper/e2e.js');
        const hex = (b) => [...b].map(x => x.toString(16).padStart(2, '0')).join('');
        const bytes = (h) => Uint8Array.from(h.match(/../g).map(x => parseInt(x, 16)));
        const text = (s) => new TextEncoder().encode(s);
        const helperKey = bytes('{helper_public}'), sharerKey = bytes('{sharer_public}');
        const transcript = await e2e.transcriptHash({{
          sessionId: '{session_id}',
          helper: {{ tenant: '{helper_tenant}', subject: '{helper_subject}' }},
          sharer: {{ tenant: '{sharer_tenant}', subject: '{sharer_subject}' }},
          helperSuites: {helper_suites}, sharerSuites: {sharer_suites},
          suite: e2e.chooseSuite({helper_suites}, {sharer_suites}), helperKey, sharerKey }});
        const keys = await e2e.deriveKeys(await e2e.importPrivateKey(bytes('{helper_private}')), sharerKey, transcript);
        const h2s = await e2e.aesKey(keys.helperToSharer), s2h = await e2e.aesKey(keys.sharerToHelper);
        const data = await e2e.sealFrame(h2s, e2e.DOMAIN.INPUT, 0, 0, text('click 10 20'), 0);
        const end = await e2e.sealFrame(h2s, e2e.DOMAIN.INPUT, 0, 1, new Uint8Array(0), 1);
        // The sharer's side opens the helper's frames with every check.
        const opener = new e2e.StreamOpener(h2s, e2e.DOMAIN.INPUT, new Set());
        const opened = new TextDecoder().decode(await opener.open(data));
        const ended = await opener.open(end);
        return {{
          transcript_hash: hex(transcript),
          helper_to_sharer_key: hex(keys.helperToSharer),
          sharer_to_helper_key: hex(keys.sharerToHelper),
          verification_code: keys.code,
          data_frame: hex(data),
          end_frame: hex(end),
          second_stream_frame: hex(await e2e.sealFrame(h2s, e2e.DOMAIN.INPUT, 1, 0, text('key a'), 0)),
          datagram: hex(await e2e.sealFrame(s2h, 0x80000001, 0, 0, text('frame 0'), 0)),
          opened, ended,
        }};
      }})()"#,
        helper_public = common["helper_public_key"],
        sharer_public = common["sharer_public_key"],
        helper_private = common["helper_private_key"],
        session_id = common["session_id"],
        helper_tenant = common["helper_tenant"],
        helper_subject = common["helper_subject"],
        sharer_tenant = common["sharer_tenant"],
        sharer_subject = common["sharer_subject"],
        helper_suites = list("helper_suites"),
        sharer_suites = list("sharer_suites"),
    );
    let computed = page.eval(&script).await;
    for name in [
        "transcript_hash",
        "helper_to_sharer_key",
        "sharer_to_helper_key",
        "verification_code",
        "data_frame",
        "end_frame",
        "second_stream_frame",
        "datagram",
    ] {
        assert_eq!(computed[name], json!(e2e[name]), "suite 2 {name}");
    }
    assert_eq!(computed["opened"], json!("click 10 20"));
    assert_eq!(computed["ended"], Value::Null);

    let examples = published("<!-- content-test-vectors -->", None);
    let computed = page
        .eval(
            r#"(async () => {
            const c = await import('/helper/content.js');
            const hex = (b) => [...b].map(x => x.toString(16).padStart(2, '0')).join('');
            return {
              start: hex(c.start('rhelp/1')),
              pointer_button: hex(c.input({ kind: 'button', button: 0, down: true, x: 0.5, y: 0.25 })),
              key: hex(c.input({ kind: 'key', code: 'KeyA', down: true, modifiers: 1 })),
              chat: hex(c.chat('hi', 0)),
            };
          })()"#,
        )
        .await;
    for name in ["start", "pointer_button", "key", "chat"] {
        assert_eq!(
            computed[name],
            json!(examples[name]),
            "content example {name}"
        );
    }
    drop(page);
    relay.stop().await;
}

/// The `Host` header goes into the page's Content-Security-Policy and WebTransport URL, so
/// one that could add a directive is refused with 400 and counted; a plain one is echoed.
#[tokio::test]
async fn a_host_header_that_could_change_the_policy_is_refused() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path()).await;
    let admin = relay.handle.admin_addr().unwrap();
    let get = |host: &'static str| async move {
        let mut stream = within(tokio::net::TcpStream::connect(admin)).await.unwrap();
        let request = format!(
            "GET /helper/config.json HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n"
        );
        within(stream.write_all(request.as_bytes())).await.unwrap();
        let mut response = String::new();
        within(stream.read_to_string(&mut response)).await.unwrap();
        response
    };
    let refused = |m: &std::collections::HashMap<String, f64>| {
        m.get("relay_helper_page_refused_total{reason=\"host\"}")
            .copied()
            .unwrap_or(0.0)
    };
    let before = refused(&common::metrics(admin).await);
    let response = get("evil.example; script-src *").await;
    assert!(response.starts_with("HTTP/1.1 400"), "{response}");
    assert_eq!(refused(&common::metrics(admin).await), before + 1.0);

    let response = get("Relay.Example:9464").await;
    assert!(response.starts_with("HTTP/1.1 200"), "{response}");
    assert!(
        response.contains(&format!(
            "connect-src 'self' https://relay.example:{}",
            relay.addr().port()
        )),
        "{response}"
    );
    assert!(response.contains(&format!(
        "\"webtransport_url\":\"https://relay.example:{}/remote-help/1\"",
        relay.addr().port()
    )));
    relay.stop().await;
}

/// A child process, killed if the test ends first.
struct Running(std::process::Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lines a child prints, as they come.
fn lines_of(stdout: std::process::ChildStdout) -> mpsc::UnboundedReceiver<String> {
    use std::io::BufRead;
    let (tx, rx) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// README's "Try it in a browser", with the real binary: the page and `rhelp share
/// --test-pattern`, which prints the verification code and every input event it receives.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_and_rhelp_share_test_pattern_as_the_readme_runs_them() {
    let test = "the_page_and_rhelp_share_test_pattern_as_the_readme_runs_them";
    if !have_chromium(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    // As README runs it: the development relay, nothing configured for browsers.
    let relay = development_relay().await;
    let admin = relay.handle.admin_addr().unwrap();
    let mut page = browser(&artefacts("helper").join("chromium-rhelp.log")).await;
    sign_in(
        &mut page,
        admin,
        &relay.tenant("contoso").token(Persona::Helper),
    )
    .await;
    wait(&mut page, "document.body.dataset.state === 'idle'").await;
    page.eval("document.querySelector('#create-form button[type=submit]').click()")
        .await;
    wait(&mut page, "document.body.dataset.state === 'waiting'").await;
    let code = text(&mut page, "code").await;

    let token = dir.path().join("sharer.jwt");
    std::fs::write(&token, relay.tenant("contoso").token(Persona::Sharer)).unwrap();
    let (width, height) = (CARD.0.to_string(), CARD.1.to_string());
    let share = std::process::Command::new(env!("CARGO_BIN_EXE_rhelp"))
        .args(["share", "--relay", &relay.addr().to_string()])
        .args(["--pin", &relay.handle.fingerprint().to_string()])
        .args(["--test-pattern", "--yes", "--fps", "20", "--code", &code])
        .args(["--width", &width, "--height", &height])
        .arg("--token")
        .arg(&token)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut share = Running(share);
    let mut out = lines_of(share.0.stdout.take().unwrap());
    let sharers_code = loop {
        let line = within(out.recv()).await.expect("rhelp share exited");
        if let Some(code) = line.strip_prefix("Verification code: ") {
            break code.to_string();
        }
    };
    wait(
        &mut page,
        "document.getElementById('verification').textContent !== ''",
    )
    .await;
    assert_eq!(text(&mut page, "verification").await, sharers_code);

    wait(&mut page, "Number(document.body.dataset.frames) >= 1").await;
    let card = TestCard::new(CARD.0, CARD.1).unwrap();
    let (rgb, drawn) = canvas(&mut page).await;
    assert_eq!(card.read_counter(&rgb), Some(drawn % 1_000_000));
    wait(
        &mut page,
        &format!("Number(document.body.dataset.frameNumber) > {drawn}"),
    )
    .await;
    let (rgb, later) = canvas(&mut page).await;
    assert_eq!(card.read_counter(&rgb), Some(later % 1_000_000));
    assert!(later > drawn);

    wait(&mut page, "document.body.dataset.input === 'ready'").await;
    let rect = page
        .eval(
            "(() => { const r = document.getElementById('screen').getBoundingClientRect(); \
               return [r.left, r.top]; })()",
        )
        .await;
    let rect: Vec<f64> = serde_json::from_value(rect).unwrap();
    let (x, y) = (rect[0] + 240.0, rect[1] + 135.0);
    page.mouse("mouseMoved", x, y, "none").await;
    page.mouse("mousePressed", x, y, "right").await;
    page.mouse("mouseReleased", x, y, "right").await;
    page.key("Digit7", "7", true).await;
    page.key("Digit7", "7", false).await;
    let expected = [
        "pointer-move 0.75 0.75",
        "pointer-button 2 down 0.75 0.75",
        "pointer-button 2 up 0.75 0.75",
        "key Digit7 down none",
        "key Digit7 up none",
    ];
    let mut received = Vec::new();
    while received.len() < expected.len() {
        let line = within(out.recv()).await.expect("rhelp share exited");
        assert!(!line.starts_with("skipped"), "{line}");
        if let Some(rest) = line.strip_prefix("input ") {
            let (index, event) = rest.split_once(' ').unwrap();
            assert_eq!(index.parse::<usize>().unwrap(), received.len(), "{line}");
            received.push(event.parse::<InputEvent>().unwrap());
        }
    }
    let expected: Vec<InputEvent> = expected.iter().map(|e| e.parse().unwrap()).collect();
    assert_eq!(received, expected);

    // The page ends the session; `rhelp share` stops and exits 0 (the helper ending it is an
    // ordinary end for the sharer). Its last lines are read to the end of its output.
    page.eval("document.getElementById('end').click()").await;
    let mut rest = Vec::new();
    while let Some(line) = within(out.recv()).await {
        rest.push(line);
    }
    assert!(
        rest.iter()
            .any(|l| l.starts_with("Received 5 input events")),
        "{rest:?}"
    );
    let status = within(tokio::task::spawn_blocking(move || share.0.wait().unwrap()))
        .await
        .unwrap();
    assert!(status.success(), "{status}");
    drop(page);
    relay.stop().await;
}

/// A sharer whose device is not compliant: the page shows the warning, the helper continues
/// past it, the sharer is asked and declines, and the page shows the protocol's sentence.
#[tokio::test]
async fn the_page_confirms_a_compliance_warning_and_shows_a_decline() {
    let test = "the_page_confirms_a_compliance_warning_and_shows_a_decline";
    if !have_chromium(test) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let relay = relay(dir.path()).await;
    let admin = relay.handle.admin_addr().unwrap();
    let mut page = browser(&artefacts("helper").join("chromium-compliance.log")).await;
    sign_in(
        &mut page,
        admin,
        &relay.tenant("contoso").token(Persona::Helper),
    )
    .await;
    wait(&mut page, "document.body.dataset.state === 'idle'").await;
    page.eval("document.querySelector('#create-form button[type=submit]').click()")
        .await;
    wait(&mut page, "document.body.dataset.state === 'waiting'").await;
    let code = text(&mut page, "code").await;

    let contoso = relay.tenant("contoso");
    let token = contoso.sign(&common::with_claims(
        contoso.spec(Persona::Sharer),
        json!({ "compliant": false }),
    ));
    let mut sharer = relay.connect(token, Role::Sharer).await.unwrap();
    // The sharer is asked only once the helper has continued past the warning.
    let joined = tokio::spawn(async move {
        let request = sharer.join(&code).await.unwrap();
        (sharer, request)
    });
    wait(
        &mut page,
        "document.body.dataset.state === 'joined' && !document.getElementById('compliance').hidden",
    )
    .await;
    assert!(
        text(&mut page, "peer").await.starts_with("Grace Hopper"),
        "the sharer is named"
    );
    // Nothing of an active session shows yet.
    assert_eq!(
        page.eval(
            "['controls', 'screen', 'chat', 'verification-box'].filter(id => \
             document.getElementById(id).getClientRects().length > 0)"
        )
        .await,
        json!([])
    );
    page.screenshot(&artefacts("helper").join("compliance.png"))
        .await;
    page.eval("document.getElementById('compliance-proceed').click()")
        .await;
    let (mut sharer, request) = within(joined).await.unwrap();
    assert!(!request.mode_change);
    within(sharer.decline()).await.unwrap();

    wait(&mut page, "document.body.dataset.error === 'DECLINED'").await;
    assert_eq!(
        text(&mut page, "error").await,
        format!("{} (DECLINED)", ErrorCode::Declined.describe())
    );
    assert_eq!(
        page.eval("document.body.dataset.state").await,
        json!("idle")
    );
    drop(page);
    relay.stop().await;
}

/// The administration audience of the tenant whose helpers sign in at its provider: the
/// Monitor page's `resource`, which the helper page must never ask for.
const SSO_ADMIN_AUDIENCE: &str = "urn:contoso-sso:remote-help-reports";

#[tokio::test]
async fn a_helper_signs_in_at_the_tenants_provider_with_pkce_and_helps_a_sharer_of_that_tenant() {
    use common::oidc::{OidcProvider, ProviderOptions};

    use remote_help_relay::claim_map::{ClaimMapping, Preset};
    use remote_help_relay::config::{DEFAULT_AUDIENCE, WebSignIn};
    use remote_help_relay::tenant_keys::ProviderKeys;

    let test =
        "a_helper_signs_in_at_the_tenants_provider_with_pkce_and_helps_a_sharer_of_that_tenant";
    if !have_chromium(test) {
        return;
    }
    // Keycloak-shaped claims: realm roles are the groups role assignments name.
    let Some(provider) = OidcProvider::start(
        ProviderOptions::new(test)
            .client(
                "sharer-app",
                json!({
                    "realm_access": {"roles": ["remote-help"]}, "name": "Grace Hopper",
                    "device_id": "d-1", "device_name": "GRACE-LAPTOP", "platform": "windows",
                    "enrolled": true, "compliant": true
                }),
            )
            .account(
                "ada",
                json!({"realm_access": {"roles": ["remote-help", "helpdesk"]}, "name": "Ada Lovelace"}),
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
        .config({
            let issuer = issuer.clone();
            move |c| {
                let source = ProviderKeys {
                    issuer,
                    jwks_uri: None,
                    ca_file: Some(ca),
                };
                let tenant = common::keys_from_provider(c, "contoso-sso", source);
                // The Monitor page's sign-in asks for the administration audience; the
                // helper page's must not.
                tenant.admin_audience = Some(SSO_ADMIN_AUDIENCE.into());
                tenant.web_sign_in = Some(WebSignIn {
                    client_id: "remote-help-web".into(),
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
    let out = artefacts("helper");

    // What the page is offered, without a token: the tenant's public sign-in, for the
    // session audience, with no resource indicator.
    let (status, body) = http(admin, "GET", "/helper/sign-in.json", None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<Value>(&body).unwrap(),
        json!([{
            "tenant": "contoso-sso", "display_name": "Contoso (single sign-on)",
            "issuer": issuer, "client_id": "remote-help-web", "scopes": ["openid"],
            "resource": null, "audience": DEFAULT_AUDIENCE
        }])
    );

    let page_url = format!("http://{admin}/helper/");
    provider
        .add_public_client("remote-help-web", &page_url)
        .await;
    let mut page = Browser::launch_with(
        &out.join("chromium-sso.log"),
        &[format!(
            "--ignore-certificate-errors-spki-list={}",
            provider.leaf_spki_sha256()
        )],
    )
    .await;
    page.viewport(1280, 1000, false).await;
    page.call("Page.enable", json!({})).await;
    page.call(
        "Page.addScriptToEvaluateOnNewDocument",
        json!({ "source": "window.cspViolations = []; document.addEventListener('securitypolicyviolation', \
            e => window.cspViolations.push(`${e.violatedDirective} ${e.blockedURI}`))" }),
    )
    .await;
    page.navigate(&page_url).await;
    wait(
        &mut page,
        "document.body.dataset.choices === '1' && !document.getElementById('provider-form').hidden",
    )
    .await;
    assert_eq!(
        page.eval("document.getElementById('tenant-choice').selectedOptions[0].textContent")
            .await,
        json!("Contoso (single sign-on)")
    );
    // The page may reach exactly the issuer's origin besides its own and the relay's
    // WebTransport endpoint.
    let policy = page
        .eval("fetch('/helper/').then(r => r.headers.get('content-security-policy'))")
        .await;
    let origin = WebSignIn::origin_of(&issuer).unwrap();
    assert!(
        policy.as_str().unwrap().contains(&format!(
            "connect-src 'self' https://127.0.0.1:{} {origin};",
            relay.addr().port()
        )),
        "{policy}"
    );

    // An answer carrying another sign-in's state is refused, in words, and leaves no token
    // and no answer in the address bar.
    let to_provider = "document.querySelector('#provider-form button[type=submit]').click()";
    let at_login =
        format!("location.origin === '{issuer}' && document.querySelector('input[name=login]')");
    page.eval(to_provider).await;
    page.wait_across_navigation(&at_login).await;
    page.navigate(&format!("{page_url}?code=forged-code&state=tampered"))
        .await;
    page.wait_across_navigation(&format!(
        "location.origin === 'http://{admin}' && document.body.dataset.signInFailed && document.body.dataset.choices"
    ))
    .await;
    assert_eq!(
        page.eval(
            "[document.body.dataset.signInFailed, document.getElementById('error').textContent, \
             location.search, sessionStorage.getItem('rhr-helper-token'), document.body.dataset.state]"
        )
        .await,
        json!([
            "state",
            "The sign-in answer does not belong to a sign-in started in this tab (state mismatch); sign in again.",
            "",
            null,
            "signed-out"
        ])
    );

    // The helper picks the tenant, signs in at the provider (login and consent forms) and
    // comes back signed in.
    page.eval(to_provider).await;
    page.wait_across_navigation(&at_login).await;
    page.log_in_at_test_provider("ada").await;
    page.wait_across_navigation(&format!(
        "location.origin === 'http://{admin}' && document.body.dataset.state === 'idle'"
    ))
    .await;
    assert_eq!(
        text(&mut page, "who").await,
        "Signed in as Ada Lovelace of contoso-sso"
    );
    // The answer is gone from the address bar; the token is in this tab's session storage
    // (and nowhere else), issued by the tenant's provider for the session audience.
    assert_eq!(
        page.eval("[location.href, localStorage.length, document.cookie]")
            .await,
        json!([page_url, 0, ""])
    );
    let token = page
        .eval("sessionStorage.getItem('rhr-helper-token')")
        .await;
    let claims = jwt_claims(token.as_str().unwrap());
    assert_eq!(claims["aud"], DEFAULT_AUDIENCE, "{claims}");
    assert_eq!(claims["iss"], issuer.as_str(), "{claims}");
    assert_eq!(claims["sub"], "ada", "{claims}");

    // A session with a sharer of the same tenant, whose token the provider issued too.
    page.eval("document.querySelector('#create-form button[type=submit]').click()")
        .await;
    wait(&mut page, "document.body.dataset.state === 'waiting'").await;
    let code = text(&mut page, "code").await;
    let (seen_tx, mut seen) = mpsc::unbounded_channel();
    let options = relay.options(provider.token("sharer-app").await, Role::Sharer);
    let (_raise, raise_rx) = mpsc::unbounded_channel();
    let sharer = tokio::spawn(share(options, code, seen_tx, raise_rx));
    wait(&mut page, "document.body.dataset.state === 'active'").await;
    let Seen::Verification(sharers_code) = next_seen(&mut seen).await else {
        panic!("the sharer's first report is its verification code");
    };
    wait(
        &mut page,
        "document.getElementById('verification').textContent !== ''",
    )
    .await;
    assert_eq!(text(&mut page, "verification").await, sharers_code);
    page.screenshot(&out.join("signed-in-at-provider.png"))
        .await;
    assert_eq!(
        page.eval("window.cspViolations").await,
        json!([]),
        "the page breaks its own Content-Security-Policy"
    );
    page.eval("document.getElementById('end').click()").await;
    within(sharer).await.unwrap();
    drop(page);
    relay.stop().await;
}

/// The claims of a JWT (not verified: the relay did that).
fn jwt_claims(token: &str) -> Value {
    let payload = token.split('.').nth(1).unwrap();
    serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap()
}
