//! Direct paths for the SDK: the offer of candidates, the synchronised hole punch the relay
//! schedules, the pinned peer-to-peer QUIC connection, and the inbox that hands each
//! channel's streams to its receiver whichever path they came on.
//!
//! One UDP socket carries the relay connection and the direct attempt, so the NAT mapping
//! the relay observed is the one the peer dials. The helper dials (QUIC client), the sharer
//! listens (QUIC server for the attempt's duration) and sends small punch packets towards
//! every peer address so that its NAT lets the helper's handshake in. Both present
//! per-client self-signed certificates whose fingerprints reached the peer through the relay;
//! neither accepts any other.

use std::collections::VecDeque;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use futures_util::stream::FuturesUnordered;
use futures_util::{SinkExt, StreamExt};
use remote_help_proto::ErrorCode;
use remote_help_proto::framing::{CONTINUATION, channel_from_tag};
use remote_help_proto::v1::{self, client_to_relay::Msg as Out};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{ClientError, Writer};
use crate::path::{MAX_CANDIDATES, canonical, dialable};
use crate::session::{Channel, Mode, Role, may_send};
use crate::tls::{Fingerprint, ServerIdentity};

/// The TLS name a direct dialler uses (the certificate is pinned, so the name is not checked).
const DIRECT_NAME: &str = "remote-help-direct";
/// What a listener sends to open its NAT towards the peer: too short to be a QUIC packet,
/// so the peer's endpoint drops it unanswered.
const PUNCH: &[u8] = b"rhp1";
/// The direct connection's loss recovery starts from the relay's estimate, but never below
/// this (a loopback estimate of zero would retransmit at once).
const MIN_INITIAL_RTT: Duration = Duration::from_millis(5);
/// How long a receiver holds a direct frame the session's mode does not allow (yet) before
/// refusing it: the `ModeChanged` that allows it may reach this side a little after the
/// peer, which heard it first, sent the frame.
pub(crate) const MODE_GRACE: Duration = Duration::from_secs(1);
/// Longest path check (session id one way, "ok" the other).
const PATH_CHECK_TIMEOUT: Duration = Duration::from_secs(2);

/// Where a client's direct path stands.
#[derive(Debug, Clone, Default)]
pub enum DirectState {
    /// No direct path offered in the current session.
    #[default]
    Off,
    /// The relay offered one; the attempt is running.
    Trying,
    /// The session's channels may use this connection.
    Up {
        /// The peer-to-peer connection.
        connection: quinn::Connection,
        /// The peer address it reached.
        peer: SocketAddr,
        /// From the offer's receipt (right after `SessionStarted`) to the path check passing.
        took: Duration,
    },
    /// The attempt failed; the session stays on the relay.
    Failed(String),
    /// The direct path was up and was lost; the session fell back to the relay.
    Lost(String),
}

/// How a direct attempt ended, as [`super::Client::direct_outcome`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DirectOutcome {
    /// No direct path was offered (the tenant is `relay_only`, or a party offered no
    /// candidates).
    NotOffered,
    /// The path is up.
    Direct {
        /// The peer address it reached.
        peer: SocketAddr,
        /// From the offer's receipt to the path being usable.
        took: Duration,
    },
    /// The attempt failed, or the path was later lost: the session is relayed.
    Relayed(String),
}

/// What the session allows, as the client last heard from the relay (`SessionStarted`,
/// `ModeChanged`). On the relay path the relay enforces it; on a direct path nobody in the
/// middle can, so each client checks what its peer sends against it (and what it sends).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SessionView {
    pub(crate) mode: Mode,
    pub(crate) chat_allowed: bool,
    /// This client's role (the peer has the other).
    pub(crate) role: Role,
}

impl SessionView {
    /// Whether the peer may send on `channel` now.
    pub(crate) fn peer_may_send(&self, channel: Channel) -> bool {
        let peer = match self.role {
            Role::Helper => Role::Sharer,
            Role::Sharer => Role::Helper,
        };
        may_send(peer, channel, self.mode, self.chat_allowed)
    }

    /// Whether the peer could send on `channel` in this session in some mode (direction and
    /// tenant rules; the mode may still be raised).
    pub(crate) fn peer_could_send(&self, channel: Channel) -> bool {
        SessionView {
            mode: Mode::Unattended,
            ..*self
        }
        .peer_may_send(channel)
    }

    /// Whether this client may send on `channel` now.
    pub(crate) fn may_send(&self, channel: Channel) -> bool {
        may_send(self.role, channel, self.mode, self.chat_allowed)
    }
}

/// The data plane's view of the direct path: which connection to use, and the inbox of
/// incoming streams.
#[derive(Clone)]
pub(crate) struct DirectLink {
    pub(crate) state: watch::Receiver<DirectState>,
    pub(crate) inbox: Arc<Inbox>,
    pub(crate) view: watch::Receiver<Option<SessionView>>,
}

impl DirectLink {
    /// What the session allows now (`None` once it ended).
    pub(crate) fn view(&self) -> Option<SessionView> {
        *self.view.borrow()
    }

    /// Whether the peer may send on `channel`: now, or within [`MODE_GRACE`] (a raised
    /// mode this side has not read yet).
    pub(crate) async fn peer_may_send_soon(&self, channel: Channel) -> bool {
        let allowed = |v: &Option<SessionView>| v.is_some_and(|v| v.peer_may_send(channel));
        let mut view = self.view.clone();
        tokio::time::timeout(MODE_GRACE, view.wait_for(allowed))
            .await
            .is_ok_and(|r| r.is_ok())
    }

    /// The direct connection, while it is up.
    pub(crate) fn usable(&self) -> Option<quinn::Connection> {
        usable(&self.state.borrow())
    }

    /// Whether a direct path was offered in this session (so an empty frame is a move marker).
    pub(crate) fn offered(&self) -> bool {
        !matches!(&*self.state.borrow(), DirectState::Off)
    }
}

/// One incoming data stream with its tag read.
pub(crate) struct Incoming {
    pub(crate) stream: quinn::RecvStream,
    /// It came on the direct connection.
    pub(crate) direct: bool,
}

#[derive(Default)]
struct InboxQueues {
    /// Channels the peer opened: what `accept_channel` returns.
    fresh: VecDeque<(Channel, Incoming)>,
    /// Continuations of channels that moved, by channel index.
    continued: [VecDeque<Incoming>; 4],
    /// The relay connection failed: nothing more will come.
    relay_closed: Option<quinn::ConnectionError>,
    /// Channels `accept_channel` has handed out in this session (a continuation for a
    /// channel with no receiver and nothing queued is that channel's first stream).
    receiving: [bool; 4],
    /// Bumped when a session ends: waiters of the old session give up.
    generation: u64,
}

/// Every incoming data stream of a client that may go direct, sorted by its tag: a channel's
/// first stream for `accept_channel`, continuations for the channel's receiver.
#[derive(Default)]
pub(crate) struct Inbox {
    queues: Mutex<InboxQueues>,
    notify: Notify,
}

impl Inbox {
    fn lock(&self) -> std::sync::MutexGuard<'_, InboxQueues> {
        self.queues.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn file(&self, channel: Channel, continuation: bool, incoming: Incoming) {
        {
            let mut queues = self.lock();
            // Only a continuation on the relay can be a channel's first stream here (its
            // first stream went on a direct path that died); a direct one always follows a
            // relayed stream, which may still be on its way.
            let first = !incoming.direct
                && !queues.receiving[channel.index()]
                && !queues.fresh.iter().any(|(c, _)| *c == channel);
            if continuation && !first {
                queues.continued[channel.index()].push_back(incoming);
            } else {
                // A continuation of a channel whose first stream never arrived (it was on a
                // path that died) is where that channel starts for this side.
                queues.fresh.push_back((channel, incoming));
            }
        }
        self.notify.notify_waiters();
    }

    /// The next channel the peer opened.
    pub(crate) async fn next_fresh(&self) -> Result<(Channel, Incoming), ClientError> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut queues = self.lock();
                if let Some(next) = queues.fresh.pop_front() {
                    queues.receiving[next.0.index()] = true;
                    return Ok(next);
                }
                if let Some(e) = &queues.relay_closed {
                    return Err(ClientError::from_connection(e.clone()));
                }
            }
            notified.await;
        }
    }

    /// The stream that continues `channel` after it moved (in the current session).
    pub(crate) async fn continuation(&self, channel: Channel) -> Result<Incoming, ClientError> {
        let generation = self.lock().generation;
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut queues = self.lock();
                if queues.generation != generation {
                    return Err(ClientError::Unexpected(
                        "the session ended while the channel was moving".into(),
                    ));
                }
                if let Some(next) = queues.continued[channel.index()].pop_front() {
                    return Ok(next);
                }
                if let Some(e) = &queues.relay_closed {
                    return Err(ClientError::from_connection(e.clone()));
                }
            }
            notified.await;
        }
    }

    /// The connection the streams came on closed with `why`: whoever waits for a channel
    /// hears it.
    pub(crate) fn close(&self, why: quinn::ConnectionError) {
        self.lock().relay_closed.get_or_insert(why);
        self.notify.notify_waiters();
    }

    /// Forgets continuations of an ended session and wakes whoever waits for one.
    fn end_session(&self) {
        {
            let mut queues = self.lock();
            for queue in &mut queues.continued {
                queue.clear();
            }
            queues.receiving = [false; 4];
            queues.generation += 1;
        }
        self.notify.notify_waiters();
    }

    /// Accepts every data stream of `connection` into the inbox until it closes. Streams on
    /// the direct connection are checked against what the session allows the peer to send
    /// (the relay checks its own): others are stopped.
    pub(crate) async fn accept_from(
        self: Arc<Self>,
        connection: quinn::Connection,
        direct: Option<watch::Receiver<Option<SessionView>>>,
    ) {
        let mut tagging = FuturesUnordered::new();
        loop {
            tokio::select! {
                accepted = connection.accept_uni() => match accepted {
                    Ok(mut stream) => tagging.push(async move {
                        let mut tag = [0u8; 1];
                        stream.read_exact(&mut tag).await.ok().map(|()| (tag[0], stream))
                    }),
                    Err(e) => {
                        if direct.is_none() {
                            self.lock().relay_closed = Some(e);
                            self.notify.notify_waiters();
                        }
                        return;
                    }
                },
                Some(tagged) = tagging.next() => {
                    let Some((tag, mut stream)) = tagged else { continue };
                    let Some(channel) = channel_from_tag(tag).ok().and_then(Channel::from_wire) else {
                        tracing::debug!(tag, "data stream with an unknown channel tag ignored");
                        continue;
                    };
                    if let Some(view) = &direct {
                        // Direction and tenant rules now; the mode is checked frame by frame by
                        // the receiver (a raised mode may reach this side a moment after the
                        // peer's first input).
                        let allowed = view.borrow().is_some_and(|v| v.peer_could_send(channel));
                        if !allowed {
                            tracing::warn!(channel = channel.as_str(), "direct stream the session does not allow refused");
                            let _ = stream.stop(ErrorCode::ProtocolViolation.to_quic().into());
                            continue;
                        }
                    }
                    self.file(channel, tag & CONTINUATION != 0, Incoming { stream, direct: direct.is_some() });
                }
            }
        }
    }
}

/// Clears the endpoint's server config when dropped: the listener accepts only during its
/// attempt.
struct StopAccepting(quinn::Endpoint);

impl Drop for StopAccepting {
    fn drop(&mut self) {
        self.0.set_server_config(None);
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// A client's direct-path machinery (present when `ClientOptions::direct_path` is on).
pub(crate) struct DirectSetup {
    identity: Arc<ServerIdentity>,
    /// The endpoint's socket, shared, for punch packets.
    raw: Arc<std::net::UdpSocket>,
    /// The relay connection.
    relay: quinn::Connection,
    state: Arc<watch::Sender<DirectState>>,
    pub(crate) inbox: Arc<Inbox>,
    /// What the current session allows, as last heard from the relay.
    view: watch::Sender<Option<SessionView>>,
    /// Files the relay connection's incoming streams into the inbox.
    _relay_acceptor: AbortOnDrop,
    /// The current attempt (and, once up, the watch over the direct connection).
    attempt: Option<AbortOnDrop>,
}

impl DirectSetup {
    /// Sets up direct paths for a client on `relay` whose endpoint's socket is `raw`.
    pub(crate) fn new(
        relay: &quinn::Connection,
        raw: Arc<std::net::UdpSocket>,
    ) -> Result<DirectSetup, ClientError> {
        let identity = Arc::new(ServerIdentity::self_signed(vec![DIRECT_NAME.into()])?);
        let inbox = Arc::new(Inbox::default());
        let relay_acceptor =
            AbortOnDrop(tokio::spawn(inbox.clone().accept_from(relay.clone(), None)));
        Ok(DirectSetup {
            identity,
            raw,
            relay: relay.clone(),
            state: Arc::new(watch::Sender::new(DirectState::Off)),
            inbox,
            view: watch::Sender::new(None),
            _relay_acceptor: relay_acceptor,
            attempt: None,
        })
    }

    /// The `OfferCandidates` message: the socket's local addresses and this certificate.
    pub(crate) fn offer(&self, local: SocketAddr) -> v1::OfferCandidates {
        v1::OfferCandidates {
            addresses: local_candidates(local)
                .iter()
                .map(ToString::to_string)
                .collect(),
            certificate_sha256: self.identity.fingerprint().0.to_vec(),
        }
    }

    /// The endpoint moved to another socket: punch from that one.
    pub(crate) fn set_socket(&mut self, raw: Arc<std::net::UdpSocket>) {
        self.raw = raw;
    }

    /// The direct connection, while it is up.
    pub(crate) fn usable(&self) -> Option<quinn::Connection> {
        usable(&self.state.borrow())
    }

    /// The endpoint's socket (a redirected client's next connection uses it too).
    pub(crate) fn socket(&self) -> Arc<std::net::UdpSocket> {
        self.raw.clone()
    }

    /// The data plane's handle.
    pub(crate) fn link(&self) -> DirectLink {
        DirectLink {
            state: self.state.subscribe(),
            inbox: self.inbox.clone(),
            view: self.view.subscribe(),
        }
    }

    /// The session (re)started or changed mode: what it allows now.
    pub(crate) fn set_view(&self, view: SessionView) {
        self.view.send_replace(Some(view));
    }

    /// Changes the mode of the current session's view.
    pub(crate) fn set_mode(&self, mode: Mode) {
        self.view.send_modify(|v| {
            if let Some(v) = v {
                v.mode = mode;
            }
        });
    }

    /// The current state.
    pub(crate) fn state(&self) -> watch::Receiver<DirectState> {
        self.state.subscribe()
    }

    /// Starts the attempt the relay offered.
    pub(crate) fn start(
        &mut self,
        offer: v1::DirectPathOffer,
        endpoint: quinn::Endpoint,
        writer: Weak<tokio::sync::Mutex<Writer>>,
        transport: &crate::transport::ClientTransport,
        packet: Option<Arc<super::peer::PeerRoutes>>,
    ) {
        self.stop_attempt();
        let peer_fingerprint = <[u8; 32]>::try_from(offer.peer_certificate_sha256.as_slice()).ok();
        let local_v6 = endpoint.local_addr().is_ok_and(|a| a.is_ipv6());
        let attempt = Attempt {
            received: Instant::now(),
            peers: offer
                .peer_addresses
                .iter()
                .filter_map(|a| a.parse::<SocketAddr>().ok())
                .filter_map(|peer| Some((canonical(peer), reachable(peer, local_v6)?)))
                .collect(),
            attempts: offer.attempts.max(1),
            peer: peer_fingerprint.map(Fingerprint),
            offer,
            view: self.view.subscribe(),
            relay: self.relay.clone(),
            endpoint,
            identity: self.identity.clone(),
            raw: self.raw.clone(),
            state: self.state.clone(),
            inbox: self.inbox.clone(),
            writer,
            transport: *transport,
            packet,
        };
        self.state.send_replace(DirectState::Trying);
        self.attempt = Some(AbortOnDrop(tokio::spawn(attempt.run())));
    }

    /// Stops the current attempt and closes its direct connection.
    fn stop_attempt(&mut self) {
        self.attempt = None;
        if let DirectState::Up { connection, .. } = self.state.send_replace(DirectState::Off) {
            connection.close(0u32.into(), b"session ended");
        }
    }

    /// The session ended: stop the attempt, close the direct connection, forget the
    /// session's rules and continuations (waiters give up).
    pub(crate) fn end_session(&mut self) {
        self.stop_attempt();
        self.view.send_replace(None);
        self.inbox.end_session();
    }
}

impl Drop for DirectSetup {
    fn drop(&mut self) {
        // Channels and receivers hold the watch: close the direct connection explicitly.
        self.end_session();
        // The relay acceptor stops with this: whoever waits for a channel hears so.
        self.inbox
            .lock()
            .relay_closed
            .get_or_insert(quinn::ConnectionError::LocallyClosed);
        self.inbox.notify.notify_waiters();
    }
}

/// One direct attempt, from the offer to the path's end.
struct Attempt {
    received: Instant,
    offer: v1::DirectPathOffer,
    /// The peer's addresses this socket can send to: as offered (canonical), and in the form
    /// the socket sends to.
    peers: Vec<(SocketAddr, SocketAddr)>,
    /// Attempts in all (at least one).
    attempts: u32,
    /// `None` when the offer's certificate hash is not a SHA-256 (the attempt then fails).
    peer: Option<Fingerprint>,
    view: watch::Receiver<Option<SessionView>>,
    /// The relay connection: the direct one closes with it.
    relay: quinn::Connection,
    endpoint: quinn::Endpoint,
    identity: Arc<ServerIdentity>,
    raw: Arc<std::net::UdpSocket>,
    state: Arc<watch::Sender<DirectState>>,
    inbox: Arc<Inbox>,
    writer: Weak<tokio::sync::Mutex<Writer>>,
    transport: crate::transport::ClientTransport,
    /// The session runs on the packet path: the attempt only finds the peer's address, and
    /// the peer connection migrates there (it carries no channels itself).
    packet: Option<Arc<super::peer::PeerRoutes>>,
}

impl Attempt {
    async fn run(self) {
        // The listener commits when it answers a path check; the dialler, when it reads
        // the answer: it gets one attempt interval (two round trips or more) longer, so that
        // an answer sent just before the listener's deadline still counts on both sides.
        let mut deadline = self.received + ms(self.offer.deadline_ms);
        if self.offer.dial {
            deadline += ms(self.offer.attempt_interval_ms).min(PATH_CHECK_TIMEOUT);
        }
        let outcome = match self.peer {
            None => Err("the offer's peer certificate hash is not a SHA-256".to_string()),
            Some(peer) => tokio::time::timeout_at(deadline, async {
                if self.offer.dial {
                    self.dial(peer).await
                } else {
                    self.listen(peer).await
                }
            })
            .await
            .unwrap_or_else(|_| Err("no direct connection before the deadline".into())),
        };
        let (connection, peer) = match outcome {
            Ok(up) => up,
            Err(why) => {
                tracing::info!(reason = %why, "direct path failed; staying on the relay");
                self.state.send_replace(DirectState::Failed(why));
                self.report(false, None).await;
                return;
            }
        };
        let took = self.received.elapsed();
        if let Some(routes) = self.packet.clone() {
            return self.migrate(routes, connection, peer, took).await;
        }
        tracing::info!(%peer, took_ms = took.as_millis() as u64, "direct path up");
        self.state.send_replace(DirectState::Up {
            connection: connection.clone(),
            peer,
            took,
        });
        self.report(true, Some(peer)).await;
        // Streams the peer opens on the direct connection go to the inbox until it ends;
        // the direct connection does not outlive the relay connection (the session).
        let accepting = self
            .inbox
            .clone()
            .accept_from(connection.clone(), Some(self.view.clone()));
        let ended = async {
            tokio::select! {
                why = connection.closed() => why.to_string(),
                why = self.relay.closed() => {
                    connection.close(0u32.into(), b"relay connection lost");
                    format!("the relay connection was lost: {why}")
                }
            }
        };
        let (_, why) = tokio::join!(accepting, ended);
        tracing::info!(reason = %why, "direct path lost; channels fall back to the relay");
        self.state
            .send_replace(DirectState::Lost(format!("direct path lost: {why}")));
        self.report(false, None).await;
    }

    /// The packet path's use of a found direct path. The attempt's connection only proved
    /// that the path carries data both ways; the dialler (helper) closes it once its path
    /// check passed, and the listener (sharer, the peer connection's dialling side) waits
    /// for that close, then sends the peer connection straight to the helper's address, which
    /// the helper's connection migrates to with QUIC's path validation. When nothing comes
    /// from that address for [`super::peer::DIRECT_SILENCE`], the sharer sends through the
    /// relay again and the helper's connection migrates back.
    async fn migrate(
        self,
        routes: Arc<super::peer::PeerRoutes>,
        connection: quinn::Connection,
        peer: SocketAddr,
        took: Duration,
    ) {
        if self.offer.dial {
            connection.close(0u32.into(), b"path checked");
        } else {
            // The helper closes after reading the path check's answer: closing first could
            // lose that answer. Bounded: a close that never comes is as good.
            let _ = tokio::time::timeout(PATH_CHECK_TIMEOUT, connection.closed()).await;
            connection.close(0u32.into(), b"path checked");
            // The peer connection moves only once its handshake is done through the relay:
            // the helper drops handshake packets from a new address.
            tokio::select! {
                () = routes.established() => {}
                _ = self.relay.closed() => return,
            }
            routes.set_direct(Some(peer));
        }
        tracing::info!(%peer, took_ms = took.as_millis() as u64, "direct path up; the peer connection migrates to it");
        self.state.send_replace(DirectState::Up {
            connection,
            peer,
            took,
        });
        self.report(true, Some(peer)).await;
        if self.offer.dial {
            return;
        }
        let mut check = tokio::time::interval(super::peer::DIRECT_SILENCE / 6);
        loop {
            tokio::select! {
                _ = check.tick() => {}
                _ = self.relay.closed() => return,
            }
            if routes
                .direct_silent_for()
                .is_some_and(|silent| silent >= super::peer::DIRECT_SILENCE)
            {
                break;
            }
        }
        routes.set_direct(None);
        let why = format!(
            "nothing came on the direct path for {} s",
            super::peer::DIRECT_SILENCE.as_secs()
        );
        tracing::info!(reason = %why, "direct path lost; the peer connection goes through the relay again");
        self.state
            .send_replace(DirectState::Lost(format!("direct path lost: {why}")));
        self.report(false, None).await;
    }

    /// Tells the relay how the attempt went (the relay records the path in its audit log).
    async fn report(&self, established: bool, peer: Option<SocketAddr>) {
        let Some(writer) = self.writer.upgrade() else {
            return;
        };
        let message = v1::ClientToRelay {
            msg: Some(Out::DirectPathResult(v1::DirectPathResult {
                session_id: self.offer.session_id.clone(),
                established,
                peer_address: peer.map(|p| p.to_string()).unwrap_or_default(),
            })),
        };
        if let Err(e) = writer.lock().await.send(message).await {
            tracing::debug!(error = %e, "direct path result not sent");
        }
    }

    fn transport(&self) -> Arc<quinn::TransportConfig> {
        let estimate = ms(self.offer.rtt_estimate_ms).max(MIN_INITIAL_RTT);
        crate::transport::direct(&self.transport, estimate)
    }

    /// When attempt `n` (from 0) starts.
    fn attempt_at(&self, n: u32) -> Instant {
        self.received + ms(self.offer.start_in_ms) + ms(self.offer.attempt_interval_ms) * n
    }

    /// The helper's side: at each attempt, a handshake to every peer address; the first
    /// that completes and passes the path check wins.
    async fn dial(&self, peer: Fingerprint) -> Result<(quinn::Connection, SocketAddr), String> {
        let crypto = self
            .identity
            .direct_client_config(peer)
            .map_err(|e| e.to_string())?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.transport());
        let mut pending = FuturesUnordered::new();
        let mut next = 0;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(self.attempt_at(next)), if next < self.attempts => {
                    next += 1;
                    for &(peer, target) in &self.peers {
                        match self.endpoint.connect_with(config.clone(), target, DIRECT_NAME) {
                            Ok(connecting) => pending.push(async move { (peer, connecting.await) }),
                            Err(e) => tracing::debug!(%peer, error = %e, "direct dial not started"),
                        }
                    }
                }
                Some((peer, result)) = pending.next() => match result {
                    Ok(connection) => match check_path_dialler(&connection, &self.offer.session_id).await {
                        Ok(()) => return Ok((connection, peer)),
                        Err(e) => tracing::debug!(%peer, error = %e, "direct path check failed"),
                    },
                    Err(e) => tracing::debug!(%peer, error = %e, "direct handshake failed"),
                },
                else => return Err(format!(
                    "no peer address answered ({} tried, {} attempts)",
                    self.peers.len(),
                    self.attempts
                )),
            }
        }
    }

    /// The sharer's side: accept (only the pinned peer) while punching towards every peer
    /// address at each attempt.
    async fn listen(&self, peer: Fingerprint) -> Result<(quinn::Connection, SocketAddr), String> {
        let crypto = self
            .identity
            .direct_server_config(peer)
            .map_err(|e| e.to_string())?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(self.transport());
        self.endpoint.set_server_config(Some(config));
        // However this ends (done, deadline, aborted with the session), accept nothing more.
        let _accepting = StopAccepting(self.endpoint.clone());
        let peer_ips: Vec<IpAddr> = self.peers.iter().map(|(p, _)| p.ip()).collect();
        let mut pending = FuturesUnordered::new();
        let mut next = 0;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(self.attempt_at(next)), if next < self.attempts => {
                    next += 1;
                    for &(_, target) in &self.peers {
                        // Best effort: a failed punch is one fewer chance, not an error.
                        let _ = self.raw.send_to(PUNCH, target);
                    }
                }
                incoming = self.endpoint.accept() => match incoming {
                    // Only the peer's addresses get as far as a handshake (its NAT keeps the
                    // IP; a symmetric one may change the port).
                    Some(incoming) if !peer_ips.contains(&incoming.remote_address().ip().to_canonical()) => {
                        tracing::debug!(from = %incoming.remote_address(), "direct connection from a stranger refused");
                        incoming.refuse();
                    }
                    Some(incoming) => {
                        let session = self.offer.session_id.clone();
                        pending.push(async move {
                            let connection = incoming.accept().map_err(|e| e.to_string())?.await.map_err(|e| e.to_string())?;
                            check_path_listener(&connection, &session).await?;
                            let peer = connection.remote_address();
                            Ok::<_, String>((connection, peer))
                        });
                    }
                    None => return Err("the endpoint closed".into()),
                },
                Some(result) = pending.next() => match result {
                    Ok(up) => return Ok(up),
                    Err(e) => tracing::debug!(error = %e, "direct connection refused"),
                },
            }
        }
    }
}

/// The dialler's path check: sends the session id, expects `ok`. Proves the listener is
/// the session's peer and that the path carries data both ways.
async fn check_path_dialler(connection: &quinn::Connection, session: &str) -> Result<(), String> {
    tokio::time::timeout(PATH_CHECK_TIMEOUT, async {
        let (mut send, mut recv) = connection.open_bi().await.map_err(|e| e.to_string())?;
        send.write_all(session.as_bytes())
            .await
            .map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())?;
        let answer = recv.read_to_end(16).await.map_err(|e| e.to_string())?;
        if answer == b"ok" {
            Ok(())
        } else {
            Err(format!("unexpected path check answer {answer:?}"))
        }
    })
    .await
    .unwrap_or_else(|_| Err("path check timed out".into()))
}

/// The listener's path check: the dialler must name this session.
async fn check_path_listener(connection: &quinn::Connection, session: &str) -> Result<(), String> {
    tokio::time::timeout(PATH_CHECK_TIMEOUT, async {
        let (mut send, mut recv) = connection.accept_bi().await.map_err(|e| e.to_string())?;
        let asked = recv.read_to_end(256).await.map_err(|e| e.to_string())?;
        if asked != session.as_bytes() {
            return Err("the dialler named another session".to_string());
        }
        send.write_all(b"ok").await.map_err(|e| e.to_string())?;
        send.finish().map_err(|e| e.to_string())
    })
    .await
    .unwrap_or_else(|_| Err("path check timed out".into()))
}

/// The connection of an `Up` state whose connection is still open.
fn usable(state: &DirectState) -> Option<quinn::Connection> {
    match state {
        DirectState::Up { connection, .. } if connection.close_reason().is_none() => {
            Some(connection.clone())
        }
        _ => None,
    }
}

/// `peer` in a form the local socket can send to: IPv4 on an IPv6 (dual-stack) socket as a
/// mapped address; IPv6 never from an IPv4 socket.
fn reachable(peer: SocketAddr, local_v6: bool) -> Option<SocketAddr> {
    // An IPv4 peer written as IPv4-mapped IPv6 (a dual-stack relay's view) is IPv4.
    match (canonical(peer), local_v6) {
        (SocketAddr::V4(v4), true) => Some(SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port()))),
        (SocketAddr::V6(_), false) => None,
        (peer, _) => Some(peer),
    }
}

/// The addresses a socket bound to `local` is reachable on: its own address when bound to
/// one, else every interface address of its family (both families for a dual-stack IPv6
/// socket), with its port, keeping only what the relay accepts as a candidate
/// ([`dialable`]: no loopback, link-local, ...), or it would refuse the whole offer. The
/// relay adds the address it observes.
pub(crate) fn local_candidates(local: SocketAddr) -> Vec<SocketAddr> {
    let port = local.port();
    let ips: Vec<IpAddr> = if local.ip().is_unspecified() {
        let Ok(interfaces) = if_addrs::get_if_addrs() else {
            return Vec::new();
        };
        interfaces
            .into_iter()
            .map(|i| i.ip())
            .filter(|ip| ip.is_ipv4() || local.is_ipv6())
            .collect()
    } else {
        vec![local.ip()]
    };
    let mut addresses: Vec<SocketAddr> = ips
        .into_iter()
        .map(|ip| SocketAddr::new(ip, port))
        .filter(|a| dialable(*a))
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses.truncate(MAX_CANDIDATES - 1);
    addresses
}

fn ms(value: u32) -> Duration {
    Duration::from_millis(u64::from(value))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_are_dialled_in_the_socket_family() {
        let v4: SocketAddr = "192.0.2.1:443".parse().unwrap();
        let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
        assert_eq!(reachable(v4, false), Some(v4));
        assert_eq!(reachable(v6, false), None);
        assert_eq!(reachable(v6, true), Some(v6));
        assert_eq!(
            reachable(v4, true),
            Some("[::ffff:192.0.2.1]:443".parse().unwrap())
        );
        // A dual-stack relay reports IPv4 peers as mapped addresses.
        assert_eq!(
            reachable("[::ffff:192.0.2.1]:443".parse().unwrap(), false),
            Some(v4)
        );
    }

    #[test]
    fn a_bound_address_is_its_own_candidate() {
        let bound: SocketAddr = "10.1.2.3:4000".parse().unwrap();
        assert_eq!(local_candidates(bound), vec![bound]);
        assert!(local_candidates("127.0.0.1:4000".parse().unwrap()).is_empty());
        // A link-local address would make the relay refuse the whole offer.
        assert!(local_candidates("169.254.1.1:4000".parse().unwrap()).is_empty());
        for local in ["0.0.0.0:4000", "[::]:4000"] {
            let any = local_candidates(local.parse().unwrap());
            assert!(any.len() < MAX_CANDIDATES);
            assert!(any.iter().all(|a| a.port() == 4000));
            // Whatever this machine's interfaces, the relay accepts the offer.
            let offered: Vec<String> = any.iter().map(ToString::to_string).collect();
            assert!(
                crate::path::Candidates::parse(&offered, &[0; 32]).is_ok(),
                "{offered:?}"
            );
        }
        let v4 = local_candidates("0.0.0.0:4000".parse().unwrap());
        assert!(v4.iter().all(|a| a.is_ipv4()));
    }
}
