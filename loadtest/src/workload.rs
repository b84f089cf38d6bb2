//! One session's workload: set it up through the relay (or connect peer to peer for the
//! direct baseline), then stream screen frames, input events and chat until the deadline,
//! timing what the issue asks for.
//!
//! Timing: every screen frame and input event carries the microseconds since the run's
//! epoch at which it was sent; both parties live in this process, so the receiver's clock
//! is the sender's. Input round trip = helper sends an input event, the sharer echoes it on
//! its chat channel, the helper receives the echo.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes, BytesMut};
use hdrhistogram::Histogram;
use remote_help_sdk::client::secure::{self, Receiver, SecureSession, Sender, SessionChannels};
use remote_help_sdk::client::{
    Client, ClientError, ClientOptions, DirectOutcome, UnsealedChannels,
};
use remote_help_sdk::e2e::Suite;
use remote_help_sdk::session::{Channel, Mode, Role};

/// What each session does once it is up.
#[derive(Debug, Clone, Copy)]
pub struct Workload {
    /// Screen bitrate per session, bits per second; 0 = as fast as flow control allows.
    pub screen_bits_per_sec: u64,
    /// Size of one screen frame, bytes.
    pub frame_bytes: usize,
    /// Input events per second from the helper; 0 = none.
    pub input_per_sec: u32,
    /// A chat message per second each way.
    pub chat: bool,
    /// No traffic at all: hold the paired session (memory per idle session).
    pub idle: bool,
    /// This many sessions (the first ones) have a helper that does not read its screen
    /// until the deadline: slow readers, whose senders the relay must hold back.
    pub stalled_sessions: usize,
    /// Relayed sessions ask for a direct peer-to-peer path (each client then has its own
    /// UDP socket, as a direct path needs); traffic goes direct where it comes up.
    pub direct_path: bool,
    /// Relayed sessions take the packet path (each client then has its own UDP socket, as
    /// the packet path needs); else the stream path, on shared endpoints.
    pub packet_path: bool,
    /// End-to-end protection of the direct baseline (relayed sessions protect as their
    /// client options say): the suite, or `None` for plaintext (`--no-e2e`).
    pub e2e: Option<Suite>,
}

/// How long after the deadline a session may take to wind down before it counts as hung.
const GRACE: Duration = Duration::from_secs(30);

/// Marks the first byte of a chat frame: an input echo, or a chat message.
const ECHO: u8 = b'E';
const CHAT: u8 = b'C';

/// Live counters for the progress bar, shared by every session.
#[derive(Debug, Default)]
pub struct Live {
    /// Sessions set up (consented, or connected for the direct baseline).
    pub up: AtomicU64,
    /// Sessions that finished their workload and ended cleanly.
    pub done: AtomicU64,
    /// Sessions that failed.
    pub failed: AtomicU64,
    /// Bytes received by either party (what crossed the relay).
    pub bytes: AtomicU64,
    /// Screen frames received.
    pub frames: AtomicU64,
    /// Screen frames the sender skipped because flow control held it back past their slot.
    pub frames_dropped: AtomicU64,
    /// Input round trips completed.
    pub input_round_trips: AtomicU64,
    /// Sessions whose direct path came up (`--direct-path`).
    pub direct_paths: AtomicU64,
}

/// Latency histograms (microseconds) and error counts, merged over all sessions.
pub struct Recorder {
    /// Connect to consented (relayed) or to connected (direct).
    pub setup: Mutex<Histogram<u64>>,
    /// Helper → sharer → helper.
    pub input_rtt: Mutex<Histogram<u64>>,
    /// Sharer → helper, send to receive.
    pub screen: Mutex<Histogram<u64>>,
    /// Consent to direct path up (`--direct-path`), as the helper measured it.
    pub direct_setup: Mutex<Histogram<u64>>,
    /// Failures by code (or kind).
    pub errors: Mutex<BTreeMap<String, u64>>,
    /// Live counters.
    pub live: Live,
    /// The run's time origin for frame timestamps.
    pub epoch: Instant,
}

impl Recorder {
    /// Empty histograms, 1 µs to 1 h, 3 significant digits.
    pub fn new() -> Recorder {
        let h = || Mutex::new(new_histogram());
        Recorder {
            setup: h(),
            input_rtt: h(),
            screen: h(),
            direct_setup: h(),
            errors: Mutex::new(BTreeMap::new()),
            live: Live::default(),
            epoch: Instant::now(),
        }
    }

    fn now_us(&self) -> u64 {
        self.epoch.elapsed().as_micros() as u64
    }

    /// Counts a failure by its stable code, or its kind.
    pub fn error(&self, error: &ClientError) {
        let key = match error.code() {
            Some(code) => code.as_str_name().to_string(),
            None => match error {
                ClientError::Connection(_) => "connection".to_string(),
                ClientError::Connect(_) => "connect".to_string(),
                ClientError::Socket(_) => "socket".to_string(),
                _ => "other".to_string(),
            },
        };
        self.error_named(key);
    }

    /// Counts a failure under `key`.
    pub fn error_named(&self, key: String) {
        *lock(&self.errors).entry(key).or_insert(0) += 1;
    }
}

impl Default for Recorder {
    fn default() -> Recorder {
        Recorder::new()
    }
}

/// A histogram from 1 µs to one hour.
pub fn new_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).unwrap_or_else(|_| {
        Histogram::new(3).unwrap_or_else(|_| unreachable!("3 significant digits is valid"))
    })
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

fn record(h: &Mutex<Histogram<u64>>, micros: u64) {
    let _ = lock(h).record(micros.max(1));
}

/// How a session reaches its peer.
#[derive(Clone)]
pub enum Path {
    /// Through the relay: the two parties' client options and the endpoints to use.
    Relayed {
        /// Helper's options.
        helper: Box<ClientOptions>,
        /// Sharer's options.
        sharer: Box<ClientOptions>,
        /// Client endpoint for the helper.
        helper_endpoint: quinn::Endpoint,
        /// Client endpoint for the sharer.
        sharer_endpoint: quinn::Endpoint,
    },
    /// Peer to peer: the helper dials the sharer's endpoint directly.
    Direct {
        /// The sharers' listening endpoint, which hands each session its own connection.
        sharers: Arc<DirectAcceptor>,
        /// Where it listens.
        sharer_addr: std::net::SocketAddr,
        /// The helper's endpoint, configured to trust the sharer's certificate.
        helper_endpoint: quinn::Endpoint,
    },
}

/// One of the direct baseline's listening endpoints, shared by its sessions: it hands each
/// accepted connection to the session that dialled it, known by the TLS server name the
/// helper used (`session-<index>`; the sharer's certificate is pinned, so the name is free).
/// Without this, concurrent sessions would take each other's connections in accept order.
pub struct DirectAcceptor {
    waiting:
        Mutex<std::collections::HashMap<String, tokio::sync::oneshot::Sender<quinn::Connection>>>,
}

impl DirectAcceptor {
    /// Starts accepting on `endpoint` until it closes.
    pub fn start(endpoint: quinn::Endpoint) -> Arc<DirectAcceptor> {
        let acceptor = Arc::new(DirectAcceptor {
            waiting: Mutex::new(std::collections::HashMap::new()),
        });
        let routes = acceptor.clone();
        tokio::spawn(async move {
            while let Some(incoming) = endpoint.accept().await {
                let routes = routes.clone();
                tokio::spawn(async move {
                    let Ok(connection) = incoming.await else {
                        return;
                    };
                    let name = connection
                        .handshake_data()
                        .and_then(|d| d.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
                        .and_then(|d| d.server_name);
                    let waiting = name.and_then(|n| {
                        routes
                            .waiting
                            .lock()
                            .unwrap_or_else(|p| p.into_inner())
                            .remove(&n)
                    });
                    if let Some(session) = waiting {
                        let _ = session.send(connection);
                    }
                });
            }
        });
        acceptor
    }

    /// Registers session `name` before it dials; resolves to its accepted connection.
    fn expect(&self, name: &str) -> tokio::sync::oneshot::Receiver<quinn::Connection> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        self.waiting
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(name.to_string(), tx);
        rx
    }
}

/// What one session does, and until when.
#[derive(Debug, Clone, Copy)]
struct Plan {
    workload: Workload,
    stalled: bool,
    until: Instant,
}

/// Runs one session from setup to end; failures are counted, never returned.
pub async fn session(
    index: usize,
    path: Path,
    workload: Workload,
    until: Instant,
    rec: Arc<Recorder>,
) {
    let plan = Plan {
        workload,
        stalled: index < workload.stalled_sessions,
        until,
    };
    // However the relay or a peer misbehaves, a session gives up this long after the
    // deadline: a load generator that hangs measures nothing.
    let give_up = tokio::time::Instant::from_std(until) + GRACE;
    let run = async {
        match path {
            Path::Relayed {
                helper,
                sharer,
                helper_endpoint,
                sharer_endpoint,
            } => {
                relayed(
                    *helper,
                    *sharer,
                    &helper_endpoint,
                    &sharer_endpoint,
                    plan,
                    &rec,
                )
                .await
            }
            Path::Direct {
                sharers,
                sharer_addr,
                helper_endpoint,
            } => direct(index, &sharers, sharer_addr, &helper_endpoint, plan, &rec).await,
        }
    };
    let Ok(ok) = tokio::time::timeout_at(give_up, run).await else {
        rec.error_named("did_not_finish".into());
        rec.live.failed.fetch_add(1, Ordering::Relaxed);
        return;
    };
    match ok {
        Ok(true) => rec.live.done.fetch_add(1, Ordering::Relaxed),
        // Set up, but its traffic failed (already counted by name): a failed session.
        Ok(false) => rec.live.failed.fetch_add(1, Ordering::Relaxed),
        Err(e) => {
            tracing::debug!(error = %e, "session failed");
            rec.error(&e);
            rec.live.failed.fetch_add(1, Ordering::Relaxed)
        }
    };
}

async fn relayed(
    helper_options: ClientOptions,
    sharer_options: ClientOptions,
    helper_endpoint: &quinn::Endpoint,
    sharer_endpoint: &quinn::Endpoint,
    plan: Plan,
    rec: &Arc<Recorder>,
) -> Result<bool, ClientError> {
    let started = Instant::now();
    let (mut helper_options, mut sharer_options) = (helper_options, sharer_options);
    helper_options.packet_path = plan.workload.packet_path;
    sharer_options.packet_path = plan.workload.packet_path;
    let (mut helper, mut sharer) = if plan.workload.direct_path || plan.workload.packet_path {
        // A direct path and the packet path need the client's own socket (the one its
        // relay connection uses).
        helper_options.direct_path = plan.workload.direct_path;
        sharer_options.direct_path = plan.workload.direct_path;
        (
            Client::connect(helper_options).await?,
            Client::connect(sharer_options).await?,
        )
    } else {
        (
            Client::connect_from(helper_endpoint, helper_options).await?,
            Client::connect_from(sharer_endpoint, sharer_options).await?,
        )
    };
    let created = helper.create_session(Mode::FullControl).await?;
    sharer.join(&created.code).await?;
    helper.wait_for_sharer().await?;
    let sharer_start = sharer.accept().await?;
    let helper_start = helper.wait_for_start().await?;
    // With protection (the default), a session is set up once its keys are agreed.
    let (helper_channels, sharer_channels) = tokio::join!(
        secure::channels(&helper, &helper_start, Role::Helper),
        secure::channels(&sharer, &sharer_start, Role::Sharer)
    );
    let (helper_channels, sharer_channels) = (helper_channels?, sharer_channels?);
    record(&rec.setup, started.elapsed().as_micros() as u64);
    rec.live.up.fetch_add(1, Ordering::Relaxed);
    if plan.workload.direct_path {
        // Traffic starts once the attempt is over, so it measures the path it ends on.
        let (helper_path, sharer_path) =
            tokio::join!(helper.direct_outcome(), sharer.direct_outcome());
        // Not an error either way: a session without a direct path is relayed.
        if let (DirectOutcome::Direct { took, .. }, DirectOutcome::Direct { .. }) =
            (helper_path, sharer_path)
        {
            rec.live.direct_paths.fetch_add(1, Ordering::Relaxed);
            record(&rec.direct_setup, took.as_micros() as u64);
        }
    }
    let traffic = traffic(helper_channels, sharer_channels, plan, rec.clone()).await;
    if let Err(e) = &traffic {
        rec.error_named(e.clone());
    }
    helper.end_session().await?;
    sharer.wait_for_end().await;
    helper.close().await;
    sharer.close().await;
    Ok(traffic.is_ok())
}

async fn direct(
    index: usize,
    sharers: &DirectAcceptor,
    sharer_addr: std::net::SocketAddr,
    helper_endpoint: &quinn::Endpoint,
    plan: Plan,
    rec: &Arc<Recorder>,
) -> Result<bool, ClientError> {
    let started = Instant::now();
    let name = format!("session-{index}");
    let accepted = sharers.expect(&name);
    let helper = helper_endpoint
        .connect(sharer_addr, &name)?
        .await
        .map_err(ClientError::from_handshake)?;
    let sharer = accepted
        .await
        .map_err(|_| ClientError::Unexpected("the sharer endpoint closed".into()))?;
    let (helper_data, sharer_data) = (
        UnsealedChannels::over(helper.clone()),
        UnsealedChannels::over(sharer.clone()),
    );
    let (helper_channels, sharer_channels) = match plan.workload.e2e {
        None => (
            SessionChannels::PlaintextForMeasurement(helper_data),
            SessionChannels::PlaintextForMeasurement(sharer_data),
        ),
        Some(suite) => {
            // No relay announces anything here: both parties live in this process, so the
            // exchange runs in memory, then every frame is sealed as through the relay.
            let (h, s) = local_keys(&name, suite)?;
            (
                SessionChannels::Protected(SecureSession::with_keys(helper_data, h)),
                SessionChannels::Protected(SecureSession::with_keys(sharer_data, s)),
            )
        }
    };
    record(&rec.setup, started.elapsed().as_micros() as u64);
    rec.live.up.fetch_add(1, Ordering::Relaxed);
    let traffic = traffic(helper_channels, sharer_channels, plan, rec.clone()).await;
    if let Err(e) = &traffic {
        rec.error_named(e.clone());
    }
    helper.close(0u32.into(), b"done");
    sharer.close(0u32.into(), b"done");
    Ok(traffic.is_ok())
}

/// Both parties' keys for the direct baseline, agreed in memory.
fn local_keys(
    session: &str,
    suite: Suite,
) -> Result<
    (
        remote_help_sdk::e2e::SessionKeys,
        remote_help_sdk::e2e::SessionKeys,
    ),
    ClientError,
> {
    use remote_help_sdk::e2e::{KeyExchange, Party, Transcript};
    let (h, s) = (KeyExchange::start()?, KeyExchange::start()?);
    let party = |subject: &str| Party {
        tenant: "loadtest".into(),
        subject: subject.into(),
    };
    let transcript = Transcript {
        session_id: session.into(),
        helper: party("helper"),
        sharer: party("sharer"),
        helper_suites: vec![suite.id()],
        sharer_suites: vec![suite.id()],
        suite,
        helper_key: h.public_key(),
        sharer_key: s.public_key(),
    };
    Ok((
        h.finish(Role::Helper, &transcript)?,
        s.finish(Role::Sharer, &transcript)?,
    ))
}

/// The channels of one session, until the deadline. Returns a failure's name.
async fn traffic(
    mut helper: SessionChannels,
    mut sharer: SessionChannels,
    plan: Plan,
    rec: Arc<Recorder>,
) -> Result<(), String> {
    let Plan {
        workload,
        stalled,
        until,
    } = plan;
    if workload.idle {
        tokio::time::sleep_until(until.into()).await;
        return Ok(());
    }
    let until = tokio::time::Instant::from_std(until);
    let mut tasks = tokio::task::JoinSet::new();
    let screen = sharer.open_channel(Channel::Screen).await.map_err(name)?;
    tasks.spawn(send_screen(screen, workload, until, rec.clone()));
    let sharer_chat = sharer.open_channel(Channel::Chat).await.map_err(name)?;
    let input = helper.open_channel(Channel::Input).await.map_err(name)?;
    tasks.spawn(send_input(input, workload, until, rec.clone()));
    if workload.chat {
        let chat = helper.open_channel(Channel::Chat).await.map_err(name)?;
        tasks.spawn(send_chat(chat, until));
    }
    // The helper receives screen and the sharer's chat (echoes); the sharer receives input
    // (and chat). Accept what each side expects.
    let helper_expects = 2;
    let sharer_expects = if workload.chat { 2 } else { 1 };
    let mut sharer_chat = Some(sharer_chat);
    for _ in 0..sharer_expects {
        let (channel, receiver) = sharer.accept_channel().await.map_err(name)?;
        match channel {
            Channel::Input => {
                let echo = sharer_chat.take().ok_or("two input channels")?;
                tasks.spawn(echo_input(
                    receiver,
                    echo,
                    workload.chat,
                    until,
                    rec.clone(),
                ));
            }
            _ => {
                tasks.spawn(drain(receiver, rec.clone()));
            }
        }
    }
    for _ in 0..helper_expects {
        let (channel, receiver) = helper.accept_channel().await.map_err(name)?;
        match channel {
            Channel::Screen => tasks.spawn(receive_screen(
                receiver,
                stalled.then_some(until),
                rec.clone(),
            )),
            _ => tasks.spawn(receive_echoes(receiver, rec.clone())),
        };
    }
    // Senders stop at the deadline and finish their streams; receivers end when they see
    // the finish. A failure is counted once per session.
    let mut failure = Ok(());
    while let Some(result) = tasks.join_next().await {
        match result {
            Ok(Ok(())) => {}
            Ok(Err(e)) if failure.is_ok() => failure = Err(e),
            Ok(Err(_)) => {}
            Err(e) if failure.is_ok() => failure = Err(format!("task: {e}")),
            Err(_) => {}
        }
    }
    failure
}

fn name(e: ClientError) -> String {
    match e.code() {
        Some(code) => code.as_str_name().to_string(),
        None => "stream".to_string(),
    }
}

fn stamped(rec: &Recorder, seq: u64, size: usize, tag: Option<u8>) -> Bytes {
    let mut frame = BytesMut::with_capacity(size.max(17));
    if let Some(tag) = tag {
        frame.put_u8(tag);
    }
    frame.put_u64(rec.now_us());
    frame.put_u64(seq);
    let rest = size.saturating_sub(frame.len());
    frame.put_bytes(0, rest);
    frame.freeze()
}

fn stamp_of(frame: &[u8], offset: usize) -> Option<u64> {
    let bytes: [u8; 8] = frame.get(offset..offset + 8)?.try_into().ok()?;
    Some(u64::from_be_bytes(bytes))
}

async fn send_screen(
    mut screen: Sender,
    workload: Workload,
    until: tokio::time::Instant,
    rec: Arc<Recorder>,
) -> Result<(), String> {
    let mut seq = 0u64;
    if workload.screen_bits_per_sec == 0 {
        while tokio::time::Instant::now() < until {
            screen
                .send_bytes(stamped(&rec, seq, workload.frame_bytes, None))
                .await
                .map_err(name)?;
            seq += 1;
        }
    } else {
        let period = Duration::from_secs_f64(
            workload.frame_bytes as f64 * 8.0 / workload.screen_bits_per_sec as f64,
        );
        let mut next = tokio::time::Instant::now();
        while next < until {
            tokio::time::sleep_until(next).await;
            screen
                .send_bytes(stamped(&rec, seq, workload.frame_bytes, None))
                .await
                .map_err(name)?;
            seq += 1;
            next += period;
            // A frame whose slot passed while flow control held the sender is skipped, as
            // a screen encoder would: that is a dropped frame.
            let now = tokio::time::Instant::now();
            while next + period < now {
                next += period;
                rec.live.frames_dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }
    screen.finish().await.map_err(name)
}

async fn send_input(
    mut input: Sender,
    workload: Workload,
    until: tokio::time::Instant,
    rec: Arc<Recorder>,
) -> Result<(), String> {
    if workload.input_per_sec > 0 {
        let period = Duration::from_secs_f64(1.0 / f64::from(workload.input_per_sec));
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut seq = 0u64;
        loop {
            ticks.tick().await;
            if tokio::time::Instant::now() >= until {
                break;
            }
            input
                .send_bytes(stamped(&rec, seq, 16, None))
                .await
                .map_err(name)?;
            seq += 1;
        }
    } else {
        tokio::time::sleep_until(until).await;
    }
    input.finish().await.map_err(name)
}

async fn send_chat(mut chat: Sender, until: tokio::time::Instant) -> Result<(), String> {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        ticks.tick().await;
        if tokio::time::Instant::now() >= until {
            break;
        }
        let mut message = BytesMut::with_capacity(100);
        message.put_u8(CHAT);
        message.put_bytes(b'x', 99);
        chat.send_bytes(message.freeze()).await.map_err(name)?;
    }
    chat.finish().await.map_err(name)
}

/// Sharer: echoes every input event on its chat channel (and chats once a second).
async fn echo_input(
    mut input: Receiver,
    mut chat: Sender,
    chatty: bool,
    until: tokio::time::Instant,
    rec: Arc<Recorder>,
) -> Result<(), String> {
    let mut ticks = tokio::time::interval(Duration::from_secs(1));
    loop {
        tokio::select! {
            frame = input.recv() => match frame.map_err(name)? {
                Some(event) => {
                    rec.live.bytes.fetch_add(event.len() as u64, Ordering::Relaxed);
                    let mut echo = BytesMut::with_capacity(1 + event.len());
                    echo.put_u8(ECHO);
                    echo.put_slice(&event);
                    chat.send_bytes(echo.freeze()).await.map_err(name)?;
                }
                None => break,
            },
            _ = ticks.tick(), if chatty && tokio::time::Instant::now() < until => {
                let mut message = BytesMut::with_capacity(100);
                message.put_u8(CHAT);
                message.put_bytes(b'y', 99);
                chat.send_bytes(message.freeze()).await.map_err(name)?;
            }
        }
    }
    chat.finish().await.map_err(name)
}

/// Helper: times each echoed input event.
async fn receive_echoes(mut chat: Receiver, rec: Arc<Recorder>) -> Result<(), String> {
    while let Some(frame) = chat.recv().await.map_err(name)? {
        rec.live
            .bytes
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        if frame.first() == Some(&ECHO)
            && let Some(sent) = stamp_of(&frame, 1)
        {
            record(&rec.input_rtt, rec.now_us().saturating_sub(sent));
            rec.live.input_round_trips.fetch_add(1, Ordering::Relaxed);
        }
    }
    Ok(())
}

async fn receive_screen(
    mut screen: Receiver,
    stalled_until: Option<tokio::time::Instant>,
    rec: Arc<Recorder>,
) -> Result<(), String> {
    if let Some(until) = stalled_until {
        // A slow reader: reads nothing until the deadline, then catches up.
        tokio::time::sleep_until(until).await;
    }
    while let Some(frame) = screen.recv().await.map_err(name)? {
        rec.live
            .bytes
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
        rec.live.frames.fetch_add(1, Ordering::Relaxed);
        if let Some(sent) = stamp_of(&frame, 0) {
            record(&rec.screen, rec.now_us().saturating_sub(sent));
        }
    }
    Ok(())
}

async fn drain(mut channel: Receiver, rec: Arc<Recorder>) -> Result<(), String> {
    while let Some(frame) = channel.recv().await.map_err(name)? {
        rec.live
            .bytes
            .fetch_add(frame.len() as u64, Ordering::Relaxed);
    }
    Ok(())
}
