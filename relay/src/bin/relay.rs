//! `relay`: the remote-help relay daemon, plus its operator commands.
//!
//! - `relay [--config FILE]` runs the daemon (the embedded dev config when none is given);
//! - `relay check-config FILE` validates a config and names every problem;
//! - `relay dev-token --role helper|sharer` mints a token for the dev tenant;
//! - `relay demo` runs a relay, a helper and a sharer in one process and narrates a session.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand, ValueEnum};
use remote_help_relay::client::ClientOptions;
use remote_help_relay::config::{Config, ConfigError};
use remote_help_relay::core::Role;
use remote_help_relay::dev::{self, Persona};
use remote_help_relay::probe::{self, ProbeSettings};
use remote_help_relay::server;
use remote_help_relay::tls::RelayTrust;

/// Exit code for a bad config (EX_USAGE, as linkerd and sysexits use): the file, its
/// values, or the files and folders it names (what `check-config` reports).
const EXIT_BAD_CONFIG: u8 = 64;
/// Exit code for a start the machine refused though the config is sound (EX_UNAVAILABLE):
/// an address in use, an audit log that cannot be opened or recovered.
const EXIT_ENVIRONMENT: u8 = 69;

#[derive(Parser)]
#[command(name = "relay", version, about = "Remote-help QUIC relay daemon")]
struct Cli {
    /// Config file; without it the relay runs on the embedded development config.
    #[arg(long, global = true)]
    config: Option<PathBuf>,
    /// State folder for the development config (dev tenant key, certificate fingerprint).
    #[arg(long, global = true, default_value = dev::DEFAULT_STATE_DIR)]
    state_dir: PathBuf,
    /// Log format; levels come from RUST_LOG (default info).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Clone, Copy, ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Subcommand)]
enum Command {
    /// Run the daemon (the default).
    Run,
    /// Validate a config file and report every problem with its field.
    CheckConfig {
        /// The file to check.
        file: PathBuf,
        /// Also fetch every tenant's keys configured by URL (discovery and key set) once,
        /// naming each problem; exits 69 when one fails.
        #[arg(long)]
        fetch: bool,
    },
    /// Mint a token for the development tenant.
    DevToken {
        /// Whose token.
        #[arg(long, value_enum)]
        role: PersonaArg,
        /// Subject (`sub`) to put in the token.
        #[arg(long)]
        sub: Option<String>,
        /// Lifetime in seconds.
        #[arg(long, default_value_t = 3600)]
        ttl: u64,
        /// Write the token to this file instead of standard output.
        #[arg(long)]
        out: Option<PathBuf>,
    },
    /// Run a relay, a helper and a sharer in one process and narrate a session.
    Demo,
    /// Probe the admin listener's health endpoint (for container health checks).
    Health {
        /// Admin listener HOST:PORT.
        #[arg(long, default_value = remote_help_relay::config::DEFAULT_ADMIN_LISTEN)]
        admin: String,
        /// Check readiness (/readyz) instead of liveness (/healthz).
        #[arg(long)]
        ready: bool,
    },
    /// Drain the relay behind the admin endpoint (as SIGTERM does) and, with --wait, return
    /// once it has stopped: for Kubernetes preStop hooks and maintenance.
    Drain {
        /// Admin endpoint HOST:PORT (default: the config's `[admin] listen`).
        #[arg(long)]
        admin: Option<String>,
        /// File with the admin bearer token (default: the config's `[admin] token_file`).
        #[arg(long)]
        token_file: Option<PathBuf>,
        /// Wait until the relay has finished draining and exited.
        #[arg(long)]
        wait: bool,
        /// With --wait: give up (exit 1) if the relay still answers after this many
        /// seconds (the longest drain deadline a config allows is 3600).
        #[arg(long, default_value_t = 3700)]
        wait_secs: u64,
    },
    /// Audit log tools.
    Audit {
        #[command(subcommand)]
        command: AuditCommand,
    },
    /// Past sessions from the audit log (or active ones from the admin endpoint).
    Sessions {
        /// Audit folder (default: the config's `[audit] dir`). Repeat it to merge the
        /// folders of a cluster's nodes into one report.
        #[arg(long)]
        audit_dir: Vec<PathBuf>,
        /// Only this tenant's sessions.
        #[arg(long)]
        tenant: Option<String>,
        /// Sessions that started at or after this RFC 3339 time (or YYYY-MM-DD).
        #[arg(long)]
        since: Option<String>,
        /// Sessions that started before this RFC 3339 time (or YYYY-MM-DD).
        #[arg(long)]
        until: Option<String>,
        /// One JSON object (rows and summary) instead of a table.
        #[arg(long)]
        json: bool,
        /// Active sessions, from the admin endpoint.
        #[arg(long)]
        active: bool,
        /// Admin endpoint HOST:PORT (default: the config's `[admin] listen`).
        #[arg(long)]
        admin: Option<String>,
        /// File with the admin bearer token (default: the config's `[admin] token_file`).
        #[arg(long)]
        token_file: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum AuditCommand {
    /// Check audit files: hash chain, MACs (with the key), and the checkpoints next to
    /// them; report the first broken link.
    Verify {
        /// The relay's audit key (`audit-hmac.key` in its state folder). Default: the one
        /// in the state folder of `--config`, if given. Without a key, MACs and
        /// checkpoint MACs are not checked.
        #[arg(long)]
        key: Option<PathBuf>,
        /// Audit files (`audit-*.jsonl`).
        #[arg(required = true)]
        files: Vec<PathBuf>,
    },
}

#[derive(Clone, Copy, ValueEnum)]
enum PersonaArg {
    Helper,
    Sharer,
    /// A tenant administrator: a token for the reports API (administration audience).
    Administrator,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    // The demo narrates on stdout; keep the relay's own log to warnings unless asked.
    let default_level = match cli.command {
        Some(Command::Demo) => "warn",
        _ => "info",
    };
    init_logging(cli.log_format, default_level);
    let result = match cli.command.as_ref().unwrap_or(&Command::Run) {
        Command::Run => run_daemon(cli.config.as_deref(), &cli.state_dir),
        Command::CheckConfig { file, fetch } => return check_config(file, *fetch),
        Command::DevToken {
            role,
            sub,
            ttl,
            out,
        } => dev_token(&cli.state_dir, *role, sub.as_deref(), *ttl, out.as_deref()),
        Command::Demo => demo(),
        Command::Drain {
            admin,
            token_file,
            wait,
            wait_secs,
        } => drain(
            cli.config.as_deref(),
            &cli.state_dir,
            admin.as_deref(),
            token_file.as_deref(),
            wait.then(|| std::time::Duration::from_secs(*wait_secs)),
        ),
        Command::Audit {
            command: AuditCommand::Verify { key, files },
        } => return audit_verify(cli.config.as_deref(), key.as_deref(), files),
        Command::Health { admin, ready } => return health(admin, *ready),
        Command::Sessions {
            audit_dir,
            tenant,
            since,
            until,
            json,
            active,
            admin,
            token_file,
        } => {
            if *active {
                active_sessions(
                    cli.config.as_deref(),
                    &cli.state_dir,
                    admin.as_deref(),
                    token_file.as_deref(),
                    tenant.as_deref(),
                    *json,
                )
            } else {
                past_sessions(
                    cli.config.as_deref(),
                    &cli.state_dir,
                    audit_dir,
                    tenant,
                    since,
                    until,
                    *json,
                )
            }
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            if let Some(config) = e.downcast_ref::<ConfigError>() {
                eprintln!("relay: {config}");
                return ExitCode::from(EXIT_BAD_CONFIG);
            }
            if let Some(start) = e.downcast_ref::<server::StartError>() {
                eprintln!("relay: {}: {start}", start.field());
                return ExitCode::from(EXIT_ENVIRONMENT);
            }
            eprintln!("relay: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn init_logging(format: LogFormat, default_level: &str) {
    remote_help_relay::logging::init(matches!(format, LogFormat::Json), default_level);
}

fn load_config(config: Option<&Path>, state_dir: &Path) -> anyhow::Result<Config> {
    match config {
        Some(path) => Ok(Config::load(path)?),
        None => {
            let (config, _) = dev::config(state_dir).context("setting up the dev tenant")?;
            tracing::warn!(
                state_dir = %state_dir.display(),
                "no --config: running on the embedded DEVELOPMENT config (tenant \"dev\"); \
                 mint tokens with `relay dev-token --role helper|sharer`"
            );
            Ok(config)
        }
    }
}

fn run_daemon(config: Option<&Path>, state_dir: &Path) -> anyhow::Result<()> {
    // Parse and check everything before binding anything.
    let config_path = config.map(Path::to_path_buf);
    let state_dir = state_dir.to_path_buf();
    let config = load_config(config, &state_dir)?;
    let problems = remote_help_relay::preflight::check(&config);
    if !problems.is_empty() {
        return Err(ConfigError::Invalid(problems).into());
    }
    let runtime = tokio::runtime::Runtime::new().context("starting the async runtime")?;
    runtime.block_on(async move {
        // Signal handlers first: from the moment the relay says it listens (and systemd hears
        // READY=1), a SIGHUP must reload it, not kill it with the default action.
        let signals = Signals::install();
        let state = config.state_dir.clone();
        let handle = server::spawn(config)?;
        let fingerprint = handle.fingerprint().to_string();
        if std::fs::create_dir_all(&state).is_ok() {
            let path = state.join(dev::FINGERPRINT_FILE);
            if let Err(e) = std::fs::write(&path, format!("{fingerprint}\n")) {
                tracing::warn!(path = %path.display(), error = %e, "cannot write the fingerprint file");
            }
        }
        if config_path.is_none() {
            print_development_pages(&handle);
        }
        // systemd Type=notify: ready only once the endpoint and admin listener are bound.
        notify_systemd(&[sd_notify::NotifyState::Ready, sd_notify::NotifyState::Status(&format!("serving on {}", handle.local_addr()))]);
        serve_signals(signals, &handle, config_path.as_deref(), &state_dir).await;
        tracing::info!("stop signal received");
        notify_systemd(&[sd_notify::NotifyState::Stopping, sd_notify::NotifyState::Status("draining")]);
        handle.shutdown().await;
        anyhow::Ok(())
    })
}

/// On the development config, where to point a browser: the helper page and the Monitor
/// page on the admin listener (a wildcard address is reached on loopback).
fn print_development_pages(handle: &server::ServerHandle) {
    let Some(mut admin) = handle.admin_addr() else {
        return;
    };
    if admin.ip().is_unspecified() {
        admin.set_ip(std::net::Ipv4Addr::LOCALHOST.into());
    }
    let hashes: Vec<String> = handle
        .browser_certificate_hashes()
        .into_iter()
        .map(|h| h.value)
        .collect();
    println!("helper page:  http://{admin}/helper/");
    println!("Monitor page: http://{admin}/monitor/");
    println!(
        "WebTransport: https://{}/remote-help/1 (serverCertificateHashes sha-256: {})",
        handle.local_addr(),
        hashes.join(", ")
    );
}

/// The daemon's SIGTERM and SIGHUP handlers, installed before anything is bound.
struct Signals {
    #[cfg(unix)]
    term: std::io::Result<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    hup: std::io::Result<tokio::signal::unix::Signal>,
}

impl Signals {
    /// Installs the handlers (inside the runtime).
    fn install() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            Signals {
                term: signal(SignalKind::terminate()),
                hup: signal(SignalKind::hangup()),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }
}

/// Serves signals until a stop signal: SIGHUP reloads the config (checked first; a bad
/// one keeps the running policy), SIGTERM and ctrl-c return.
async fn serve_signals(
    signals: Signals,
    handle: &server::ServerHandle,
    config: Option<&Path>,
    state_dir: &Path,
) {
    #[cfg(unix)]
    {
        let (Ok(mut term), Ok(mut hup)) = (signals.term, signals.hup) else {
            let _ = tokio::signal::ctrl_c().await;
            return;
        };
        loop {
            tokio::select! {
                _ = tokio::signal::ctrl_c() => return,
                _ = term.recv() => return,
                _ = handle.drain_requested() => {
                    tracing::info!("drain requested through the admin endpoint");
                    return;
                }
                _ = hup.recv() => {
                    tracing::info!("SIGHUP: reloading the configuration");
                    let mut reloading = vec![sd_notify::NotifyState::Reloading];
                    if let Ok(now) = sd_notify::NotifyState::monotonic_usec_now() {
                        reloading.push(now);
                    }
                    notify_systemd(&reloading);
                    match load_config(config, state_dir) {
                        Ok(fresh) => {
                            handle.reload(&fresh);
                        }
                        Err(e) => {
                            metrics::counter!("relay_config_reloads_total", "result" => "error").increment(1);
                            tracing::error!(error = %format!("{e:#}"), "configuration reload failed; keeping the running policy");
                        }
                    }
                    notify_systemd(&[sd_notify::NotifyState::Ready]);
                }
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = (signals, handle, config, state_dir);
        let _ = tokio::signal::ctrl_c().await;
    }
}

/// Tells systemd about the service's state, when run under it (a no-op otherwise).
fn notify_systemd(states: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(states) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// `relay health`: GET /healthz (or /readyz) on the admin listener; exit 0 on 200.
fn health(addr: &str, ready: bool) -> ExitCode {
    use std::io::{Read, Write};
    let path = if ready { "/readyz" } else { "/healthz" };
    let result = (|| -> std::io::Result<String> {
        let sockaddr = std::net::ToSocketAddrs::to_socket_addrs(addr)?
            .next()
            .ok_or_else(|| std::io::Error::other("no address"))?;
        let mut stream =
            std::net::TcpStream::connect_timeout(&sockaddr, std::time::Duration::from_secs(3))?;
        stream.set_read_timeout(Some(std::time::Duration::from_secs(3)))?;
        write!(
            stream,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )?;
        let mut response = String::new();
        stream.read_to_string(&mut response)?;
        Ok(response)
    })();
    match result {
        Ok(response) if response.starts_with("HTTP/1.1 200") => {
            println!("{path}: ok");
            ExitCode::SUCCESS
        }
        Ok(response) => {
            eprintln!("{path}: {}", response.lines().next().unwrap_or("no answer"));
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{path}: {addr}: {e}");
            ExitCode::FAILURE
        }
    }
}

fn check_config(file: &Path, fetch: bool) -> ExitCode {
    // Everything start-up reads or writes, not only the file: what passes here starts.
    let checked = Config::load(file).and_then(|config| {
        let problems = remote_help_relay::preflight::check(&config);
        if problems.is_empty() {
            Ok(config)
        } else {
            Err(ConfigError::Invalid(problems))
        }
    });
    match checked {
        Ok(config) => {
            let cluster = config
                .cluster
                .as_ref()
                .map(|c| {
                    let reports = if c.admin_nodes.is_empty() {
                        ""
                    } else {
                        ", reports answered for the whole cluster"
                    };
                    format!(", cluster node {} of {}{reports}", c.node, c.nodes.len())
                })
                .unwrap_or_default();
            // Said only when off: the packet path is the default for clients that ask.
            let forwarder = if config.forwarder.enabled {
                ""
            } else {
                ", packet path off: every session takes the stream path"
            };
            println!(
                "{}: OK ({} tenant(s), listen {}{cluster}{forwarder})",
                file.display(),
                config.tenants.len(),
                config.listen
            );
            if !fetch {
                return ExitCode::SUCCESS;
            }
            let fetched = tokio::runtime::Runtime::new().map(|runtime| {
                runtime.block_on(remote_help_relay::server::keys::check_all(
                    &config,
                    &mut std::io::stdout(),
                ))
            });
            match fetched {
                Ok(true) => ExitCode::SUCCESS,
                Ok(false) => ExitCode::from(EXIT_ENVIRONMENT),
                Err(e) => {
                    eprintln!("cannot start the async runtime: {e}");
                    ExitCode::from(EXIT_ENVIRONMENT)
                }
            }
        }
        Err(e) => {
            eprintln!("{}: {e}", file.display());
            ExitCode::from(EXIT_BAD_CONFIG)
        }
    }
}

fn dev_token(
    state_dir: &Path,
    role: PersonaArg,
    sub: Option<&str>,
    ttl: u64,
    out: Option<&Path>,
) -> anyhow::Result<()> {
    let signer = dev::ensure_signer(state_dir)?;
    let persona = match role {
        PersonaArg::Helper => Persona::Helper,
        PersonaArg::Sharer => Persona::Sharer,
        PersonaArg::Administrator => Persona::Administrator,
    };
    let token = dev::mint(&signer, persona, sub, ttl)?;
    match out {
        Some(path) => std::fs::write(path, format!("{token}\n"))
            .with_context(|| format!("writing {}", path.display()))?,
        None => println!("{token}"),
    }
    Ok(())
}

fn demo() -> anyhow::Result<()> {
    let state = tempfile_dir()?;
    let runtime = tokio::runtime::Runtime::new()?;
    let state_for_run = state.clone();
    runtime.block_on(async move {
        let (mut config, signer) = dev::config(&state_for_run)?;
        config.listen = "127.0.0.1:0".parse()?;
        config.admin.listen = Some("127.0.0.1:0".parse()?);
        config.drain_timeout = std::time::Duration::from_secs(1);
        let handle = server::spawn(config)?;
        println!(
            "[relay ] listening on {} (certificate sha256 {})",
            handle.local_addr(),
            handle.fingerprint()
        );
        let trust = RelayTrust::Pin(handle.fingerprint());
        let helper = ClientOptions::new(
            handle.local_addr(),
            trust.clone(),
            dev::mint(&signer, Persona::Helper, None, 600)?,
            Role::Helper,
        );
        let sharer = ClientOptions::new(
            handle.local_addr(),
            trust,
            dev::mint(&signer, Persona::Sharer, None, 600)?,
            Role::Sharer,
        );
        let settings = ProbeSettings {
            round_trips: 50,
            screen_bytes: 16 * 1024 * 1024,
            frame_size: 64 * 1024,
        };
        let report = probe::run(helper, sharer, settings, |step| println!("[demo  ] {step}")).await;
        println!("[relay ] shutting down");
        handle.shutdown().await;
        let report = report?;
        println!(
            "[demo  ] done: setup {:.1} ms, input round trip p50 {:.3} ms, screen {:.0} Mbit/s, end-to-end {}",
            report.setup_ms, report.input_rtt_p50_ms, report.throughput_mbit_s, report.e2e
        );
        anyhow::Ok(())
    })?;
    let _ = std::fs::remove_dir_all(&state);
    Ok(())
}

fn audit_verify(config: Option<&Path>, key: Option<&Path>, files: &[PathBuf]) -> ExitCode {
    use remote_help_relay::audit::{AuditKey, KEY_FILE, chain};
    let key_path = match (key, config) {
        (Some(key), _) => Some(key.to_path_buf()),
        (None, Some(config)) => match Config::load(config) {
            Ok(config) => Some(config.state_dir.join(KEY_FILE)),
            Err(e) => {
                eprintln!("error: {e}");
                return ExitCode::FAILURE;
            }
        },
        (None, None) => None,
    };
    let key = match key_path.as_deref().map(AuditKey::load).transpose() {
        Ok(key) => key,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::FAILURE;
        }
    };
    let mut broken = false;
    let mut verified: std::collections::BTreeMap<PathBuf, _> = Default::default();
    for file in files {
        match chain::verify(file, key.as_ref()) {
            Ok(found) => {
                let mut notes = vec![format!("{} events, hash chain intact", found.events)];
                if found.keyed == 0 {
                    notes.push(
                        "unkeyed: written before the relay had an audit key; an edit with a recomputed chain would not show"
                            .into(),
                    );
                } else if key.is_some() {
                    notes.push(format!("{} MACs checked", found.macs_checked));
                    if found.keyed < found.events {
                        notes.push(format!(
                            "the first {} lines unkeyed (written before the relay had an audit key)",
                            found.events - found.keyed
                        ));
                    }
                } else {
                    notes.push("MACs not checked: pass --key".into());
                }
                if found.torn_tail > 0 {
                    notes.push(format!(
                        "torn last line ({} bytes): a write cut short by a crash or a full disk, never acknowledged, not an edit; the relay cuts it off before it next writes",
                        found.torn_tail
                    ));
                }
                println!("{}: OK ({})", file.display(), notes.join("; "));
                let dir = file.parent().unwrap_or(Path::new(".")).to_path_buf();
                let name = file
                    .file_name()
                    .map(|n| n.to_string_lossy().into_owned())
                    .unwrap_or_default();
                verified
                    .entry(dir)
                    .or_insert_with(std::collections::BTreeMap::new)
                    .insert(name, found);
            }
            Err(link) => {
                broken = true;
                println!(
                    "{}:{}: BROKEN: {}",
                    link.file.display(),
                    link.line,
                    link.reason
                );
            }
        }
    }
    for (dir, found) in &verified {
        match chain::verify_checkpoints(dir, key.as_ref(), found) {
            Ok(0) => println!(
                "{}: no checkpoints (lines cut off the end of a file cannot be noticed)",
                dir.display()
            ),
            Ok(checked) => println!(
                "{}: checkpoints OK ({checked} checked; lines written after the last one are not covered)",
                dir.display()
            ),
            Err(link) => {
                broken = true;
                println!(
                    "{}:{}: BROKEN: {}",
                    link.file.display(),
                    link.line,
                    link.reason
                );
            }
        }
    }
    if broken {
        ExitCode::FAILURE
    } else {
        ExitCode::SUCCESS
    }
}

fn parse_when(text: &str) -> anyhow::Result<time::OffsetDateTime> {
    if let Some(t) = remote_help_relay::audit::parse_time(text) {
        return Ok(t);
    }
    remote_help_relay::audit::parse_time(&format!("{text}T00:00:00Z"))
        .ok_or_else(|| anyhow::anyhow!("{text:?} is neither RFC 3339 nor YYYY-MM-DD"))
}

fn past_sessions(
    config: Option<&Path>,
    state_dir: &Path,
    audit_dirs: &[PathBuf],
    tenant: &Option<String>,
    since: &Option<String>,
    until: &Option<String>,
    json: bool,
) -> anyhow::Result<()> {
    use remote_help_relay::report;
    let dirs = if audit_dirs.is_empty() {
        vec![match config {
            Some(path) => Config::load(path)?.audit.dir,
            None => state_dir.join("audit"),
        }]
    } else {
        audit_dirs.to_vec()
    };
    // Each node of a cluster writes its own files and a session lives on one node, so the
    // nodes' events can simply be read one folder after another.
    let mut files: Vec<PathBuf> = Vec::new();
    for dir in &dirs {
        // A mistyped folder must not silently drop a node from a cluster report.
        if !audit_dirs.is_empty() && !dir.is_dir() {
            anyhow::bail!("{} is not an audit folder", dir.display());
        }
        let found = remote_help_relay::audit::audit_files(dir);
        if found.is_empty() && !audit_dirs.is_empty() {
            eprintln!("note: {} holds no audit files", dir.display());
        }
        files.extend(found);
    }
    let events = remote_help_relay::audit::read_events(&files);
    let filter = report::Filter {
        tenant: tenant.clone(),
        since: since.as_deref().map(parse_when).transpose()?,
        until: until.as_deref().map(parse_when).transpose()?,
    };
    let rows = report::sessions(&events, &filter);
    let summary = report::summarize(&rows);
    if json {
        println!(
            "{}",
            serde_json::json!({ "sessions": rows, "summary": summary })
        );
    } else {
        print!("{}", report::render(&rows, &summary));
    }
    Ok(())
}

/// The admin endpoint and bearer token: from the flags, else from the config (or the dev
/// config when neither is given).
fn admin_target(
    config: Option<&Path>,
    state_dir: &Path,
    admin: Option<&str>,
    token_file: Option<&Path>,
) -> anyhow::Result<(String, String)> {
    let loaded = match config {
        Some(path) => Some(Config::load(path)?),
        None if admin.is_none() => Some(dev::config(state_dir)?.0),
        None => None,
    };
    let addr = match admin {
        Some(a) => a.to_string(),
        None => loaded
            .as_ref()
            .and_then(|c| c.admin.listen)
            .map(|a| a.to_string())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "give --admin HOST:PORT (the admin listener is disabled in the config)"
                )
            })?,
    };
    let token = match token_file {
        Some(path) => std::fs::read_to_string(path)
            .with_context(|| format!("reading {}", path.display()))?
            .trim()
            .to_string(),
        None => loaded
            .as_ref()
            .and_then(|c| c.admin.token.clone())
            .ok_or_else(|| {
                anyhow::anyhow!("give --token-file (no [admin] token_file in the config)")
            })?,
    };
    Ok((addr, token))
}

/// One request to the admin API (plain HTTP/1.1 with the bearer token); the body when the
/// status is `expect`, else an error naming the status and the relay's explanation.
fn admin_request(
    addr: &str,
    token: &str,
    method: &str,
    path: &str,
    expect: u16,
) -> anyhow::Result<String> {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect_timeout(&resolve(addr)?, ADMIN_TIMEOUT)
        .with_context(|| format!("connecting to {addr}"))?;
    stream.set_read_timeout(Some(ADMIN_TIMEOUT))?;
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\nAuthorization: Bearer {token}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    )?;
    let mut response = String::new();
    stream.read_to_string(&mut response)?;
    let (head, body) = response.split_once("\r\n\r\n").unwrap_or((&response, ""));
    let status = head.lines().next().unwrap_or("");
    if !status.contains(&format!(" {expect} ")) {
        anyhow::bail!("admin endpoint answered {status}: {}", body.trim());
    }
    Ok(body.to_string())
}

/// `relay drain`: asks the relay behind the admin endpoint to drain (as SIGTERM does: no new
/// connections or sessions, not ready, active sessions run on until they end or the drain
/// deadline, then it exits); with `wait`, returns only once it has exited.
fn drain(
    config: Option<&Path>,
    state_dir: &Path,
    admin: Option<&str>,
    token_file: Option<&Path>,
    wait: Option<std::time::Duration>,
) -> anyhow::Result<()> {
    let (addr, token) = admin_target(config, state_dir, admin, token_file)?;
    admin_request(&addr, &token, "POST", "/admin/drain", 202)?;
    println!("{addr}: draining");
    if let Some(limit) = wait {
        // The admin listener is the last thing the relay closes: once connections to it
        // are refused, the drain is over and the process has exited. Anything else (a
        // timeout, a proxy still accepting) is not proof of that: keep asking, boundedly.
        let sockaddr = resolve(&addr)?;
        let deadline = std::time::Instant::now() + limit;
        loop {
            match std::net::TcpStream::connect_timeout(&sockaddr, ADMIN_TIMEOUT) {
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => break,
                _ if std::time::Instant::now() >= deadline => {
                    anyhow::bail!("{addr} still answers after {} s", limit.as_secs())
                }
                _ => std::thread::sleep(std::time::Duration::from_millis(500)),
            }
        }
        println!("{addr}: drained and stopped");
    }
    Ok(())
}

/// How long an admin-API connection or answer may take.
const ADMIN_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The first address `addr` (`host:port`) resolves to.
fn resolve(addr: &str) -> anyhow::Result<std::net::SocketAddr> {
    std::net::ToSocketAddrs::to_socket_addrs(addr)
        .with_context(|| format!("resolving {addr}"))?
        .next()
        .with_context(|| format!("{addr} resolves to no address"))
}

fn active_sessions(
    config: Option<&Path>,
    state_dir: &Path,
    admin: Option<&str>,
    token_file: Option<&Path>,
    tenant: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let (addr, token) = admin_target(config, state_dir, admin, token_file)?;
    let query = tenant.map(|t| format!("?tenant={t}")).unwrap_or_default();
    let body = admin_request(
        &addr,
        &token,
        "GET",
        &format!("/admin/sessions{query}"),
        200,
    )?;
    if json {
        println!("{body}");
        return Ok(());
    }
    let sessions: Vec<serde_json::Value> = serde_json::from_str(&body)?;
    println!(
        "{:<34} {:<10} {:<20} {:<20} {:<14} {:>9}",
        "SESSION", "TENANT", "HELPER", "SHARER", "MODE", "DURATION"
    );
    for s in &sessions {
        println!(
            "{:<34} {:<10} {:<20} {:<20} {:<14} {:>8.0}s",
            s["session_id"].as_str().unwrap_or(""),
            s["tenant"].as_str().unwrap_or(""),
            s["helper_name"].as_str().unwrap_or(""),
            s["sharer_name"].as_str().unwrap_or(""),
            s["mode"].as_str().unwrap_or(""),
            s["duration_secs"].as_f64().unwrap_or(0.0)
        );
    }
    println!("{} active session(s)", sessions.len());
    Ok(())
}

fn tempfile_dir() -> anyhow::Result<PathBuf> {
    let dir = std::env::temp_dir().join(format!("relay-demo-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
