//! An ignored measurement, not a test (BENCHMARKS.md "Browser helper against native helper"):
//! the web helper page (docs/web-helper.md) in headless Chromium against a helper on the Rust
//! SDK, both against one spawned release relay in the same run. Nothing here is asserted
//! beyond the steps working; the figures are printed and kept as JSON in
//! `target/test-artefacts/browser-bench/`. Run it with
//!
//! ```text
//! cargo test --release -p remote-help-relay --all-features --test browser_bench -- \
//!     --ignored --nocapture bench_
//! ```
//!
//! Sizes can be changed without rebuilding: `BENCH_SETUPS` (sessions per side, 30),
//! `BENCH_SECONDS` (throughput window, 10), `BENCH_IDLE` (idle sessions per side, 300).

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::browser::{Browser, artefacts, have_chromium};
use common::daemon::{Daemon, start_daemon};
use remote_help_relay::client::content::{
    Content, ContentReceiver, ContentSender, ImageFormat, ScreenFrame,
};
use remote_help_relay::client::secure::{self, SessionChannels};
use remote_help_relay::client::test_card::TestCard;
use remote_help_relay::client::{Client, ClientOptions};
use remote_help_relay::core::{Channel, Mode, Role};
use remote_help_relay::dev::{self, Persona};
use remote_help_relay::issuer::TokenSigner;
use remote_help_relay::tls::{Fingerprint, RelayTrust};
use serde_json::{Value, json};

/// The screen the sharer streams in the throughput part: a laptop's 1280 × 720.
const SCREEN: (u32, u32) = (1280, 720);
/// Distinct frames encoded up front and sent in turn, so PNG encoding is not measured.
const DISTINCT_FRAMES: u64 = 30;
/// The side of a square of noise on each frame: the plain test card compresses to ~15 KB,
/// far less than a real desktop; with 200 × 200 random pixels a frame is ~135 KB, what a
/// busy 1280 × 720 screen takes as PNG.
const NOISE: u32 = 200;

/// Test card frame `n` with a square of random pixels, as PNG.
fn frame_png(card: &TestCard, n: u64) -> Vec<u8> {
    use rand::RngCore as _;
    let mut rgb = card.rgb(n);
    let (w, h) = SCREEN;
    for y in 0..NOISE {
        let row = (((y + 400) * w + 900) * 3) as usize;
        rand::rng().fill_bytes(&mut rgb[row..row + (NOISE * 3) as usize]);
    }
    let mut out = Vec::new();
    let mut encoder = png::Encoder::new(&mut out, w, h);
    encoder.set_color(png::ColorType::Rgb);
    encoder.set_depth(png::BitDepth::Eight);
    let mut writer = encoder.write_header().unwrap();
    writer.write_image_data(&rgb).unwrap();
    writer.finish().unwrap();
    out
}

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// The release relay as its own process (its CPU and memory are then its own), on the
/// development tenant with a copy of the embedded config on free ports, and no certificate
/// configured: native clients pin its long-lived certificate, the page gets its browser
/// certificate's hash from `config.json`, as development runs it. Every client is on
/// 127.0.0.1, so the per-source limits are raised past what the run needs (30 joins a
/// minute and 256 connections per source by default).
struct Relay {
    daemon: Daemon,
    addr: SocketAddr,
    admin: SocketAddr,
    pin: Fingerprint,
    signer: TokenSigner,
    _dir: tempfile::TempDir,
}

impl Relay {
    fn spawn() -> Relay {
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("state");
        let (dev, signer) = dev::config(&state).unwrap();
        let token_file = dir.path().join("admin-token");
        std::fs::write(&token_file, "bench-admin-token-0123456789\n").unwrap();
        let config = dir.path().join("relay.toml");
        std::fs::write(
            &config,
            format!(
                "[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = {:?}\n\
                 [limits]\njoins_per_source_per_minute = 100000\nmax_connections_per_source = 2048\n[audit]\ndir = {:?}\n\
                 [admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n\
                 [[tenants]]\nid = \"dev\"\nissuer = {:?}\njwks_file = {:?}\nenabled = true\n\
                 [[tenants.assignments]]\nrole = \"Help Desk Operator\"\nmembers = [\"helpdesk\"]\n\
                 scope = [\"all_users\", \"all_devices\"]\n",
                state.display().to_string(),
                dir.path().join("audit").display().to_string(),
                token_file.display().to_string(),
                dev.tenants[0].trust.issuer,
                state.join(dev::JWKS_FILE).display().to_string(),
            ),
        )
        .unwrap();
        let (daemon, addr, fingerprint, admin, _log) = start_daemon(&config, &[]);
        Relay {
            daemon,
            addr: addr.parse().unwrap(),
            admin: admin.parse().unwrap(),
            pin: Fingerprint::parse(&fingerprint).unwrap(),
            signer,
            _dir: dir,
        }
    }

    fn token(&self, persona: Persona) -> String {
        dev::mint(&self.signer, persona, None, 4 * 3600).unwrap()
    }

    fn options(&self, persona: Persona, role: Role) -> ClientOptions {
        ClientOptions::new(
            self.addr,
            RelayTrust::Pin(self.pin),
            self.token(persona),
            role,
        )
    }

    async fn connect(&self, persona: Persona, role: Role) -> Client {
        Client::connect(self.options(persona, role)).await.unwrap()
    }

    fn pid(&self) -> u32 {
        self.daemon.id()
    }
}

/// Clock ticks per second of `/proc/*/stat` times.
fn ticks_per_second() -> f64 {
    // SAFETY: sysconf has no memory-safety preconditions.
    (unsafe { libc::sysconf(libc::_SC_CLK_TCK) }) as f64
}

/// (parent pid, user + system CPU seconds) of `pid`, from `/proc/<pid>/stat`.
fn stat(pid: u32) -> Option<(u32, f64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name may hold spaces; the fields after it are plain.
    let rest = &text[text.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let ppid = fields[1].parse().ok()?;
    let ticks: f64 = fields[11].parse::<f64>().ok()? + fields[12].parse::<f64>().ok()?;
    Some((ppid, ticks / ticks_per_second()))
}

/// CPU seconds of `pid` alone.
fn cpu_of(pid: u32) -> f64 {
    stat(pid).map_or(0.0, |(_, cpu)| cpu)
}

/// CPU seconds of `root` and every process below it (Chromium's browser, renderer, GPU,
/// network and utility processes).
fn cpu_of_tree(root: u32) -> f64 {
    let mut all: HashMap<u32, (u32, f64)> = HashMap::new();
    for entry in std::fs::read_dir("/proc").unwrap().flatten() {
        if let Some(pid) = entry.file_name().to_str().and_then(|n| n.parse().ok())
            && let Some(s) = stat(pid)
        {
            all.insert(pid, s);
        }
    }
    let mut total = 0.0;
    let mut frontier = vec![root];
    while let Some(pid) = frontier.pop() {
        if let Some((_, cpu)) = all.get(&pid) {
            total += cpu;
        }
        frontier.extend(
            all.iter()
                .filter(|(_, (ppid, _))| *ppid == pid)
                .map(|(child, _)| *child),
        );
    }
    total
}

/// Resident memory of `pid` in bytes (`VmRSS`).
fn rss(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    line.split_whitespace()
        .nth(1)
        .unwrap()
        .parse::<u64>()
        .unwrap()
        * 1024
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .trim()
        .to_string()
}

/// The relay's metrics now (only `relay_connections_open` is read).
async fn connections_open(admin: SocketAddr) -> f64 {
    common::metrics(admin)
        .await
        .get("relay_connections_open")
        .copied()
        .unwrap_or(0.0)
}

/// Waits until the relay holds `n` connections.
async fn wait_for_connections(admin: SocketAddr, n: f64) {
    let deadline = Instant::now() + Duration::from_secs(60);
    while connections_open(admin).await != n {
        assert!(
            Instant::now() < deadline,
            "the relay did not come to {n} connections"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// p50, p90 and max of `samples` (milliseconds), nearest rank.
fn percentiles(samples: &[f64]) -> Value {
    let mut s = samples.to_vec();
    s.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let rank = |p: f64| s[((p * s.len() as f64).ceil() as usize).clamp(1, s.len()) - 1];
    json!({ "n": s.len(), "p50_ms": rank(0.5), "p90_ms": rank(0.9), "max_ms": rank(1.0) })
}

/// Helpers for the page: a promise that resolves when a condition on the document holds,
/// checked on every change to it (no polling, so no polling delay in the figures); the
/// times the body's `data-state` changed and the verification code appeared; and the bytes
/// and frames the page opened (AES-GCM decryptions: every sealed frame it receives).
const PAGE_HOOKS: &str = r#"
window.__until = (f) => new Promise((done, fail) => {
  if (f()) return done();
  const o = new MutationObserver(() => { if (f()) { o.disconnect(); clearTimeout(t); done(); } });
  o.observe(document.body, { attributes: true, childList: true, subtree: true, characterData: true });
  const t = setTimeout(() => { o.disconnect(); fail(new Error(`not yet: ${JSON.stringify({ ...document.body.dataset })} \
    ${document.getElementById('error').textContent} ${document.getElementById('status').textContent}`)); }, 25000);
});
window.__marks = [];
new MutationObserver(() => window.__marks.push([document.body.dataset.state, performance.now()]))
  .observe(document.body, { attributes: true, attributeFilter: ['data-state'] });
new MutationObserver(() => { if (document.getElementById('verification').textContent) window.__keys = performance.now(); })
  .observe(document.getElementById('verification'), { childList: true, characterData: true, subtree: true });
window.__opened = { frames: 0, bytes: 0 };
const decrypt = crypto.subtle.decrypt.bind(crypto.subtle);
crypto.subtle.decrypt = async (...args) => {
  const plain = await decrypt(...args);
  window.__opened.frames += 1;
  window.__opened.bytes += plain.byteLength;
  return plain;
};
true
"#;

/// The page, signed in as the development helper, with [`PAGE_HOOKS`] installed.
async fn page(relay: &Relay, out: &std::path::Path) -> Browser {
    let mut page = Browser::launch(&out.join("chromium.log")).await;
    page.viewport(1600, 1000, false).await;
    page.call("Page.enable", json!({})).await;
    page.call("Performance.enable", json!({})).await;
    page.navigate(&format!("http://{}/helper/", relay.admin))
        .await;
    page.wait_until("document.readyState === 'complete' && document.getElementById('token')")
        .await;
    page.eval(PAGE_HOOKS).await;
    page.eval("document.getElementById('token').focus()").await;
    page.type_text(&relay.token(Persona::Helper)).await;
    page.eval("document.querySelector('#token-form button[type=submit]').click()")
        .await;
    page.wait_until("document.body.dataset.state === 'idle'")
        .await;
    page
}

/// The page creates a session; returns the page's clock at the click and the code.
async fn page_creates(page: &mut Browser) -> (f64, String) {
    let created = page
        .eval(
            "(async () => { window.__marks = []; window.__keys = undefined; \
             const t0 = performance.now(); \
             document.querySelector('#create-form button[type=submit]').click(); \
             await __until(() => document.body.dataset.state === 'waiting'); \
             return { t0, code: document.getElementById('code').textContent }; })()",
        )
        .await;
    (
        created["t0"].as_f64().unwrap(),
        created["code"].as_str().unwrap().to_string(),
    )
}

/// The page ends its session and is back to idle.
async fn page_ends(page: &mut Browser) {
    page.eval(
        "(async () => { document.getElementById('end').click(); \
         await __until(() => document.body.dataset.state === 'idle'); })()",
    )
    .await;
}

/// A sharer that joins `code`, consents and agrees keys; returns it with its channels.
async fn sharer_joins(mut sharer: Client, code: String) -> (Client, SessionChannels) {
    sharer.join(&code).await.unwrap();
    let start = sharer.accept().await.unwrap();
    let channels = secure::channels(&sharer, &start, Role::Sharer)
        .await
        .unwrap();
    (sharer, channels)
}

/// Session setup, `n` times on each side, interleaved in blocks of five so a change in the
/// machine's load falls on both. Each sharer is connected and signed in before the interval
/// starts; the interval runs from the helper's create (the click on the page; the
/// `CreateSession` call on the SDK) to the helper seeing the session started
/// (`SessionStarted` after the sharer's consent) and, second figure, to the helper's
/// verification code (keys agreed, §8.7.2).
async fn setup_times(relay: &Relay, page: &mut Browser, n: usize) -> Value {
    let mut native = relay.connect(Persona::Helper, Role::Helper).await;
    let (mut page_started, mut page_keys, mut native_started, mut native_keys) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut done = 0;
    while done < n {
        let block = 5.min(n - done);
        for _ in 0..block {
            let sharer = relay.connect(Persona::Sharer, Role::Sharer).await;
            let (t0, code) = page_creates(page).await;
            let joined = tokio::spawn(sharer_joins(sharer, code));
            let times = page
                .eval(
                    "(async () => { \
                     await __until(() => document.getElementById('verification').textContent !== ''); \
                     const active = window.__marks.find(([s]) => s === 'active'); \
                     return { active: active[1], keys: window.__keys }; })()",
                )
                .await;
            page_started.push(times["active"].as_f64().unwrap() - t0);
            page_keys.push(times["keys"].as_f64().unwrap() - t0);
            let (mut sharer, _channels) = joined.await.unwrap();
            // The page opens its chat and input streams after the code shows; ending
            // before they are open races them against the end (the relay then closes the
            // page's connection with PROTOCOL_VIOLATION for a stream outside a session).
            page.eval("__until(() => document.body.dataset.input === 'ready' && document.body.dataset.chat === 'ready')")
                .await;
            page_ends(page).await;
            sharer.wait_for_end().await;
            sharer.close().await;
        }
        for _ in 0..block {
            let sharer = relay.connect(Persona::Sharer, Role::Sharer).await;
            let t0 = Instant::now();
            let created = native.create_session(Mode::FullControl).await.unwrap();
            let joined = tokio::spawn(sharer_joins(sharer, created.code));
            native.wait_for_sharer().await.unwrap();
            let start = native.wait_for_start().await.unwrap();
            native_started.push(t0.elapsed().as_secs_f64() * 1e3);
            let channels = secure::channels(&native, &start, Role::Helper)
                .await
                .unwrap();
            native_keys.push(t0.elapsed().as_secs_f64() * 1e3);
            let (mut sharer, _sharer_channels) = joined.await.unwrap();
            drop(channels);
            native.end_session().await.unwrap();
            sharer.wait_for_end().await;
            sharer.close().await;
        }
        done += block;
    }
    native.close().await;
    json!({
        "browser": { "started": percentiles(&page_started), "keys": percentiles(&page_keys) },
        "native": { "started": percentiles(&native_started), "keys": percentiles(&native_keys) },
    })
}

/// The sharer's side of the throughput part: frames sent until `stop`, as fast as the
/// stream's flow control lets them go.
async fn stream_frames(
    channels: SessionChannels,
    frames: Arc<Vec<Vec<u8>>>,
    stop: Arc<AtomicBool>,
) {
    let mut screen = ContentSender::open(&channels, Channel::Screen, "browser-bench")
        .await
        .unwrap();
    let mut n = 0u64;
    while !stop.load(Ordering::Relaxed) {
        let frame = ScreenFrame {
            frame_number: n,
            timestamp_us: n,
            width: SCREEN.0,
            height: SCREEN.1,
            format: ImageFormat::Png,
            data: frames[(n % DISTINCT_FRAMES) as usize].clone().into(),
        };
        if screen.send(&Content::Screen(frame)).await.is_err() {
            return;
        }
        n += 1;
    }
    let _ = screen.finish().await;
}

/// Counters read at the start and the end of a throughput window.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at: Instant,
    bytes: f64,
    frames: f64,
    drawn: f64,
    relay_cpu: f64,
    client_cpu: f64,
    renderer_task: f64,
    renderer_script: f64,
}

fn rates(a: Sample, b: Sample) -> Value {
    let secs = (b.at - a.at).as_secs_f64();
    json!({
        "seconds": secs,
        "mb_per_s": (b.bytes - a.bytes) / secs / 1e6,
        "frames_per_s": (b.frames - a.frames) / secs,
        "drawn_per_s": (b.drawn - a.drawn) / secs,
        "relay_cpu_s": b.relay_cpu - a.relay_cpu,
        "relay_cpu_share": (b.relay_cpu - a.relay_cpu) / secs,
        "client_cpu_s": b.client_cpu - a.client_cpu,
        "client_cpu_share": (b.client_cpu - a.client_cpu) / secs,
        "renderer_main_thread_task_s": b.renderer_task - a.renderer_task,
        "renderer_script_s": b.renderer_script - a.renderer_script,
    })
}

/// The page's counters, the relay's CPU and Chromium's (all its processes), now.
async fn sample_page(page: &mut Browser, relay_pid: u32, browser_pid: u32) -> Sample {
    let counts = page
        .eval("({ ...window.__opened, drawn: Number(document.body.dataset.frames) })")
        .await;
    let metrics = page.call("Performance.getMetrics", json!({})).await;
    let metric = |name: &str| {
        metrics["metrics"]
            .as_array()
            .unwrap()
            .iter()
            .find(|m| m["name"] == name)
            .and_then(|m| m["value"].as_f64())
            .unwrap_or(0.0)
    };
    Sample {
        at: Instant::now(),
        bytes: counts["bytes"].as_f64().unwrap(),
        frames: counts["frames"].as_f64().unwrap(),
        drawn: counts["drawn"].as_f64().unwrap(),
        relay_cpu: cpu_of(relay_pid),
        client_cpu: cpu_of_tree(browser_pid),
        renderer_task: metric("TaskDuration"),
        renderer_script: metric("ScriptDuration"),
    }
}

/// Screen throughput to the page, then to a native helper, `seconds` each.
async fn throughput(relay: &Relay, page: &mut Browser, browser_pid: u32, seconds: u64) -> Value {
    let card = TestCard::new(SCREEN.0, SCREEN.1).unwrap();
    let frames: Arc<Vec<Vec<u8>>> =
        Arc::new((0..DISTINCT_FRAMES).map(|n| frame_png(&card, n)).collect());
    let frame_bytes = frames.iter().map(Vec::len).sum::<usize>() / frames.len();
    let window = Duration::from_secs(seconds);

    // The page.
    let stop = Arc::new(AtomicBool::new(false));
    let sharer = relay.connect(Persona::Sharer, Role::Sharer).await;
    let (_t0, code) = page_creates(page).await;
    let (sharer, channels) = sharer_joins(sharer, code).await;
    let sender = tokio::spawn(stream_frames(channels, frames.clone(), stop.clone()));
    page.wait_until("Number(document.body.dataset.frames) >= 1")
        .await;
    let relay_pid = relay.pid();
    let start = sample_page(page, relay_pid, browser_pid).await;
    tokio::time::sleep(window).await;
    let end = sample_page(page, relay_pid, browser_pid).await;
    let load_browser = loadavg();
    stop.store(true, Ordering::Relaxed);
    page_ends(page).await;
    let _ = sender.await;
    let mut sharer = sharer;
    sharer.wait_for_end().await;
    sharer.close().await;
    let mut browser = rates(start, end);
    browser["loadavg_after"] = load_browser.into();

    // A native helper, receiving and parsing every frame (no decoding into pixels).
    let stop = Arc::new(AtomicBool::new(false));
    let mut helper = relay.connect(Persona::Helper, Role::Helper).await;
    let sharer = relay.connect(Persona::Sharer, Role::Sharer).await;
    let created = helper.create_session(Mode::FullControl).await.unwrap();
    let joined = tokio::spawn(sharer_joins(sharer, created.code));
    helper.wait_for_sharer().await.unwrap();
    let started = helper.wait_for_start().await.unwrap();
    let mut channels = secure::channels(&helper, &started, Role::Helper)
        .await
        .unwrap();
    let (sharer, sharer_channels) = joined.await.unwrap();
    let sender = tokio::spawn(stream_frames(sharer_channels, frames.clone(), stop.clone()));
    let (channel, receiver) = channels.accept_channel().await.unwrap();
    assert_eq!(channel, Channel::Screen);
    let (bytes, count) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let receiving = tokio::spawn({
        let (bytes, count) = (bytes.clone(), count.clone());
        async move {
            let mut receiver = ContentReceiver::new(Channel::Screen, receiver);
            while let Ok(Some(content)) = receiver.recv().await {
                if let Content::Screen(frame) = content {
                    bytes.fetch_add(frame.data.len() as u64, Ordering::Relaxed);
                    count.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    });
    while count.load(Ordering::Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // This process holds the native helper and the sharer: its CPU is both clients'.
    let me = std::process::id();
    let sample_native = || {
        let n = count.load(Ordering::Relaxed) as f64;
        Sample {
            at: Instant::now(),
            bytes: bytes.load(Ordering::Relaxed) as f64,
            frames: n,
            drawn: n,
            relay_cpu: cpu_of(relay_pid),
            client_cpu: cpu_of(me),
            renderer_task: 0.0,
            renderer_script: 0.0,
        }
    };
    let start = sample_native();
    tokio::time::sleep(window).await;
    let end = sample_native();
    let load_native = loadavg();
    stop.store(true, Ordering::Relaxed);
    helper.end_session().await.unwrap();
    let _ = sender.await;
    receiving.abort();
    let mut sharer = sharer;
    sharer.wait_for_end().await;
    sharer.close().await;
    helper.close().await;
    let mut native = rates(start, end);
    native["loadavg_after"] = load_native.into();
    json!({ "frame_bytes": frame_bytes, "browser": browser, "native": native })
}

/// Opens idle WebTransport sessions from the page, each signed in (`Hello` → `Welcome`), in
/// batches, until `k` are open or one fails; returns how many are open and the first
/// failure.
async fn open_idle_in_page(relay: &Relay, page: &mut Browser, k: usize) -> (usize, Option<String>) {
    page.eval(
        "(async () => { window.__relay = await import('/helper/relay.js'); \
         window.__wire = await import('/helper/wire.js'); \
         const c = await (await fetch('config.json', { cache: 'no-store' })).json(); \
         window.__endpoint = { url: c.webtransport_url, hashes: c.server_certificate_hashes.map((h) => \
           ({ algorithm: h.algorithm, value: Uint8Array.from(atob(h.value), (x) => x.charCodeAt(0)) })) }; \
         window.__idle = []; return true; })()",
    )
    .await;
    let token = relay.token(Persona::Helper);
    let mut open = 0;
    while open < k {
        let batch = 20.min(k - open);
        let result = page
            .eval(&format!(
                "(async () => {{ for (let i = 0; i < {batch}; i++) {{ try {{ \
                   const c = await __relay.RelayConnection.connect(__endpoint); \
                   await c.send(__wire.out.hello({{ token: '{token}', role: __wire.Role.HELPER, \
                     clientName: 'browser-bench', suites: [2] }})); \
                   const first = await c.messages().next(); \
                   if (!first.value || first.value.kind !== 'welcome') \
                     return {{ error: 'no Welcome: ' + JSON.stringify(first.value) }}; \
                   __idle.push(c); \
                 }} catch (e) {{ return {{ error: String(e) }}; }} }} return {{}}; }})()"
            ))
            .await;
        open = page.eval("__idle.length").await.as_u64().unwrap() as usize;
        if let Some(error) = result["error"].as_str() {
            return (open, Some(error.to_string()));
        }
    }
    (open, None)
}

/// Relay memory per idle session: `k` signed-in sessions from the page, then `k` native
/// ones; the relay's RSS just before and with all of them open.
async fn idle_memory(page: &mut Browser, k: usize) -> Value {
    // A fresh relay for each side, so neither reuses memory the other (or the earlier
    // parts) left free in the relay's heap; the page is loaded from it (its
    // Content-Security-Policy allows WebTransport to its own relay only).
    let relay = Relay::spawn();
    let pid = relay.pid();
    page.navigate(&format!("http://{}/helper/", relay.admin))
        .await;
    page.wait_until(
        "document.readyState === 'complete' && document.body.dataset.state === 'signed-out'",
    )
    .await;
    let base_connections = connections_open(relay.admin).await;
    let before = rss(pid);
    let (open, error) = open_idle_in_page(&relay, page, k).await;
    wait_for_connections(relay.admin, base_connections + open as f64).await;
    let with = rss(pid);
    let browser = json!({
        "requested": k, "open": open, "first_failure": error,
        "rss_before": before, "rss_with": with,
        "bytes_per_session": (with as f64 - before as f64) / open.max(1) as f64,
    });
    page.eval("__idle.forEach((c) => c.close()); __idle = []; true")
        .await;
    drop(relay);

    let relay = Relay::spawn();
    let pid = relay.pid();
    let base_connections = connections_open(relay.admin).await;
    let before = rss(pid);
    let mut clients = Vec::new();
    for _ in 0..k {
        clients.push(relay.connect(Persona::Helper, Role::Helper).await);
    }
    wait_for_connections(relay.admin, base_connections + k as f64).await;
    let with = rss(pid);
    let native = json!({
        "requested": k, "open": clients.len(),
        "rss_before": before, "rss_with": with,
        "bytes_per_session": (with as f64 - before as f64) / k as f64,
    });
    for client in clients {
        client.close().await;
    }
    json!({ "browser": browser, "native": native })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "a measurement (BENCHMARKS.md), minutes long; run with --ignored --nocapture"]
async fn bench_browser_helper_against_native_helper() {
    let test = "bench_browser_helper_against_native_helper";
    if !have_chromium(test) {
        return;
    }
    let out: PathBuf = artefacts("browser-bench");
    let relay = Relay::spawn();
    let mut page = page(&relay, &out).await;
    let browser_pid = page.pid();
    let load_start = loadavg();

    let setups = setup_times(&relay, &mut page, env_or("BENCH_SETUPS", 30)).await;
    println!("session setup: {setups:#}");
    let load_setup = loadavg();
    let screen = throughput(
        &relay,
        &mut page,
        browser_pid,
        env_or("BENCH_SECONDS", 10) as u64,
    )
    .await;
    println!("screen throughput: {screen:#}");
    let memory = idle_memory(&mut page, env_or("BENCH_IDLE", 300)).await;
    println!("idle memory: {memory:#}");
    let report = json!({
        "loadavg": { "start": load_start, "after_setups": load_setup, "end": loadavg() },
        "setup": setups, "throughput": screen, "idle_memory": memory,
        "chromium": String::from_utf8_lossy(
            &std::process::Command::new("chromium").arg("--version").output().map(|o| o.stdout).unwrap_or_default()
        ).trim().to_string(),
    });
    println!("loadavg: {}", report["loadavg"]);
    std::fs::write(
        out.join("report.json"),
        serde_json::to_string_pretty(&report).unwrap(),
    )
    .unwrap();
    drop(page);
}
