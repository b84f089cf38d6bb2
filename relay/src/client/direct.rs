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
use remote_help_proto::framing::{CONTINUATION, channel_from_tag};
use remote_help_proto::v1::{self, client_to_relay::Msg as Out};
use tokio::sync::{Notify, watch};
use tokio::time::Instant;

use super::{ClientError, Writer};
use crate::core::Channel;
use crate::tls::{Fingerprint, ServerIdentity};

/// The TLS name a direct dialler uses (the certificate is pinned, so the name is not checked).
const DIRECT_NAME: &str = "remote-help-direct";
/// What a listener sends to open its NAT towards the peer: too short to be a QUIC packet,
/// so the peer's endpoint drops it unanswered.
const PUNCH: &[u8] = b"rhp1";
/// The direct connection's loss recovery starts from the relay's estimate, but never below
/// this (a loopback estimate of zero would retransmit at once).
const MIN_INITIAL_RTT: Duration = Duration::from_millis(5);
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

/// The data plane's view of the direct path: which connection to use, and the inbox of
/// incoming streams.
#[derive(Clone)]
pub(crate) struct DirectLink {
    pub(crate) state: watch::Receiver<DirectState>,
    pub(crate) inbox: Arc<Inbox>,
}

impl DirectLink {
    /// The direct connection, while it is up.
    pub(crate) fn usable(&self) -> Option<quinn::Connection> {
        match &*self.state.borrow() {
            DirectState::Up { connection, .. } if connection.close_reason().is_none() => {
                Some(connection.clone())
            }
            _ => None,
        }
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
            if continuation {
                queues.continued[channel.index()].push_back(incoming);
            } else {
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
                    return Ok(next);
                }
                if let Some(e) = &queues.relay_closed {
                    return Err(ClientError::from_connection(e.clone()));
                }
            }
            notified.await;
        }
    }

    /// The stream that continues `channel` after it moved.
    pub(crate) async fn continuation(&self, channel: Channel) -> Result<Incoming, ClientError> {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut queues = self.lock();
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

    /// Forgets continuations of an ended session.
    fn clear_continuations(&self) {
        let mut queues = self.lock();
        for queue in &mut queues.continued {
            queue.clear();
        }
    }

    /// Accepts every data stream of `connection` into the inbox until it closes.
    pub(crate) async fn accept_from(self: Arc<Self>, connection: quinn::Connection, direct: bool) {
        let mut tagging = FuturesUnordered::new();
        loop {
            tokio::select! {
                accepted = connection.accept_uni() => match accepted {
                    Ok(mut stream) => tagging.push(async move {
                        let mut tag = [0u8; 1];
                        stream.read_exact(&mut tag).await.ok().map(|()| (tag[0], stream))
                    }),
                    Err(e) => {
                        if !direct {
                            self.lock().relay_closed = Some(e);
                            self.notify.notify_waiters();
                        }
                        return;
                    }
                },
                Some(tagged) = tagging.next() => {
                    let Some((tag, stream)) = tagged else { continue };
                    let Some(channel) = channel_from_tag(tag).ok().and_then(Channel::from_wire) else {
                        tracing::debug!(tag, "data stream with an unknown channel tag ignored");
                        continue;
                    };
                    self.file(channel, tag & CONTINUATION != 0, Incoming { stream, direct });
                }
            }
        }
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
    state: Arc<watch::Sender<DirectState>>,
    pub(crate) inbox: Arc<Inbox>,
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
        let relay_acceptor = AbortOnDrop(tokio::spawn(
            inbox.clone().accept_from(relay.clone(), false),
        ));
        Ok(DirectSetup {
            identity,
            raw,
            state: Arc::new(watch::Sender::new(DirectState::Off)),
            inbox,
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

    /// The data plane's handle.
    pub(crate) fn link(&self) -> DirectLink {
        DirectLink {
            state: self.state.subscribe(),
            inbox: self.inbox.clone(),
        }
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
    ) {
        self.end_session();
        let Ok(peer_fingerprint) = <[u8; 32]>::try_from(offer.peer_certificate_sha256.as_slice())
        else {
            self.state.send_replace(DirectState::Failed(
                "the offer's peer certificate is not a SHA-256".into(),
            ));
            return;
        };
        let attempt = Attempt {
            received: Instant::now(),
            peers: offer
                .peer_addresses
                .iter()
                .filter_map(|a| a.parse::<SocketAddr>().ok())
                .collect(),
            peer: Fingerprint(peer_fingerprint),
            offer,
            endpoint,
            identity: self.identity.clone(),
            raw: self.raw.clone(),
            state: self.state.clone(),
            inbox: self.inbox.clone(),
            writer,
            transport: *transport,
        };
        self.state.send_replace(DirectState::Trying);
        self.attempt = Some(AbortOnDrop(tokio::spawn(attempt.run())));
    }

    /// The session ended: stop the attempt, close the direct connection.
    pub(crate) fn end_session(&mut self) {
        self.attempt = None;
        if let DirectState::Up { connection, .. } = self.state.send_replace(DirectState::Off) {
            connection.close(0u32.into(), b"session ended");
        }
        self.inbox.clear_continuations();
    }
}

/// One direct attempt, from the offer to the path's end.
struct Attempt {
    received: Instant,
    offer: v1::DirectPathOffer,
    peers: Vec<SocketAddr>,
    peer: Fingerprint,
    endpoint: quinn::Endpoint,
    identity: Arc<ServerIdentity>,
    raw: Arc<std::net::UdpSocket>,
    state: Arc<watch::Sender<DirectState>>,
    inbox: Arc<Inbox>,
    writer: Weak<tokio::sync::Mutex<Writer>>,
    transport: crate::transport::ClientTransport,
}

impl Attempt {
    async fn run(self) {
        let deadline = self.received + ms(self.offer.deadline_ms);
        let outcome = tokio::time::timeout_at(deadline, async {
            if self.offer.dial {
                self.dial().await
            } else {
                self.listen().await
            }
        })
        .await
        .unwrap_or_else(|_| Err("no direct connection before the deadline".into()));
        if !self.offer.dial {
            // Accept nothing once the attempt is over.
            self.endpoint.set_server_config(None);
        }
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
        tracing::info!(%peer, took_ms = took.as_millis() as u64, "direct path up");
        self.state.send_replace(DirectState::Up {
            connection: connection.clone(),
            peer,
            took,
        });
        self.report(true, Some(peer)).await;
        // Streams the peer opens on the direct connection go to the inbox until it ends.
        let accepting = self.inbox.clone().accept_from(connection.clone(), true);
        let closed = connection.closed();
        let (_, why) = tokio::join!(accepting, closed);
        tracing::info!(reason = %why, "direct path lost; channels fall back to the relay");
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
    async fn dial(&self) -> Result<(quinn::Connection, SocketAddr), String> {
        let crypto = self
            .identity
            .direct_client_config(self.peer)
            .map_err(|e| e.to_string())?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(self.transport());
        let local_v6 = self
            .endpoint
            .local_addr()
            .map(|a| a.is_ipv6())
            .unwrap_or(false);
        let mut pending = FuturesUnordered::new();
        let mut next = 0;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(self.attempt_at(next)), if next < self.offer.attempts.max(1) => {
                    next += 1;
                    for &peer in &self.peers {
                        let Some(target) = reachable(peer, local_v6) else { continue };
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
                    self.offer.attempts.max(1)
                )),
            }
        }
    }

    /// The sharer's side: accept (only the pinned peer) while punching towards every peer
    /// address at each attempt.
    async fn listen(&self) -> Result<(quinn::Connection, SocketAddr), String> {
        let crypto = self
            .identity
            .direct_server_config(self.peer)
            .map_err(|e| e.to_string())?;
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
        config.transport_config(self.transport());
        self.endpoint.set_server_config(Some(config));
        let local_v6 = self
            .endpoint
            .local_addr()
            .map(|a| a.is_ipv6())
            .unwrap_or(false);
        let mut pending = FuturesUnordered::new();
        let mut next = 0;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(self.attempt_at(next)), if next < self.offer.attempts.max(1) => {
                    next += 1;
                    for &peer in &self.peers {
                        if let Some(target) = reachable(peer, local_v6) {
                            // Best effort: a failed punch is one fewer chance, not an error.
                            let _ = self.raw.send_to(PUNCH, target);
                        }
                    }
                }
                incoming = self.endpoint.accept() => match incoming {
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

/// `peer` in a form the local socket can send to: IPv4 on an IPv6 (dual-stack) socket as a
/// mapped address; IPv6 never from an IPv4 socket.
fn reachable(peer: SocketAddr, local_v6: bool) -> Option<SocketAddr> {
    match (peer, local_v6) {
        (SocketAddr::V4(v4), true) => Some(SocketAddr::from((v4.ip().to_ipv6_mapped(), v4.port()))),
        (SocketAddr::V6(_), false) => None,
        _ => Some(peer),
    }
}

/// The addresses a socket bound to `local` is reachable on: its own address when bound to
/// one, else every non-loopback interface address of its family (both families for a
/// dual-stack IPv6 socket), with its port. The relay adds the address it observes.
pub(crate) fn local_candidates(local: SocketAddr) -> Vec<SocketAddr> {
    let port = local.port();
    if !local.ip().is_unspecified() {
        return if local.ip().is_loopback() {
            Vec::new()
        } else {
            vec![local]
        };
    }
    let Ok(interfaces) = if_addrs::get_if_addrs() else {
        return Vec::new();
    };
    let mut addresses: Vec<SocketAddr> = interfaces
        .into_iter()
        .filter(|i| !i.is_loopback())
        .map(|i| i.ip())
        .filter(|ip| match ip {
            IpAddr::V4(_) => true,
            // Link-local IPv6 needs a scope id the peer cannot use.
            IpAddr::V6(v6) => local.is_ipv6() && (v6.segments()[0] & 0xffc0) != 0xfe80,
        })
        .map(|ip| SocketAddr::new(ip, port))
        .collect();
    addresses.sort();
    addresses.dedup();
    addresses.truncate(crate::core::path::MAX_CANDIDATES - 1);
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
    }

    #[test]
    fn a_bound_address_is_its_own_candidate() {
        let bound: SocketAddr = "10.1.2.3:4000".parse().unwrap();
        assert_eq!(local_candidates(bound), vec![bound]);
        assert!(local_candidates("127.0.0.1:4000".parse().unwrap()).is_empty());
        let any = local_candidates("0.0.0.0:4000".parse().unwrap());
        assert!(any.len() < crate::core::path::MAX_CANDIDATES);
        assert!(
            any.iter()
                .all(|a| a.port() == 4000 && a.is_ipv4() && !a.ip().is_loopback())
        );
    }
}
