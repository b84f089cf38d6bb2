//! `rhelp`: the reference remote-help client.
//!
//! - `rhelp probe`: the operator's smoke test: a whole measured session, both parties in
//!   this process; exit 0 and figures on success, the error code on failure.
//! - `rhelp helper`: create a session, print its code, receive the screen (one line per
//!   frame; `--save-frames DIR` keeps the latest picture) and send input events and chat
//!   from a `--script`.
//! - `rhelp share`: join by code, consent, and stream a synthetic screen (`--test-pattern`:
//!   a moving test card with a frame counter); prints every input event it receives, one
//!   line each (`input N EVENT`, EVENT in the line format of `client::content`).
//!
//! Both speak content profile v1 (PROTOCOL.md §8.8) on the session's channels.
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
use remote_help_relay::client::content::{
    ChatMessage, Content, ContentError, ContentReceiver, ContentSender, ImageFormat, InputEvent,
    ScreenFrame,
};
use remote_help_relay::client::secure::{self, SessionChannels};
use remote_help_relay::client::test_card::TestCard;
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
    /// Carry the session's data on the stream path (the relay forwards the channels'
    /// streams, which the SDK seals end to end) instead of the packet path (the two
    /// clients' own QUIC connection through the relay's forwarder, PROTOCOL.md §8a).
    #[arg(long)]
    stream_path: bool,
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
        /// Write the latest screen frame received to DIR/latest.png (or .jpg), replacing
        /// it atomically at each frame.
        #[arg(long, value_name = "DIR")]
        save_frames: Option<PathBuf>,
        /// Send the lines of this file (`-`: standard input, read to its end first) once
        /// the session starts: input events in the line format `rhelp share` prints
        /// (`pointer-move 0.5 0.25`, `key KeyA down shift`, `text "hi"`, ...), `chat
        /// "TEXT"` and `key-frame-request`; `#` starts a comment.
        #[arg(long, value_name = "FILE")]
        script: Option<PathBuf>,
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
        /// Stream a moving test card with a big frame counter (without it: the card stands
        /// still, frame 0).
        #[arg(long)]
        test_pattern: bool,
        /// Width of the shared (synthetic) screen, pixels.
        #[arg(long, default_value_t = 640)]
        width: u32,
        /// Height of the shared (synthetic) screen, pixels.
        #[arg(long, default_value_t = 360)]
        height: u32,
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
                save_frames,
                script,
            } => report(
                helper_command(
                    relay,
                    &token,
                    mode,
                    seconds,
                    direct,
                    save_frames,
                    script,
                )
                .await,
            ),
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
                test_pattern,
                width,
                height,
            } => report(
                share_command(
                    relay,
                    &token,
                    &code,
                    yes,
                    direct,
                    Screen {
                        fps,
                        moving: test_pattern,
                        width,
                        height,
                    },
                )
                .await,
            ),
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

impl From<ContentError> for Failure {
    fn from(e: ContentError) -> Failure {
        match e {
            ContentError::Transport(e) => e.into(),
            other => Failure::usage(other.to_string()),
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
    options.packet_path = !relay.stream_path;
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

/// One line of a helper's script.
enum ScriptLine {
    Input(InputEvent),
    Chat(String),
    KeyFrameRequest,
}

/// Reads and checks a script (`-`: standard input) before anything connects, so a typo is
/// a usage error, not a half-sent script.
fn read_script(path: &Path) -> Result<Vec<ScriptLine>, Failure> {
    let text = if path == Path::new("-") {
        std::io::read_to_string(std::io::stdin())
    } else {
        std::fs::read_to_string(path)
    }
    .map_err(|e| Failure::usage(format!("--script {}: {e}", path.display())))?;
    let mut lines = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let parsed = if line == "key-frame-request" {
            Ok(ScriptLine::KeyFrameRequest)
        } else if let Some(json) = line.strip_prefix("chat ") {
            serde_json::from_str::<String>(json)
                .map(ScriptLine::Chat)
                .map_err(|e| format!("chat: a JSON string: {e}"))
        } else {
            line.parse::<InputEvent>().map(ScriptLine::Input)
        };
        lines.push(parsed.map_err(|e| {
            Failure::usage(format!(
                "--script {} line {}: {e}",
                path.display(),
                number + 1
            ))
        })?);
    }
    Ok(lines)
}

/// The software name a content stream's start carries.
fn software() -> String {
    format!("rhelp/{}", env!("CARGO_PKG_VERSION"))
}

/// Milliseconds since the Unix epoch, for chat messages (0 if the clock is before it).
fn unix_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// Sends a helper's script: input events on the input channel, chat on the chat channel
/// (opened on first use), key-frame requests on input when there is one, else on chat.
async fn send_script(
    script: &[ScriptLine],
    session: &SessionChannels,
    input: &mut Option<ContentSender>,
) -> Result<Option<ContentSender>, ContentError> {
    let mut chat: Option<ContentSender> = None;
    for line in script {
        let (content, on_input) = match line {
            ScriptLine::Input(event) => (Content::Input(event.clone()), true),
            ScriptLine::Chat(text) => (
                Content::Chat(ChatMessage {
                    text: text.clone(),
                    sent_at_ms: unix_ms(),
                }),
                false,
            ),
            ScriptLine::KeyFrameRequest => (Content::KeyFrameRequest, input.is_some()),
        };
        let sender = match (on_input, input.as_mut()) {
            (true, Some(input)) => input,
            (true, None) => {
                return Err(ContentError::Invalid(
                    remote_help_relay::client::content::Malformed::WrongChannel {
                        what: "an input event",
                        channel: Channel::Chat,
                    },
                ));
            }
            (false, _) => match &mut chat {
                Some(chat) => chat,
                None => {
                    chat.insert(ContentSender::open(session, Channel::Chat, &software()).await?)
                }
            },
        };
        sender.send(&content).await?;
    }
    Ok(chat)
}

/// Writes a received frame to `dir/latest.<ext>` through a temporary file and a rename, so
/// a reader never sees half a picture.
fn save_frame(dir: &Path, frame: &ScreenFrame) -> std::io::Result<()> {
    let ext = frame.format.extension();
    let temporary = dir.join(format!(".latest.{ext}.tmp"));
    std::fs::write(&temporary, &frame.data)?;
    std::fs::rename(&temporary, dir.join(format!("latest.{ext}")))
}

async fn helper_command(
    relay: RelayArgs,
    token: &Path,
    mode: ModeArg,
    seconds: u64,
    direct: bool,
    save_frames: Option<PathBuf>,
    script: Option<PathBuf>,
) -> Result<(), Failure> {
    let mode = match mode {
        ModeArg::ViewOnly => Mode::ViewOnly,
        ModeArg::FullControl => Mode::FullControl,
    };
    let script = match &script {
        Some(path) => read_script(path)?,
        None => Vec::new(),
    };
    if mode == Mode::ViewOnly && script.iter().any(|l| matches!(l, ScriptLine::Input(_))) {
        return Err(Failure::usage(
            "--script has input events, which need --mode full-control".into(),
        ));
    }
    if let Some(dir) = &save_frames {
        std::fs::create_dir_all(dir)
            .map_err(|e| Failure::usage(format!("--save-frames {}: {e}", dir.display())))?;
    }
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
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut frames = 0u64;
    let mut bytes = 0u64;
    let mut input = if started.mode >= Mode::FullControl {
        Some(ContentSender::open(&session, Channel::Input, &software()).await?)
    } else {
        None
    };
    let _chat = match send_script(&script, &session, &mut input).await {
        Ok(chat) => chat,
        Err(e) => return Err(Failure::usage(format!("--script: {e}"))),
    };
    if !script.is_empty() {
        println!("Sent {} script lines.", script.len());
    }
    let mut screen: Option<ContentReceiver> = None;
    let mut chat_in: Option<ContentReceiver> = None;
    loop {
        let step: Result<(), ContentError> = tokio::select! {
            _ = tokio::time::sleep_until(deadline.into()) => break,
            // The session's end (the sharer ended it, vanished, ...) is told on the control
            // stream, with its code; say that rather than how a data stream broke.
            reason = client.wait_for_end() => return session_ended(reason, frames, bytes),
            accepted = session.accept_channel() => accepted.map(|(channel, receiver)| {
                match channel {
                    Channel::Screen => screen = Some(ContentReceiver::new(channel, receiver)),
                    Channel::Chat => chat_in = Some(ContentReceiver::new(channel, receiver)),
                    _ => {}
                }
            }).map_err(ContentError::from),
            frame = next_content(&mut screen) => match frame {
                Ok(Some(Content::Screen(frame))) => {
                    frames += 1;
                    bytes += frame.data.len() as u64;
                    // Saved before its line is printed: whoever reads the line finds the
                    // picture at least that new.
                    if let Some(dir) = &save_frames {
                        save_frame(dir, &frame).map_err(|e| {
                            Failure::usage(format!("--save-frames {}: {e}", dir.display()))
                        })?;
                    }
                    println!(
                        "frame {} {}x{} {} {} bytes",
                        frame.frame_number, frame.width, frame.height,
                        frame.format.extension(), frame.data.len()
                    );
                    Ok(())
                }
                Ok(Some(_)) => Ok(()),
                Ok(None) => break,
                Err(e) => skipped_or_failed("screen", e),
            },
            message = next_content(&mut chat_in) => match message {
                Ok(Some(Content::Chat(chat))) => {
                    println!("chat {}", serde_json::to_string(&chat.text).unwrap_or_default());
                    Ok(())
                }
                Ok(Some(_)) => Ok(()),
                Ok(None) => { chat_in = None; Ok(()) }
                Err(e) => skipped_or_failed("chat", e),
            },
        };
        if let Err(e) = step {
            return match tokio::time::timeout(Duration::from_secs(2), client.wait_for_end()).await {
                Ok(reason) => session_ended(reason, frames, bytes),
                Err(_) => Err(Failure::usage(e.to_string())),
            };
        }
    }
    println!("Received {frames} screen frames ({bytes} bytes). Ending the session.");
    client.end_session().await?;
    client.close().await;
    Ok(())
}

/// A skipped malformed frame is printed and the stream goes on; anything else ends it.
fn skipped_or_failed(channel: &str, e: ContentError) -> Result<(), ContentError> {
    if e.is_skipped() {
        println!("skipped {channel}: {e}");
        Ok(())
    } else {
        Err(e)
    }
}

/// What `rhelp share` streams.
struct Screen {
    fps: u32,
    moving: bool,
    width: u32,
    height: u32,
}

async fn share_command(
    relay: RelayArgs,
    token: &Path,
    code: &str,
    yes: bool,
    direct: bool,
    screen_settings: Screen,
) -> Result<(), Failure> {
    let card = TestCard::new(screen_settings.width, screen_settings.height)
        .map_err(|e| Failure::usage(e.to_string()))?;
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
    let mut screen = ContentSender::open(&session, Channel::Screen, &software()).await?;
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / screen_settings.fps.max(1));
    // A slow encoder drops frames rather than bunching them up.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let first = Instant::now();
    let still = if screen_settings.moving {
        None
    } else {
        Some(Bytes::from(
            card.png(0).map_err(|e| Failure::usage(e.to_string()))?,
        ))
    };
    let mut frame_number = 0u64;
    let mut input: Option<ContentReceiver> = None;
    let mut chat: Option<ContentReceiver> = None;
    let mut events = 0u64;
    loop {
        let mut send_now = false;
        tokio::select! {
            _ = ticker.tick() => send_now = true,
            accepted = session.accept_channel() => {
                match accepted {
                    Ok((channel @ Channel::Input, receiver)) => input = Some(ContentReceiver::new(channel, receiver)),
                    Ok((channel @ Channel::Chat, receiver)) => chat = Some(ContentReceiver::new(channel, receiver)),
                    Ok(_) => {}
                    Err(_) => break,
                }
            }
            event = next_content(&mut input) => {
                match event {
                    Ok(Some(Content::Input(event))) => {
                        println!("input {events} {event}");
                        events += 1;
                    }
                    Ok(Some(Content::KeyFrameRequest)) => {
                        println!("key-frame-request");
                        send_now = true;
                    }
                    Ok(Some(_)) => {}
                    Err(e) if e.is_skipped() => println!("skipped input: {e}"),
                    _ => input = None,
                }
            }
            message = next_content(&mut chat) => {
                match message {
                    Ok(Some(Content::Chat(message))) => {
                        println!("chat {}", serde_json::to_string(&message.text).unwrap_or_default());
                    }
                    Ok(Some(Content::KeyFrameRequest)) => {
                        println!("key-frame-request");
                        send_now = true;
                    }
                    Ok(Some(_)) => {}
                    Err(e) if e.is_skipped() => println!("skipped chat: {e}"),
                    _ => chat = None,
                }
            }
            reason = client.wait_for_end() => {
                println!("Session ended: {reason} ({})", reason.describe());
                break;
            }
        }
        if send_now {
            let data = match &still {
                Some(png) => png.clone(),
                None => Bytes::from(
                    card.png(frame_number)
                        .map_err(|e| Failure::usage(e.to_string()))?,
                ),
            };
            let frame = ScreenFrame {
                frame_number,
                timestamp_us: first.elapsed().as_micros() as u64,
                width: card.width(),
                height: card.height(),
                format: ImageFormat::Png,
                data,
            };
            if screen.send(&Content::Screen(frame)).await.is_err() {
                break;
            }
            frame_number += 1;
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

/// The next item of an optional content channel; never completes while there is none.
async fn next_content(
    receiver: &mut Option<ContentReceiver>,
) -> Result<Option<Content>, ContentError> {
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
