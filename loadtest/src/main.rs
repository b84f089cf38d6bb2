//! `loadtest`: drives many concurrent remote-help sessions (a helper and a sharer each, with
//! real tokens) against a relay, and measures setup latency, input round trip, screen
//! latency, throughput, drops and errors, plus the relay's CPU and memory.
//!
//! It targets only the address it is given (or a relay it starts itself with
//! `--spawn-relay`), and stops by itself: sessions and duration are bounded. The report
//! schema is in `docs/loadtest.md`; the benchmark runs are in `BENCHMARKS.md` and
//! `loadtest/bench.sh`.

mod spawned;
mod workload;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::{Parser, ValueEnum};
use hdrhistogram::Histogram;
use remote_help_relay::server::admin::ProcessUsage;
use remote_help_relay::tls::RelayIdentity as _;
use remote_help_sdk::client::{ClientOptions, Protection};
use remote_help_sdk::e2e::Suite;
use remote_help_sdk::session::Role;
use remote_help_sdk::tls::{Fingerprint, RelayTrust};
use serde::Serialize;

use spawned::{RelayProbe, SpawnedRelay};
use workload::{Path, Recorder, Workload};

/// The suite sessions with `protection` use between two parties that announce the same:
/// the first announced (the helper's order wins), or `None` without protection.
fn protection_suite(protection: &Protection) -> Option<Suite> {
    match protection {
        Protection::EndToEnd(suites) => suites.first().copied(),
        Protection::PlaintextForMeasurement => None,
    }
}

/// Most sessions one run may drive.
const MAX_SESSIONS: usize = 200_000;
/// Longest run.
const MAX_DURATION_SECS: u64 = 3_600;

#[derive(Parser, Debug)]
#[command(
    name = "loadtest",
    version,
    about = "Load generator for remote-help-relay: many concurrent sessions, measured"
)]
struct Args {
    /// Start a relay (the `relay` binary next to this one, or --relay-bin) on a config sized
    /// for the run, and measure it through /proc.
    #[arg(long, conflicts_with = "relay")]
    spawn_relay: bool,
    /// The `relay` binary for --spawn-relay.
    #[arg(long)]
    relay_bin: Option<PathBuf>,
    /// A running relay, HOST:PORT (needs --pin or --ca, and both token files).
    #[arg(long, required_unless_present = "spawn_relay")]
    relay: Option<SocketAddr>,
    /// The relay certificate's SHA-256 fingerprint (hex).
    #[arg(long)]
    pin: Option<String>,
    /// A CA file that signed the relay's certificate.
    #[arg(long)]
    ca: Option<PathBuf>,
    /// File with a helper token (reused by every session's helper).
    #[arg(long)]
    helper_token: Option<PathBuf>,
    /// File with a sharer token of the same tenant.
    #[arg(long)]
    sharer_token: Option<PathBuf>,
    /// Sharers connect here instead of --relay: another node of the same cluster, so that
    /// every join is redirected to the node holding the session (measures a redirect).
    #[arg(long)]
    join_via: Option<SocketAddr>,
    /// With --spawn-relay: start this many relay nodes as one cluster; helpers use node 0,
    /// sharers join through node 1 (each join is redirected). CPU and memory are node 0's.
    #[arg(long, default_value_t = 1)]
    nodes: usize,
    /// With --spawn-relay: the relay's UDP sockets (`limits.udp_sockets`; 0 = one per CPU
    /// it may run on, its default).
    #[arg(long, default_value_t = 0)]
    relay_udp_sockets: usize,
    /// A running relay's process id, to read its CPU and memory from /proc.
    #[arg(long)]
    relay_pid: Option<u32>,
    /// A running relay's admin address, to read its CPU and memory from /metrics.
    #[arg(long)]
    relay_metrics: Option<SocketAddr>,

    /// Concurrent sessions.
    #[arg(long, default_value_t = 10)]
    sessions: usize,
    /// Sessions started per second while ramping up.
    #[arg(long, default_value_t = 100.0)]
    ramp: f64,
    /// Seconds every session keeps its workload going once all are started.
    #[arg(long, default_value_t = 10.0)]
    duration: f64,
    /// Screen bitrate per session, kbit/s; 0 = as fast as flow control allows.
    #[arg(long, default_value_t = 2_000)]
    screen_kbit: u64,
    /// Screen frame size, bytes.
    #[arg(long, default_value_t = 16_384)]
    frame_bytes: usize,
    /// Input events per second per session (echoed back to time the round trip).
    #[arg(long, default_value_t = 50)]
    input_rate: u32,
    /// A chat message per second each way in every session.
    #[arg(long)]
    chat: bool,
    /// No traffic: hold paired sessions for the duration (memory per idle session).
    #[arg(long)]
    idle: bool,
    /// This many sessions get a helper that reads no screen until the end (slow readers).
    #[arg(long, default_value_t = 0)]
    stalled: usize,
    /// Ask for direct peer-to-peer paths (each client gets its own UDP socket); traffic
    /// starts once the attempt is over and goes direct where the path came up.
    #[arg(long)]
    direct_path: bool,
    /// How relayed sessions carry their data: `packet` (the SDK's default: each client's own
    /// QUIC connection to its peer through the relay's packet forwarder; every client gets
    /// its own UDP socket, as the packet path needs) or `stream` (the relay forwards the
    /// channels' streams; clients share --client-sockets endpoints).
    #[arg(long, value_enum, default_value_t = DataPath::Packet)]
    data_path: DataPath,
    /// Measure without end-to-end protection (the clients announce no suite, the relay
    /// sees the content), to compare with the default; a spawned relay's tenant then does
    /// not require protection.
    #[arg(long, conflicts_with = "e2e_suite")]
    no_e2e: bool,
    /// The end-to-end protection suite every session uses (both parties announce only
    /// it); default: the SDK's default announcement, which picks chacha20.
    #[arg(long, value_enum)]
    e2e_suite: Option<E2eSuite>,
    /// Also run the same workload peer to peer without the relay, in the same run.
    #[arg(long, value_enum)]
    baseline: Option<Baseline>,
    /// Client UDP sockets to spread the clients over (0 = one per 64 clients, at most 64).
    #[arg(long, default_value_t = 0)]
    client_sockets: usize,
    /// Write the report as JSON to this file.
    #[arg(long)]
    json: Option<PathBuf>,
    /// No progress bar (logs and CI).
    #[arg(long)]
    no_progress: bool,
}

/// `--data-path`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
enum DataPath {
    Packet,
    Stream,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum E2eSuite {
    /// X25519 + HKDF-SHA256 + ChaCha20-Poly1305 (suite 1).
    Chacha20,
    /// X25519 + HKDF-SHA256 + AES-256-GCM (suite 2).
    Aes256gcm,
}

impl E2eSuite {
    fn suite(self) -> Suite {
        match self {
            E2eSuite::Chacha20 => Suite::X25519ChaCha20Poly1305,
            E2eSuite::Aes256gcm => Suite::X25519Aes256Gcm,
        }
    }
}

#[derive(Debug, Clone, Copy, ValueEnum)]
enum Baseline {
    /// Helper and sharer connect to each other directly over QUIC.
    Direct,
}

/// The whole report (schema: docs/loadtest.md).
#[derive(Debug, Serialize)]
struct Report {
    settings: Settings,
    relayed: RunReport,
    direct: Option<RunReport>,
    /// relayed screen throughput / direct screen throughput.
    throughput_ratio: Option<f64>,
    /// Relay CPU per GB / direct (sender + receiver) CPU per GB.
    cpu_per_byte_ratio: Option<f64>,
}

#[derive(Debug, Serialize)]
struct Settings {
    sessions: usize,
    ramp_per_sec: f64,
    duration_secs: f64,
    screen_kbit: u64,
    frame_bytes: usize,
    input_rate: u32,
    chat: bool,
    idle: bool,
    stalled: usize,
    direct_path: bool,
    /// `packet` or `stream` (`--data-path`).
    data_path: String,
    /// End-to-end protection: the suite's name, or `off` (`--no-e2e`).
    e2e: String,
    relay: String,
    /// Where sharers connected, when not `relay` (each join was redirected).
    join_via: Option<String>,
    /// Relay nodes spawned (1 unless --nodes).
    nodes: usize,
}

#[derive(Debug, Serialize, Default)]
struct RunReport {
    path: &'static str,
    sessions_ok: u64,
    sessions_failed: u64,
    errors: std::collections::BTreeMap<String, u64>,
    wall_secs: f64,
    setup_ms: Latency,
    input_rtt_ms: Latency,
    screen_latency_ms: Latency,
    bytes_received: u64,
    throughput_mbit_s: f64,
    screen_frames: u64,
    frames_dropped: u64,
    input_round_trips: u64,
    /// Sessions whose direct path came up (`--direct-path`).
    direct_paths: u64,
    /// Consent to direct path, for those sessions.
    direct_path_setup_ms: Latency,
    /// CPU seconds this loadtest process (both parties) used during the run.
    clients_cpu_secs: f64,
    clients_cpu_secs_per_gb: Option<f64>,
    relay: Option<RelayCost>,
}

#[derive(Debug, Serialize, Default)]
struct Latency {
    count: u64,
    p50: f64,
    p90: f64,
    p99: f64,
    p999: f64,
    max: f64,
}

impl Latency {
    fn of(h: &Histogram<u64>) -> Latency {
        let ms = |us: u64| us as f64 / 1000.0;
        Latency {
            count: h.len(),
            p50: ms(h.value_at_quantile(0.5)),
            p90: ms(h.value_at_quantile(0.9)),
            p99: ms(h.value_at_quantile(0.99)),
            p999: ms(h.value_at_quantile(0.999)),
            max: ms(h.max()),
        }
    }
}

#[derive(Debug, Serialize)]
struct RelayCost {
    cpu_secs: f64,
    cpu_secs_per_gb: Option<f64>,
    rss_before_bytes: u64,
    rss_loaded_bytes: u64,
    rss_after_bytes: u64,
    /// (RSS with every session up − RSS before) / sessions.
    bytes_per_session: f64,
}

fn main() -> std::process::ExitCode {
    remote_help_relay::logging::init(false, "warn");
    let args = Args::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(r) => r,
        Err(e) => {
            eprintln!("loadtest: cannot start the runtime: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    // Interrupted (Ctrl-C, or SIGTERM from `timeout` or a job runner): dropping the run
    // stops the relay it spawned, which would otherwise outlive it.
    let outcome = runtime.block_on(async {
        let run = run(args);
        tokio::pin!(run);
        tokio::select! {
            outcome = &mut run => Some(outcome),
            () = interrupted() => {
                eprintln!("loadtest: interrupted; stopping the relay it spawned (interrupt again to exit at once)");
                // Dropping the run below waits for the relay to drain and exit; the
                // runtime's workers stay free to watch for a second interrupt.
                tokio::spawn(async {
                    interrupted().await;
                    eprintln!("loadtest: interrupted again; exiting without waiting");
                    std::process::exit(130);
                });
                None
            }
        }
    });
    let Some(outcome) = outcome else {
        eprintln!("loadtest: stopped");
        return std::process::ExitCode::from(130);
    };
    match outcome {
        Ok(0) => std::process::ExitCode::SUCCESS,
        Ok(failed) => {
            eprintln!("loadtest: {failed} sessions failed");
            std::process::ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("loadtest: {e:#}");
            std::process::ExitCode::from(2)
        }
    }
}

/// Resolves at SIGINT or SIGTERM (never, where they cannot be watched).
async fn interrupted() {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        if let (Ok(mut int), Ok(mut term)) = (
            signal(SignalKind::interrupt()),
            signal(SignalKind::terminate()),
        ) {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            return;
        }
    }
    std::future::pending::<()>().await
}

/// Returns the number of failed sessions.
async fn run(args: Args) -> Result<u64> {
    if args.sessions == 0 || args.sessions > MAX_SESSIONS {
        bail!("--sessions must be 1..={MAX_SESSIONS}");
    }
    if !(args.duration >= 0.0 && args.duration <= MAX_DURATION_SECS as f64) {
        bail!("--duration must be 0..={MAX_DURATION_SECS} seconds");
    }
    // The ramp, like the duration, must end: NaN, infinity and rates so low that starting
    // the sessions alone would outlast the time bound are refused.
    if !(args.ramp.is_finite()
        && args.ramp > 0.0
        && args.sessions as f64 / args.ramp <= MAX_DURATION_SECS as f64)
    {
        bail!("--ramp must be positive, and start --sessions within {MAX_DURATION_SECS} seconds");
    }
    let Some(screen_bits_per_sec) = args.screen_kbit.checked_mul(1000) else {
        bail!("--screen-kbit is too large");
    };
    if args.frame_bytes > remote_help_sdk::client::MAX_DATA_FRAME {
        bail!(
            "--frame-bytes must be at most {} (the SDK's largest data frame)",
            remote_help_sdk::client::MAX_DATA_FRAME
        );
    }
    let protection = match (args.no_e2e, args.e2e_suite) {
        (true, _) => Protection::PlaintextForMeasurement,
        (false, Some(suite)) => Protection::EndToEnd(vec![suite.suite()]),
        (false, None) => Protection::default(),
    };
    let workload = Workload {
        screen_bits_per_sec,
        frame_bytes: args.frame_bytes.max(17),
        input_per_sec: args.input_rate,
        chat: args.chat,
        idle: args.idle,
        stalled_sessions: args.stalled,
        direct_path: args.direct_path,
        packet_path: args.data_path == DataPath::Packet,
        e2e: protection_suite(&protection),
    };

    // With --spawn-relay the guard keeps the relay running until the report is written.
    let mut spawned_relay: Option<SpawnedRelay> = None;
    let mut other_nodes: Vec<SpawnedRelay> = Vec::new();
    let mut join_via = args.join_via;
    if !(1..=32).contains(&args.nodes) || (args.nodes > 1 && !args.spawn_relay) {
        bail!("--nodes is 1 to 32, and only with --spawn-relay");
    }
    let (addr, trust, helper_token, sharer_token, probe) = if args.spawn_relay {
        let bin = match &args.relay_bin {
            Some(b) => b.clone(),
            None => std::env::current_exe()?.with_file_name("relay"),
        };
        // Starting waits (polls readiness) synchronously: keep it off the async workers.
        let nodes = args.nodes;
        let sizing = spawned::Sizing {
            sessions: args.sessions,
            udp_sockets: args.relay_udp_sockets,
            require_end_to_end: !args.no_e2e,
        };
        let started = tokio::task::spawn_blocking(move || {
            if nodes == 1 {
                SpawnedRelay::start(&bin, sizing).map(|r| vec![r])
            } else {
                SpawnedRelay::start_cluster(&bin, sizing, nodes)
            }
        })
        .await
        .context("relay start task")??;
        let mut started = started.into_iter();
        let first = started.next().context("no relay started")?;
        other_nodes.extend(started);
        if let Some(second) = other_nodes.first() {
            join_via = join_via.or(Some(second.addr));
        }
        let relay = spawned_relay.insert(first);
        eprintln!(
            "loadtest: spawned relay pid {} on {} (state in {})",
            relay.pid(),
            relay.addr,
            relay.state_dir().display()
        );
        (
            relay.addr,
            RelayTrust::Pin(relay.fingerprint),
            relay.helper_token.clone(),
            relay.sharer_token.clone(),
            RelayProbe::Pid(relay.pid()),
        )
    } else {
        let addr = args.relay.context("--relay")?;
        let trust = match (&args.pin, &args.ca) {
            (Some(pin), _) => RelayTrust::Pin(Fingerprint::parse(pin).context("--pin")?),
            (None, Some(ca)) => RelayTrust::ca_file(ca)?,
            (None, None) => bail!("--pin or --ca is needed with --relay"),
        };
        let read = |p: &Option<PathBuf>, what: &str| -> Result<String> {
            let p = p
                .as_ref()
                .with_context(|| format!("{what} is needed with --relay"))?;
            Ok(std::fs::read_to_string(p)
                .with_context(|| p.display().to_string())?
                .trim()
                .to_string())
        };
        let probe = match (args.relay_pid, args.relay_metrics) {
            (Some(pid), _) => RelayProbe::Pid(pid),
            (None, Some(m)) => RelayProbe::Metrics(m),
            (None, None) => RelayProbe::None,
        };
        (
            addr,
            trust,
            read(&args.helper_token, "--helper-token")?,
            read(&args.sharer_token, "--sharer-token")?,
            probe,
        )
    };

    let settings = Settings {
        sessions: args.sessions,
        ramp_per_sec: args.ramp,
        duration_secs: args.duration,
        screen_kbit: args.screen_kbit,
        frame_bytes: workload.frame_bytes,
        input_rate: args.input_rate,
        chat: args.chat,
        idle: args.idle,
        stalled: args.stalled,
        direct_path: args.direct_path,
        data_path: format!("{:?}", args.data_path).to_lowercase(),
        e2e: if args.data_path == DataPath::Packet {
            // The peer connection's TLS, whatever the suite (which only the direct
            // baseline then uses).
            "peer-tls13".to_string()
        } else {
            workload
                .e2e
                .map_or_else(|| "off".to_string(), |s| s.as_str().to_string())
        },
        relay: addr.to_string(),
        join_via: join_via.map(|a| a.to_string()),
        nodes: args.nodes,
    };
    let sockets = if args.client_sockets > 0 {
        args.client_sockets
    } else {
        (args.sessions * 2).div_ceil(64).clamp(1, 64)
    };
    let mut helper = ClientOptions::new(addr, trust.clone(), helper_token, Role::Helper);
    let mut sharer =
        ClientOptions::new(join_via.unwrap_or(addr), trust, sharer_token, Role::Sharer);
    helper.protection = protection.clone();
    sharer.protection = protection;
    let endpoints = client_endpoints(sockets)?;
    let relayed = run_phase("relayed", &args, workload, &probe, |i| Path::Relayed {
        helper: Box::new(helper.clone()),
        sharer: Box::new(sharer.clone()),
        helper_endpoint: endpoints[(2 * i) % endpoints.len()].clone(),
        sharer_endpoint: endpoints[(2 * i + 1) % endpoints.len()].clone(),
    })
    .await?;
    let direct = match args.baseline {
        None => None,
        Some(Baseline::Direct) => {
            // As many UDP sockets as the relayed clients had (half of them listening), so
            // that neither side of the comparison funnels through fewer endpoints.
            let pairs = (0..sockets.div_ceil(2))
                .map(|_| {
                    let (sharer_endpoint, sharer_addr, helper_endpoint) = direct_endpoints()?;
                    let sharers = workload::DirectAcceptor::start(sharer_endpoint);
                    Ok((sharers, sharer_addr, helper_endpoint))
                })
                .collect::<Result<Vec<_>>>()?;
            Some(
                run_phase("direct", &args, workload, &RelayProbe::None, |i| {
                    let (sharers, sharer_addr, helper_endpoint) = &pairs[i % pairs.len()];
                    Path::Direct {
                        sharers: sharers.clone(),
                        sharer_addr: *sharer_addr,
                        helper_endpoint: helper_endpoint.clone(),
                    }
                })
                .await?,
            )
        }
    };
    let throughput_ratio = direct
        .as_ref()
        .filter(|d| d.throughput_mbit_s > 0.0)
        .map(|d| relayed.throughput_mbit_s / d.throughput_mbit_s);
    let cpu_per_byte_ratio = match (&relayed.relay, &direct) {
        (
            Some(RelayCost {
                cpu_secs_per_gb: Some(relay),
                ..
            }),
            Some(d),
        ) => d
            .clients_cpu_secs_per_gb
            .filter(|c| *c > 0.0)
            .map(|c| relay / c),
        _ => None,
    };
    let failed = relayed.sessions_failed + direct.as_ref().map_or(0, |d| d.sessions_failed);
    let report = Report {
        settings,
        relayed,
        direct,
        throughput_ratio,
        cpu_per_byte_ratio,
    };
    print_summary(&report);
    if let Some(path) = &args.json {
        std::fs::write(path, serde_json::to_string_pretty(&report)?)
            .with_context(|| path.display().to_string())?;
    }
    // Stopping waits for the relay to drain and exit: off the async workers too.
    if let Some(relay) = spawned_relay {
        let _ = tokio::task::spawn_blocking(move || {
            drop(relay);
            drop(other_nodes);
        })
        .await;
    }
    Ok(failed)
}

async fn run_phase(
    name: &'static str,
    args: &Args,
    workload: Workload,
    probe: &RelayProbe,
    path_for: impl Fn(usize) -> Path,
) -> Result<RunReport> {
    let rec = Arc::new(Recorder::new());
    let ramp_secs = args.sessions as f64 / args.ramp;
    let started = Instant::now();
    // Every session keeps going until `until`: the ramp, then the steady duration.
    let until = started + Duration::from_secs_f64(ramp_secs + args.duration);
    let relay_before = probe.usage().await;
    let clients_before = ProcessUsage::of_self();
    let bar = progress(args, name);
    let mut sessions = tokio::task::JoinSet::new();
    let interval = Duration::from_secs_f64(1.0 / args.ramp);
    let mut next = tokio::time::Instant::now();
    let mut last_tick = Instant::now();
    let mut last_bytes = 0u64;
    for i in 0..args.sessions {
        tokio::time::sleep_until(next).await;
        next += interval;
        sessions.spawn(workload::session(
            i,
            path_for(i),
            workload,
            until,
            rec.clone(),
        ));
        if last_tick.elapsed() >= Duration::from_millis(500) {
            last_bytes = tick(&bar, &rec, &mut last_tick, last_bytes);
        }
    }
    // Memory with every session up: sample once they all are (or the ramp is long over).
    let loaded_at = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut relay_loaded = None;
    let mut ticker = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            joined = sessions.join_next() => {
                if joined.is_none() { break; }
            }
            _ = ticker.tick() => {
                last_bytes = tick(&bar, &rec, &mut last_tick, last_bytes);
                let all_up = rec.live.up.load(Ordering::Relaxed) + rec.live.failed.load(Ordering::Relaxed)
                    >= args.sessions as u64;
                if relay_loaded.is_none() && (all_up || tokio::time::Instant::now() > loaded_at) {
                    relay_loaded = probe.usage().await;
                }
            }
        }
    }
    let wall = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    let relay_after = probe.usage().await;
    let clients_after = ProcessUsage::of_self();
    let bytes = rec.live.bytes.load(Ordering::Relaxed);
    let gb = bytes as f64 / 1e9;
    let per_gb = |cpu: f64| (gb > 0.0).then(|| cpu / gb);
    let clients_cpu = match (clients_before, clients_after) {
        (Some(b), Some(a)) => a.cpu_seconds - b.cpu_seconds,
        _ => 0.0,
    };
    let relay = match (relay_before, relay_after) {
        (Some(before), Some(after)) => {
            let loaded = relay_loaded.unwrap_or(after);
            Some(RelayCost {
                cpu_secs: after.cpu_seconds - before.cpu_seconds,
                cpu_secs_per_gb: per_gb(after.cpu_seconds - before.cpu_seconds),
                rss_before_bytes: before.resident_bytes,
                rss_loaded_bytes: loaded.resident_bytes,
                rss_after_bytes: after.resident_bytes,
                bytes_per_session: (loaded.resident_bytes as f64 - before.resident_bytes as f64)
                    / args.sessions as f64,
            })
        }
        _ => None,
    };
    let errors = rec.errors.lock().map(|e| e.clone()).unwrap_or_default();
    let latency = |h: &std::sync::Mutex<Histogram<u64>>| {
        h.lock().map(|h| Latency::of(&h)).unwrap_or_default()
    };
    Ok(RunReport {
        path: name,
        sessions_ok: rec.live.done.load(Ordering::Relaxed),
        sessions_failed: rec.live.failed.load(Ordering::Relaxed),
        errors,
        wall_secs: wall,
        setup_ms: latency(&rec.setup),
        input_rtt_ms: latency(&rec.input_rtt),
        screen_latency_ms: latency(&rec.screen),
        bytes_received: bytes,
        // Over the whole run including the ramp: an honest lower bound for steady state.
        throughput_mbit_s: bytes as f64 * 8.0 / 1e6 / wall.max(f64::MIN_POSITIVE),
        screen_frames: rec.live.frames.load(Ordering::Relaxed),
        frames_dropped: rec.live.frames_dropped.load(Ordering::Relaxed),
        input_round_trips: rec.live.input_round_trips.load(Ordering::Relaxed),
        direct_paths: rec.live.direct_paths.load(Ordering::Relaxed),
        direct_path_setup_ms: latency(&rec.direct_setup),
        clients_cpu_secs: clients_cpu,
        clients_cpu_secs_per_gb: per_gb(clients_cpu),
        relay,
    })
}

fn progress(args: &Args, name: &str) -> indicatif::ProgressBar {
    if args.no_progress {
        return indicatif::ProgressBar::hidden();
    }
    let bar = indicatif::ProgressBar::new(args.sessions as u64);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{prefix:>8} [{elapsed_precise}] {bar:30} {pos}/{len} sessions up  {msg}",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_prefix(name.to_string());
    bar
}

/// Updates the bar with live rates; returns the byte count for the next delta.
fn tick(bar: &indicatif::ProgressBar, rec: &Recorder, last: &mut Instant, last_bytes: u64) -> u64 {
    let live = &rec.live;
    let bytes = live.bytes.load(Ordering::Relaxed);
    let secs = last.elapsed().as_secs_f64().max(1e-3);
    *last = Instant::now();
    bar.set_position(live.up.load(Ordering::Relaxed));
    bar.set_message(format!(
        "{:.1} Mbit/s  {} input RTTs  {} frames ({} dropped)  {} done  {} failed",
        (bytes - last_bytes) as f64 * 8.0 / 1e6 / secs,
        live.input_round_trips.load(Ordering::Relaxed),
        live.frames.load(Ordering::Relaxed),
        live.frames_dropped.load(Ordering::Relaxed),
        live.done.load(Ordering::Relaxed),
        live.failed.load(Ordering::Relaxed),
    ));
    bytes
}

fn print_summary(report: &Report) {
    let s = &report.settings;
    println!(
        "\n{} sessions against {} on the {} path (ramp {}/s, {} s steady, screen {} kbit/s in {} B frames, input {}/s, chat {}, idle {})",
        s.sessions,
        s.relay,
        s.data_path,
        s.ramp_per_sec,
        s.duration_secs,
        s.screen_kbit,
        s.frame_bytes,
        s.input_rate,
        s.chat,
        s.idle
    );
    for run in std::iter::once(&report.relayed).chain(report.direct.as_ref()) {
        println!(
            "\n[{}] {} ok, {} failed, {:.1} s; {:.1} Mbit/s received; {} frames ({} dropped); {} input round trips",
            run.path,
            run.sessions_ok,
            run.sessions_failed,
            run.wall_secs,
            run.throughput_mbit_s,
            run.screen_frames,
            run.frames_dropped,
            run.input_round_trips
        );
        println!(
            "  {:<18} {:>8} {:>9} {:>9} {:>9} {:>9} {:>9}",
            "latency (ms)", "count", "p50", "p90", "p99", "p99.9", "max"
        );
        for (label, l) in [
            ("setup", &run.setup_ms),
            ("input round trip", &run.input_rtt_ms),
            ("screen frame", &run.screen_latency_ms),
            ("to direct path", &run.direct_path_setup_ms),
        ] {
            if l.count == 0 && label == "to direct path" {
                continue;
            }
            println!(
                "  {:<18} {:>8} {:>9.3} {:>9.3} {:>9.3} {:>9.3} {:>9.3}",
                label, l.count, l.p50, l.p90, l.p99, l.p999, l.max
            );
        }
        if !run.errors.is_empty() {
            println!("  errors: {:?}", run.errors);
        }
        if s.direct_path && run.path == "relayed" {
            println!(
                "  direct paths: {} of {} sessions (the rest relayed)",
                run.direct_paths,
                run.sessions_ok + run.sessions_failed
            );
        }
        println!(
            "  clients CPU {:.2} s{}",
            run.clients_cpu_secs,
            run.clients_cpu_secs_per_gb
                .map(|c| format!(" ({c:.2} s/GB)"))
                .unwrap_or_default()
        );
        if let Some(r) = &run.relay {
            println!(
                "  relay CPU {:.2} s{}; RSS {:.1} MiB before, {:.1} MiB loaded, {:.1} MiB after; {:.1} KiB per session",
                r.cpu_secs,
                r.cpu_secs_per_gb
                    .map(|c| format!(" ({c:.2} s/GB)"))
                    .unwrap_or_default(),
                r.rss_before_bytes as f64 / 1048576.0,
                r.rss_loaded_bytes as f64 / 1048576.0,
                r.rss_after_bytes as f64 / 1048576.0,
                r.bytes_per_session / 1024.0
            );
        }
    }
    if let Some(ratio) = report.throughput_ratio {
        println!("\nrelayed / direct throughput: {ratio:.2}");
    }
    if let Some(ratio) = report.cpu_per_byte_ratio {
        println!("relay CPU per byte / direct clients' CPU per byte: {ratio:.2}");
    }
}

/// Client endpoints (UDP sockets) that the sessions' clients share.
/// Each gets large kernel buffers: hundreds of clients' handshakes arrive in bursts.
fn client_endpoints(count: usize) -> Result<Vec<quinn::Endpoint>> {
    let runtime = quinn::default_runtime().context("no async runtime")?;
    (0..count)
        .map(|_| {
            let (socket, _) = remote_help_relay::transport::udp_socket(
                "127.0.0.1:0".parse().context("address")?,
                8 << 20,
            )
            .context("client socket")?;
            quinn::Endpoint::new(
                quinn::EndpointConfig::default(),
                None,
                socket,
                runtime.clone(),
            )
            .context("client endpoint")
        })
        .collect()
}

/// The direct baseline's endpoints: the sharer listens with a self-signed certificate, the
/// helper pins it. Same windows as the SDK's client transport.
fn direct_endpoints() -> Result<(quinn::Endpoint, SocketAddr, quinn::Endpoint)> {
    let identity = remote_help_relay::tls::ServerIdentity::self_signed(vec!["localhost".into()])?;
    let settings = remote_help_sdk::transport::ClientTransport::default();
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(identity.quic_server_config()?));
    server.transport_config(remote_help_sdk::transport::client(&settings));
    let sharer = quinn::Endpoint::server(server, "127.0.0.1:0".parse().context("address")?)?;
    let sharer_addr = sharer.local_addr()?;
    let mut helper = quinn::Endpoint::client("127.0.0.1:0".parse().context("address")?)?;
    let mut client = quinn::ClientConfig::new(Arc::new(
        RelayTrust::Pin(identity.fingerprint()).quic_client_config()?,
    ));
    client.transport_config(remote_help_sdk::transport::client(&settings));
    helper.set_default_client_config(client);
    Ok((sharer, sharer_addr, helper))
}
