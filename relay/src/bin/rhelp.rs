//! `rhelp`: the reference remote-help client.
//!
//! - `rhelp probe`: the operator's smoke test: a whole measured session, both parties in
//!   this process; exit 0 and figures on success, the error code on failure.
//! - `rhelp helper`: create a session, print its code, view the (synthetic) screen and send
//!   input events.
//! - `rhelp share`: join by code, consent, and stream a synthetic screen.
//!
//! Every session is protected end to end (PROTOCOL.md §8.7); `rhelp helper` and `rhelp
//! share` print the verification code the two people compare. Only `rhelp probe --no-e2e`
//! runs without, to measure what protection costs.

use std::net::{SocketAddr, ToSocketAddrs};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use bytes::Bytes;
use clap::{Args, Parser, Subcommand, ValueEnum};
use remote_help_relay::client::secure::{self, Receiver};
use remote_help_relay::client::{Client, ClientError, ClientOptions, DirectOutcome, Protection};
use remote_help_relay::core::{Channel, Mode, Role};
use remote_help_relay::e2e::Suite;
use remote_help_relay::probe::{self, ProbeSettings};
use remote_help_relay::tls::{Fingerprint, RelayTrust};

#[derive(Parser)]
#[command(name = "rhelp", version, about = "Remote-help reference client")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Args, Clone)]
struct RelayArgs {
    /// The relay, HOST:PORT.
    #[arg(long)]
    relay: String,
    /// Trust the relay's certificate if a CA in this PEM file signed it.
    #[arg(long, conflicts_with = "pin", required_unless_present = "pin")]
    ca: Option<PathBuf>,
    /// Trust exactly the relay certificate with this SHA-256 fingerprint (hex).
    #[arg(long)]
    pin: Option<String>,
    /// Name the relay's certificate must carry (with --ca).
    #[arg(long, default_value = "localhost")]
    server_name: String,
}

/// A relay and a token for each party: the tools that play both sides in one process.
#[derive(Args, Clone)]
struct BothParties {
    #[command(flatten)]
    relay: RelayArgs,
    /// File with the helper's token.
    #[arg(long)]
    helper_token: PathBuf,
    /// File with the sharer's token.
    #[arg(long)]
    sharer_token: PathBuf,
}

impl BothParties {
    /// Client options for the helper and for the sharer.
    fn options(&self) -> Result<(ClientOptions, ClientOptions), Failure> {
        Ok((
            options(&self.relay, &self.helper_token, Role::Helper)?,
            options(&self.relay, &self.sharer_token, Role::Sharer)?,
        ))
    }
}

#[derive(Subcommand)]
enum Command {
    /// Run a whole session against a relay and report setup time, input round trip and throughput.
    Probe {
        #[command(flatten)]
        parties: BothParties,
        /// Megabytes of screen data to stream for the throughput figure.
        #[arg(long, default_value_t = 64)]
        screen_mb: usize,
        /// Input round trips to time.
        #[arg(long, default_value_t = 200)]
        round_trips: usize,
        /// Print one JSON object instead of text.
        #[arg(long)]
        json: bool,
        /// Measure without end-to-end protection (both parties announce no suite; the relay
        /// sees the content). Only for comparisons, against a tenant that does not require
        /// protection.
        #[arg(long)]
        no_e2e: bool,
    },
    /// Measure end-to-end protection: seal/open speed on one core, and screen throughput
    /// through the relay without and with it.
    E2eBench {
        #[command(flatten)]
        parties: BothParties,
        /// Megabytes of screen data per measurement.
        #[arg(long, default_value_t = 256)]
        screen_mb: usize,
        /// The suite to measure (both parties announce only it): chacha20 or aes256gcm;
        /// default: the SDK's default announcement (chacha20).
        #[arg(long, value_parser = parse_suite)]
        e2e_suite: Option<Suite>,
    },
    /// Attack a relay with hostile clients (malformed frames, garbage, forged tokens, wrong
    /// order, stream and connection floods, code guessing), then check an honest session
    /// still works. Exits 1 if the relay answered anything unexpectedly. Only ever point it
    /// at a relay you run.
    Hostile {
        #[command(flatten)]
        parties: BothParties,
        /// Times each attack is repeated.
        #[arg(long, default_value_t = 1)]
        rounds: u32,
        /// Data streams per stream flood.
        #[arg(long, default_value_t = 64)]
        streams: u32,
        /// Simultaneous silent connections per connection flood.
        #[arg(long, default_value_t = 32)]
        connections: u32,
        /// Codes guessed per round.
        #[arg(long, default_value_t = 12)]
        guesses: u32,
    },
    /// Offer help: create a session, print the code, view the screen, send input.
    Helper {
        #[command(flatten)]
        relay: RelayArgs,
        /// File with the helper's token.
        #[arg(long)]
        token: PathBuf,
        /// What to ask for.
        #[arg(long, value_enum, default_value_t = ModeArg::FullControl)]
        mode: ModeArg,
        /// Seconds to stay in the session once it starts.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Take a direct peer-to-peer path when the sharer can too and the NATs allow it.
        #[arg(long)]
        direct: bool,
    },
    /// Share this (synthetic) screen with a helper who gave you a code.
    Share {
        #[command(flatten)]
        relay: RelayArgs,
        /// File with the sharer's token.
        #[arg(long)]
        token: PathBuf,
        /// The session code the helper read to you.
        #[arg(long)]
        code: String,
        /// Consent without asking.
        #[arg(long)]
        yes: bool,
        /// Synthetic screen frames per second.
        #[arg(long, default_value_t = 10)]
        fps: u32,
        /// Take a direct peer-to-peer path when the helper can too and the NATs allow it.
        #[arg(long)]
        direct: bool,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum ModeArg {
    ViewOnly,
    FullControl,
}

fn main() -> ExitCode {
    remote_help_relay::logging::init(false, "warn");
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Runtime::new() {
        Ok(r) => r,
        Err(e) => {
            eprintln!("rhelp: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    runtime.block_on(async move {
        match cli.command {
            Command::Probe {
                parties,
                screen_mb,
                round_trips,
                json,
                no_e2e,
            } => probe_command(&parties, screen_mb, round_trips, json, no_e2e).await,
            Command::Helper {
                relay,
                token,
                mode,
                seconds,
                direct,
            } => report(helper_command(relay, &token, mode, seconds, direct).await),
            Command::E2eBench {
                parties,
                screen_mb,
                e2e_suite,
            } => report(
                async {
                    let (mut helper, mut sharer) = parties.options()?;
                    if let Some(suite) = e2e_suite {
                        helper.protection = Protection::EndToEnd(vec![suite]);
                        sharer.protection = Protection::EndToEnd(vec![suite]);
                    }
                    let r = probe::e2e_bench(helper, sharer, screen_mb.max(1) * 1024 * 1024).await?;
                    println!("{}", serde_json::to_string(&r).unwrap_or_default());
                    println!(
                        "seal {:.0} MB/s, open {:.0} MB/s (one core); through the relay: plain {:.0} Mbit/s, sealed {:.0} Mbit/s ({:.0}%); codes match: {}",
                        r.seal_mb_s, r.open_mb_s, r.plain_mbit_s, r.sealed_mbit_s,
                        100.0 * r.sealed_mbit_s / r.plain_mbit_s.max(f64::MIN_POSITIVE), r.codes_match
                    );
                    Ok(())
                }
                .await,
            ),
            Command::Share {
                relay,
                token,
                code,
                yes,
                fps,
                direct,
            } => report(share_command(relay, &token, &code, yes, fps, direct).await),
            Command::Hostile {
                parties,
                rounds,
                streams,
                connections,
                guesses,
            } => report(
                hostile_command(
                    &parties,
                    remote_help_relay::hostile::Campaign {
                        rounds,
                        streams_per_flood: streams,
                        connections_per_flood: connections,
                        guesses,
                    },
                )
                .await,
            ),
        }
    })
}

/// A failure with the stable code, if there is one.
struct Failure {
    code: Option<String>,
    message: String,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Failure {
        Failure {
            code: e.code().map(|c| c.as_str_name().to_string()),
            message: e.to_string(),
        }
    }
}

impl Failure {
    fn usage(message: String) -> Failure {
        Failure {
            code: None,
            message,
        }
    }
}

fn report(result: Result<(), Failure>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(f) => {
            match f.code {
                Some(code) => eprintln!("rhelp: {code}: {}", f.message),
                None => eprintln!("rhelp: {}", f.message),
            }
            ExitCode::FAILURE
        }
    }
}

fn options(relay: &RelayArgs, token_file: &Path, role: Role) -> Result<ClientOptions, Failure> {
    let addr: SocketAddr = relay
        .relay
        .to_socket_addrs()
        .map_err(|e| Failure::usage(format!("--relay {}: {e}", relay.relay)))?
        .next()
        .ok_or_else(|| Failure::usage(format!("--relay {}: no address", relay.relay)))?;
    let trust = match (&relay.ca, &relay.pin) {
        (Some(ca), _) => RelayTrust::ca_file(ca).map_err(|e| Failure::usage(e.to_string()))?,
        (None, Some(pin)) => RelayTrust::Pin(
            Fingerprint::parse(pin)
                .ok_or_else(|| Failure::usage("--pin must be 64 hex digits (SHA-256)".into()))?,
        ),
        (None, None) => return Err(Failure::usage("give --ca or --pin".into())),
    };
    let token = std::fs::read_to_string(token_file)
        .map_err(|e| Failure::usage(format!("{}: {e}", token_file.display())))?
        .trim()
        .to_string();
    let mut options = ClientOptions::new(addr, trust, token, role);
    options.server_name = relay.server_name.clone();
    options.client_name = format!("rhelp/{}", env!("CARGO_PKG_VERSION"));
    Ok(options)
}

async fn probe_command(
    parties: &BothParties,
    screen_mb: usize,
    round_trips: usize,
    json: bool,
    no_e2e: bool,
) -> ExitCode {
    let settings = ProbeSettings {
        round_trips: round_trips.max(1),
        screen_bytes: screen_mb.max(1) * 1024 * 1024,
        frame_size: 64 * 1024,
    };
    let result = async {
        let (mut helper, mut sharer) = parties.options()?;
        if no_e2e {
            helper = helper.insecure_plaintext_for_measurement();
            sharer = sharer.insecure_plaintext_for_measurement();
        }
        probe::run(helper, sharer, settings, |step| {
            if !json {
                println!("  {step}");
            }
        })
        .await
        .map_err(Failure::from)
    }
    .await;
    match result {
        Ok(r) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": true, "error_code": null, "setup_ms": r.setup_ms,
                        "input_rtt_p50_ms": r.input_rtt_p50_ms, "input_rtt_p99_ms": r.input_rtt_p99_ms,
                        "input_rtt_max_ms": r.input_rtt_max_ms, "screen_bytes": r.screen_bytes,
                        "throughput_mbit_s": r.throughput_mbit_s, "e2e": r.e2e,
                    })
                );
            } else {
                println!("probe OK");
                println!("  setup time         {:>10.2} ms", r.setup_ms);
                println!(
                    "  input round trip   {:>10.3} ms p50, {:.3} ms p99, {:.3} ms max",
                    r.input_rtt_p50_ms, r.input_rtt_p99_ms, r.input_rtt_max_ms
                );
                println!("  screen throughput  {:>10.1} Mbit/s", r.throughput_mbit_s);
                println!("  end-to-end         {:>10}", r.e2e);
            }
            ExitCode::SUCCESS
        }
        Err(f) => {
            if json {
                println!(
                    "{}",
                    serde_json::json!({
                        "ok": false, "error_code": f.code, "message": f.message,
                    })
                );
            } else {
                eprintln!(
                    "probe FAILED: {}{}",
                    f.code.map(|c| format!("{c}: ")).unwrap_or_default(),
                    f.message
                );
            }
            ExitCode::FAILURE
        }
    }
}

async fn hostile_command(
    parties: &BothParties,
    campaign: remote_help_relay::hostile::Campaign,
) -> Result<(), Failure> {
    let (helper, sharer) = parties.options()?;
    let target = remote_help_relay::hostile::Target {
        helper_token: helper.token.clone(),
        sharer_token: sharer.token,
        options: helper,
    };
    let started = std::time::Instant::now();
    let reports = remote_help_relay::hostile::run(&target, campaign).await;
    let mut findings = 0usize;
    for r in &reports {
        println!(
            "{:<22} inputs {:>6}  as expected {:>6}  findings {}",
            r.attack,
            r.inputs,
            r.as_expected,
            r.findings.len()
        );
        for f in &r.findings {
            println!("    {f}");
        }
        findings += r.findings.len();
    }
    let inputs: u64 = reports.iter().map(|r| r.inputs).sum();
    println!(
        "{inputs} hostile inputs in {:.1} s, {findings} findings",
        started.elapsed().as_secs_f64()
    );
    println!("{}", serde_json::to_string(&reports).unwrap_or_default());
    if findings > 0 {
        return Err(Failure::usage(format!("{findings} unexpected answers")));
    }
    Ok(())
}

/// Says which way the session's data goes, once the direct attempt (if any) is over
/// (at most a few seconds; data flows through the relay meanwhile).
async fn say_path(client: &Client) {
    match client.direct_outcome().await {
        DirectOutcome::NotOffered => {}
        DirectOutcome::Direct { peer, took } => println!(
            "Direct path to {peer} up after {:.0} ms; the relay now carries only the session's control.",
            took.as_secs_f64() * 1000.0
        ),
        DirectOutcome::Relayed(why) => println!("No direct path ({why}); staying on the relay."),
    }
}

async fn helper_command(
    relay: RelayArgs,
    token: &Path,
    mode: ModeArg,
    seconds: u64,
    direct: bool,
) -> Result<(), Failure> {
    let mode = match mode {
        ModeArg::ViewOnly => Mode::ViewOnly,
        ModeArg::FullControl => Mode::FullControl,
    };
    let mut options = options(&relay, token, Role::Helper)?;
    options.direct_path = direct;
    let mut client = Client::connect(options).await?;
    let created = client.create_session(mode).await?;
    println!(
        "Session code: {}   (read it to the person you are helping)",
        created.code
    );
    let sharer = client.wait_for_sharer().await?;
    println!(
        "{} {} joined{}; waiting for their consent...",
        sharer.given_name,
        sharer.family_name,
        sharer
            .device
            .as_ref()
            .map(|d| format!(" from {} ({})", d.device_name, d.platform))
            .unwrap_or_default()
    );
    let started = client.wait_for_start().await?;
    println!("Session started in {} mode.", started.mode.as_str());
    // The key exchange waits for the sharer's key: if the sharer vanishes first, the
    // session's end (on the control stream) ends the wait.
    let mut session = tokio::select! {
        session = secure::channels(&client, &started, Role::Helper) => session?,
        reason = client.wait_for_end() => return session_ended(reason, 0, 0),
    };
    show_verification_code(session.verification_code(), "the person you are helping");
    say_path(&client).await;
    let mut input = if started.mode == Mode::FullControl {
        Some(session.open_channel(Channel::Input).await?)
    } else {
        None
    };
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut frames = 0u64;
    let mut bytes = 0u64;
    let mut ticker = tokio::time::interval(Duration::from_millis(100));
    let mut screen = None;
    loop {
        let step: Result<(), ClientError> = tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => break,
            // The session's end (the sharer ended it, vanished, ...) is told on the control
            // stream, with its code; say that rather than how a data stream broke.
            reason = client.wait_for_end() => return session_ended(reason, frames, bytes),
            accepted = session.accept_channel(), if screen.is_none() => accepted.map(|(channel, receiver)| {
                if channel == Channel::Screen { screen = Some(receiver); }
            }),
            frame = next_frame(&mut screen), if screen.is_some() => match frame {
                Ok(Some(f)) => { frames += 1; bytes += f.len() as u64; Ok(()) }
                Ok(None) => break,
                Err(e) => Err(e),
            },
            _ = ticker.tick() => match input.as_mut() {
                Some(input) => input.send(b"mouse-move 10 10").await,
                None => Ok(()),
            },
        };
        if let Err(e) = step {
            return match tokio::time::timeout(Duration::from_secs(2), client.wait_for_end()).await {
                Ok(reason) => session_ended(reason, frames, bytes),
                Err(_) => Err(e.into()),
            };
        }
    }
    println!("Received {frames} screen frames ({bytes} bytes). Ending the session.");
    client.end_session().await?;
    client.close().await;
    Ok(())
}

async fn share_command(
    relay: RelayArgs,
    token: &Path,
    code: &str,
    yes: bool,
    fps: u32,
    direct: bool,
) -> Result<(), Failure> {
    let mut options = options(&relay, token, Role::Sharer)?;
    options.direct_path = direct;
    let mut client = Client::connect(options).await?;
    let request = client.join(code).await?;
    let helper = request.helper.unwrap_or_default();
    let mode = Mode::from_wire(request.mode)
        .map(Mode::as_str)
        .unwrap_or("unknown");
    println!(
        "{} {} ({}, {}{}) asks to connect in {mode} mode.",
        helper.given_name,
        helper.family_name,
        helper.job_title,
        helper.company_name,
        if helper.domain_verified {
            format!(", verified {}", helper.domain)
        } else {
            String::new()
        },
    );
    let consent = yes || ask("Allow? [y/N] ");
    if !consent {
        client.decline().await?;
        println!("Declined.");
        return Ok(());
    }
    let started = client.accept().await?;
    let mut session = tokio::select! {
        session = secure::channels(&client, &started, Role::Sharer) => session?,
        reason = client.wait_for_end() => {
            println!("Session ended: {reason} ({})", reason.describe());
            client.close().await;
            return Ok(());
        }
    };
    println!("Sharing your screen. The helper can end the session.");
    show_verification_code(session.verification_code(), "the helper");
    say_path(&client).await;
    let mut screen = session.open_channel(Channel::Screen).await?;
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / fps.max(1));
    let mut input = None;
    let mut events = 0u64;
    let frame = vec![0u8; 32 * 1024];
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                if screen.send(&frame).await.is_err() { break; }
            }
            accepted = session.accept_channel(), if input.is_none() => {
                match accepted {
                    Ok((Channel::Input, receiver)) => input = Some(receiver),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            event = next_frame(&mut input), if input.is_some() => {
                match event {
                    Ok(Some(_)) => events += 1,
                    _ => input = None,
                }
            }
            reason = client.wait_for_end() => {
                println!("Session ended: {reason} ({})", reason.describe());
                break;
            }
        }
    }
    println!("Received {events} input events.");
    client.close().await;
    Ok(())
}

/// The session ended before this side ended it: the sharer ending it is a normal end;
/// anything else (`PEER_LOST` when the sharer vanished, ...) fails with the code and its
/// sentence. A data stream that breaks is taken to this too, when the session's end follows
/// on the control stream at once (the relay cuts a session's streams when it ends, and the
/// stream's code says how the stream ended, not why the session did: PROTOCOL.md §8.5).
fn session_ended(
    reason: remote_help_proto::ErrorCode,
    frames: u64,
    bytes: u64,
) -> Result<(), Failure> {
    println!("Received {frames} screen frames ({bytes} bytes).");
    if reason == remote_help_proto::ErrorCode::PeerEnded {
        println!("Session ended: {reason} ({})", reason.describe());
        return Ok(());
    }
    Err(Failure {
        code: Some(reason.as_str_name().to_string()),
        message: reason.describe().to_string(),
    })
}

/// Shows the end-to-end verification code at once, and what to do if the other person's
/// differs.
fn show_verification_code(code: Option<&str>, other: &str) {
    if let Some(code) = code {
        println!("Verification code: {code}");
        println!(
            "  Compare it with the code {other} sees. If the two codes differ, end the session \
             now (Ctrl-C): someone may be intercepting it."
        );
    }
}

/// The next frame of an optional channel; never completes while there is none.
async fn next_frame(receiver: &mut Option<Receiver>) -> Result<Option<Bytes>, ClientError> {
    match receiver {
        Some(r) => r.recv().await,
        None => std::future::pending().await,
    }
}

/// A suite by its short name (`chacha20`, `aes256gcm`).
fn parse_suite(name: &str) -> Result<Suite, String> {
    Suite::parse(name).ok_or_else(|| format!("{name:?}: expected chacha20 or aes256gcm"))
}

fn ask(prompt: &str) -> bool {
    use std::io::Write;
    print!("{prompt}");
    let _ = std::io::stdout().flush();
    let mut line = String::new();
    std::io::stdin().read_line(&mut line).is_ok() && matches!(line.trim(), "y" | "Y" | "yes")
}
