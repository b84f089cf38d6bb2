//! The packet path (PROTOCOL.md §8a): the session's data as one QUIC connection between the
//! two clients, whose UDP datagrams go through the relay's packet forwarder first and, once
//! a direct path is found, straight to the peer.
//!
//! The relay never holds this connection's keys: it forwards datagrams by the routing key it
//! assigned to the session. End-to-end protection is the peer connection's own TLS 1.3 with
//! both certificates pinned (their hashes came through the relay's authenticated control
//! stream), and the verification code both users compare comes from its exporter
//! (RFC 8446 §7.5), so a relay that substitutes a certificate and sits in the middle ends up
//! with two different codes on the two screens.
//!
//! How the datagrams find their way: the client's endpoint runs on a `PeerSocket`, a thin
//! [`quinn::AsyncUdpSocket`] over the client's one UDP socket (the one its relay connection
//! uses, so the relay sees the forwarded datagrams from the authenticated address). The peer
//! connection is addressed to a *virtual* peer address that no real host has; the socket
//! sends what quinn addresses there to the relay, behind the forwarder header, or, once the
//! direct attempt found the peer, to the peer's address as it is. What arrives from the
//! relay with the session's routing key is handed to quinn, header removed, as from the
//! virtual address.
//!
//! Who dials: the sharer opens the peer connection (QUIC client), the helper accepts it. The
//! sharer's socket decides the path (a QUIC client's peer address never changes); the
//! helper's quinn sees the sharer's datagrams arrive from a new address and migrates the
//! connection there with QUIC's own path validation (RFC 9000 §9), and back to the relay
//! when the sharer's datagrams come through the forwarder again.

use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use bytes::Bytes;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use remote_help_proto::forwarded;
use remote_help_proto::v1;
use tokio::sync::watch;

use super::direct::{DirectLink, DirectState, Inbox, SessionView};
use super::{ClientError, UnsealedChannels};
use crate::session::Channel;
use crate::tls::{Fingerprint, ServerIdentity};

/// The TLS name the dialling side uses (the certificate is pinned, so it is not checked).
const PEER_NAME: &str = "remote-help-peer";
/// The exporter label of the verification code (RFC 8446 §7.5).
pub const CODE_EXPORTER_LABEL: &[u8] = b"EXPORTER-remote-help verification code";
/// Longest wait for the peer connection to come up through the relay.
const PEER_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Keep-alive of the peer connection: frequent enough that a silent direct path is noticed
/// within [`DIRECT_SILENCE`].
const PEER_KEEP_ALIVE: Duration = Duration::from_millis(500);
/// A direct path from which nothing arrived for this long is given up: the sharer's socket
/// sends through the relay again, and the helper's connection migrates back.
pub(crate) const DIRECT_SILENCE: Duration = Duration::from_secs(3);
/// How often the dialling side looks for the helper's confirmation of the handshake (quinn
/// reports it only in the connection's statistics).
const CONFIRMATION_POLL: Duration = Duration::from_millis(2);
/// Most datagrams one forwarded send may carry (GSO): 40 full-size datagrams with their
/// headers stay under the 64 KiB a UDP send can take.
const MAX_FORWARDED_SEGMENTS: usize = 40;

/// The peer connection's routing, shared by the client's [`PeerSocket`] (and the one that
/// replaces it after a rebind) and the client.
#[derive(Debug)]
pub(crate) struct PeerRoutes {
    /// The address quinn knows the peer by: never a real host's.
    virtual_peer: SocketAddr,
    state: Mutex<RouteState>,
    /// The current session's peer connection has completed its handshake: only then may
    /// its datagrams go direct (a handshake packet from a new address is dropped, never a
    /// migration, RFC 9000 §9).
    established: watch::Sender<bool>,
}

#[derive(Debug)]
struct RouteState {
    /// The relay's address (changes with a redirect).
    relay: SocketAddr,
    /// The current session's routing key.
    key: Option<u64>,
    /// The peer's address on a working direct path (the dialling side only).
    direct: Option<SocketAddr>,
    /// When something last came from `direct`.
    last_direct: Option<Instant>,
}

impl PeerRoutes {
    /// Routing for a socket bound to `local`, towards the relay at `relay`.
    pub(crate) fn new(relay: SocketAddr, local: SocketAddr) -> PeerRoutes {
        // 240.0.0.0/4 is reserved: no host answers there, so no real datagram comes from it.
        let reserved = Ipv4Addr::new(240, 0, 0, 1);
        let virtual_peer = if local.is_ipv6() {
            SocketAddr::from((reserved.to_ipv6_mapped(), 1))
        } else {
            SocketAddr::from((reserved, 1))
        };
        PeerRoutes {
            virtual_peer,
            state: Mutex::new(RouteState {
                relay,
                key: None,
                direct: None,
                last_direct: None,
            }),
            established: watch::Sender::new(false),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, RouteState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The address the peer connection is addressed to.
    pub(crate) fn virtual_peer(&self) -> SocketAddr {
        self.virtual_peer
    }

    /// The client moved to another relay node.
    pub(crate) fn set_relay(&self, relay: SocketAddr) {
        self.lock().relay = relay;
    }

    /// A session on the packet path started (`Some`) or ended (`None`).
    pub(crate) fn set_key(&self, key: Option<u64>) {
        let mut state = self.lock();
        state.key = key;
        state.direct = None;
        state.last_direct = None;
        self.established.send_replace(false);
    }

    /// Waits until the current session's peer connection is up (through the relay).
    pub(crate) async fn established(&self) {
        let mut up = self.established.subscribe();
        let _ = up.wait_for(|up| *up).await;
    }

    /// The current session's routing key.
    fn key(&self) -> Option<u64> {
        self.lock().key
    }

    /// Sends straight to `peer` from now on (`None`: through the relay again).
    pub(crate) fn set_direct(&self, peer: Option<SocketAddr>) {
        let mut state = self.lock();
        state.direct = peer;
        state.last_direct = peer.map(|_| Instant::now());
    }

    /// The direct peer address in use, if any.
    pub(crate) fn direct(&self) -> Option<SocketAddr> {
        self.lock().direct
    }

    /// How long nothing has come on the direct path (`None`: no direct path in use).
    pub(crate) fn direct_silent_for(&self) -> Option<Duration> {
        self.lock().last_direct.map(|t| t.elapsed())
    }
}

/// The client's UDP socket as its endpoint sees it: datagrams for the virtual peer go
/// through the relay's forwarder (or the direct path), forwarded datagrams from the relay
/// come back as the virtual peer's; everything else passes as it is.
#[derive(Debug)]
pub(crate) struct PeerSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    routes: Arc<PeerRoutes>,
    /// Where a forwarded send is assembled (headers between the segments).
    scratch: Mutex<Vec<u8>>,
}

impl PeerSocket {
    /// `socket` (wrapped for the runtime) under `routes`.
    pub(crate) fn wrap(
        socket: std::net::UdpSocket,
        routes: Arc<PeerRoutes>,
    ) -> io::Result<Arc<PeerSocket>> {
        let runtime =
            quinn::default_runtime().ok_or_else(|| io::Error::other("no async runtime"))?;
        Ok(Arc::new(PeerSocket {
            inner: runtime.wrap_udp_socket(socket)?,
            routes,
            scratch: Mutex::new(Vec::with_capacity(64 * 1024)),
        }))
    }

    /// Rewrites what was received in place: forwarded datagrams of the session lose their
    /// header and come from the virtual peer, the dialler's direct datagrams too; forwarded
    /// datagrams of no session are dropped. Returns how many entries remain at the front.
    fn rewrite_received(&self, bufs: &mut [IoSliceMut<'_>], meta: &mut [RecvMeta]) -> usize {
        let mut state = self.routes.lock();
        let mut kept = 0;
        for i in 0..meta.len() {
            let m = meta[i];
            let keep = if m.addr == state.relay && forwarded::is_forwarded(&bufs[i][..m.len]) {
                match state.key {
                    Some(key) => strip_headers(&mut bufs[i], &mut meta[i], key).then(|| {
                        meta[i].addr = self.routes.virtual_peer;
                    }),
                    None => None,
                }
                .is_some()
            } else {
                if state.direct == Some(m.addr) {
                    meta[i].addr = self.routes.virtual_peer;
                    state.last_direct = Some(Instant::now());
                }
                true
            };
            if keep {
                if kept != i {
                    let len = meta[i].len;
                    let (front, back) = bufs.split_at_mut(i);
                    front[kept][..len].copy_from_slice(&back[0][..len]);
                    meta[kept] = meta[i];
                }
                kept += 1;
            }
        }
        kept
    }
}

/// Removes the forwarder header from every segment of `meta` (a GRO batch of equal
/// `stride`), keeping only the segments of `key`, packed. False when none remain.
fn strip_headers(buf: &mut [u8], meta: &mut RecvMeta, key: u64) -> bool {
    let stride = meta.stride.max(1);
    let (mut read, mut written, mut segments) = (0, 0, 0);
    while read < meta.len {
        let end = (read + stride).min(meta.len);
        let ours = matches!(forwarded::parse(&buf[read..end]), Some((k, _)) if k == key);
        if ours {
            let payload = read + forwarded::HEADER_LEN..end;
            let len = payload.len();
            buf.copy_within(payload, written);
            written += len;
            segments += 1;
        }
        read = end;
    }
    meta.len = written;
    meta.stride = if segments > 1 {
        stride - forwarded::HEADER_LEN
    } else {
        written
    };
    written > 0
}

impl AsyncUdpSocket for PeerSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        if transmit.destination != self.routes.virtual_peer {
            return self.inner.try_send(transmit);
        }
        let (relay, key, direct) = {
            let state = self.routes.lock();
            (state.relay, state.key, state.direct)
        };
        if let Some(peer) = direct {
            return self.inner.try_send(&Transmit {
                destination: peer,
                ecn: transmit.ecn,
                contents: transmit.contents,
                segment_size: transmit.segment_size,
                src_ip: transmit.src_ip,
            });
        }
        // No session (it ended under the connection): the datagram is lost, as on a path
        // that went away; QUIC's loss recovery and idle timeout deal with it.
        let Some(key) = key else {
            return Ok(());
        };
        let header = forwarded::header(key);
        let segment = transmit
            .segment_size
            .unwrap_or(transmit.contents.len())
            .max(1);
        let mut scratch = self.scratch.lock().unwrap_or_else(|p| p.into_inner());
        scratch.clear();
        for datagram in transmit.contents.chunks(segment) {
            scratch.extend_from_slice(&header);
            scratch.extend_from_slice(datagram);
        }
        let segment_size = (transmit.contents.len() > segment).then_some(segment + header.len());
        self.inner.try_send(&Transmit {
            destination: relay,
            ecn: transmit.ecn,
            contents: &scratch,
            segment_size,
            src_ip: transmit.src_ip,
        })
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        loop {
            let received = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(n)) => n,
                other => return other,
            };
            // Never report an empty batch: poll again until something is for quinn.
            let kept = self.rewrite_received(&mut bufs[..received], &mut meta[..received]);
            if kept > 0 {
                return Poll::Ready(Ok(kept));
            }
        }
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner
            .max_transmit_segments()
            .min(MAX_FORWARDED_SEGMENTS)
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

/// A client's packet-path machinery: its peer certificate, the routing its socket follows,
/// what the session allows (for checking what the peer sends), and the current session's
/// peer connection.
pub(crate) struct PacketPath {
    pub(crate) identity: Arc<ServerIdentity>,
    pub(crate) routes: Arc<PeerRoutes>,
    view: watch::Sender<Option<SessionView>>,
    /// The current session's routing, as `SessionStarted` gave it.
    session: Option<v1::PacketPath>,
    /// The current session's peer connection, once up (closed when the session ends).
    connection: Arc<Mutex<Option<quinn::Connection>>>,
    /// The endpoint while it accepts this session's peer connection (the helper's side).
    accepting: Option<quinn::Endpoint>,
}

impl PacketPath {
    /// The packet path for a client whose endpoint runs on a socket routed by `routes`.
    pub(crate) fn new(routes: Arc<PeerRoutes>) -> Result<PacketPath, ClientError> {
        Ok(PacketPath {
            identity: Arc::new(ServerIdentity::self_signed(vec![PEER_NAME.into()])?),
            routes,
            view: watch::Sender::new(None),
            session: None,
            connection: Arc::default(),
            accepting: None,
        })
    }

    /// The hash `Hello.peer_certificate_sha256` announces.
    pub(crate) fn fingerprint(&self) -> Fingerprint {
        self.identity.fingerprint()
    }

    /// The session started on the packet path: route its datagrams, and (on the accepting
    /// side) accept the peer's connection from now on, before the peer can dial.
    pub(crate) fn start(
        &mut self,
        path: v1::PacketPath,
        endpoint: &quinn::Endpoint,
        transport: &crate::transport::ClientTransport,
        relay_rtt: Duration,
    ) -> Result<(), ClientError> {
        // The previous session's connection, if any, is over (this session's view is
        // already set: `SessionStarted` was read before this).
        self.close_connection();
        self.stop_accepting();
        let peer = peer_fingerprint(&path)?;
        if !path.dial {
            let crypto = self.identity.direct_server_config(peer)?;
            let mut config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
            config.transport_config(peer_transport(transport, relay_rtt, &path));
            // The peer's datagrams arrive from the virtual address and, after a direct path
            // is found, from the peer's own: the connection follows them.
            config.migration(true);
            endpoint.set_server_config(Some(config));
            self.accepting = Some(endpoint.clone());
        }
        self.routes.set_key(Some(path.routing_key));
        self.session = Some(path);
        Ok(())
    }

    /// The session ended: no more routing, no peer connection, nothing allowed.
    pub(crate) fn end_session(&mut self) {
        self.session = None;
        // The relay has removed the route already (before `SessionEnded`): the peer learns
        // of the end from its own control stream and closes its side too.
        self.close_connection();
        self.stop_accepting();
        self.routes.set_key(None);
        self.view.send_replace(None);
    }

    /// Accepts no peer connection any more, and refuses attempts already queued: one left
    /// from a session whose peer connection never came up would otherwise be taken for the
    /// next session's.
    fn stop_accepting(&mut self) {
        if let Some(endpoint) = self.accepting.take() {
            endpoint.set_server_config(None);
            refuse_queued(&endpoint);
        }
    }

    /// Closes the peer connection of the session that ended.
    fn close_connection(&self) {
        let connection = self
            .connection
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(connection) = connection {
            connection.close(0u32.into(), b"session ended");
        }
    }

    /// Whether the current session runs on the packet path.
    pub(crate) fn active(&self) -> bool {
        self.session.is_some()
    }

    /// The session (re)started or changed mode: what it allows now.
    pub(crate) fn set_view(&self, view: SessionView) {
        self.view.send_replace(Some(view));
    }

    /// Changes the mode of the current session's view.
    pub(crate) fn set_mode(&self, mode: crate::session::Mode) {
        self.view.send_modify(|v| {
            if let Some(v) = v {
                v.mode = mode;
            }
        });
    }

    /// Whether the session's data goes straight to the peer now (else through the relay).
    pub(crate) fn is_direct(&self) -> bool {
        if self.routes.direct().is_some() {
            return true;
        }
        // The accepting side: its connection migrated to the peer's own address.
        let connection = self.connection.lock().unwrap_or_else(|p| p.into_inner());
        connection
            .as_ref()
            .is_some_and(|c| c.remote_address() != self.routes.virtual_peer())
    }

    /// What opening the peer connection needs, detached from the client (so the future of
    /// [`connect`] borrows nothing).
    pub(crate) fn opener(
        &self,
        endpoint: &quinn::Endpoint,
        session_id: &str,
        transport: &crate::transport::ClientTransport,
        relay_rtt: Duration,
    ) -> Result<PeerOpener, ClientError> {
        let path = self.session.clone().ok_or_else(|| {
            ClientError::Unexpected("the session does not run on the packet path".into())
        })?;
        Ok(PeerOpener {
            peer: peer_fingerprint(&path)?,
            transport: peer_transport(transport, relay_rtt, &path),
            path,
            endpoint: endpoint.clone(),
            identity: self.identity.clone(),
            virtual_peer: self.routes.virtual_peer(),
            routes: self.routes.clone(),
            view: self.view.subscribe(),
            slot: self.connection.clone(),
            session_id: session_id.to_string(),
        })
    }
}

/// Refuses every connection attempt `endpoint` has queued, without waiting for more.
fn refuse_queued(endpoint: &quinn::Endpoint) {
    use futures_util::FutureExt;
    while let Some(Some(incoming)) = endpoint.accept().now_or_never() {
        tracing::debug!(from = %incoming.remote_address(), "stale peer connection attempt refused");
        incoming.refuse();
    }
}

/// The peer's pinned certificate hash from `path`.
fn peer_fingerprint(path: &v1::PacketPath) -> Result<Fingerprint, ClientError> {
    <[u8; 32]>::try_from(path.peer_certificate_sha256.as_slice())
        .map(Fingerprint)
        .map_err(|_| {
            ClientError::Unexpected(
                "the relay's packet path names no SHA-256 peer certificate hash".into(),
            )
        })
}

/// The peer connection's transport: the client's windows (so flow control, and with it
/// backpressure, runs end to end between the two clients), a keep-alive that keeps a direct
/// path's silence meaningful, loss recovery from the relay's round trip, and datagrams that
/// fit the forwarder with its header.
fn peer_transport(
    settings: &crate::transport::ClientTransport,
    relay_rtt: Duration,
    path: &v1::PacketPath,
) -> Arc<quinn::TransportConfig> {
    let settings = crate::transport::ClientTransport {
        keep_alive: settings.keep_alive.min(PEER_KEEP_ALIVE),
        ..*settings
    };
    let max_payload = (path.max_packet_size as usize).saturating_sub(forwarded::HEADER_LEN);
    crate::transport::peer(&settings, relay_rtt * 2, max_payload)
}

/// Everything [`connect`] needs, taken from the client.
pub(crate) struct PeerOpener {
    path: v1::PacketPath,
    peer: Fingerprint,
    transport: Arc<quinn::TransportConfig>,
    endpoint: quinn::Endpoint,
    identity: Arc<ServerIdentity>,
    virtual_peer: SocketAddr,
    routes: Arc<PeerRoutes>,
    view: watch::Receiver<Option<SessionView>>,
    slot: Arc<Mutex<Option<quinn::Connection>>>,
    session_id: String,
}

/// A started session's channels on the packet path: streams and datagrams of the peer
/// connection, protected by its TLS; the verification code from its exporter.
pub struct PeerSession {
    data: UnsealedChannels,
    code: String,
    connection: quinn::Connection,
}

impl std::fmt::Debug for PeerSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PeerSession")
            .field("verification_code", &self.code)
            .field("peer", &self.connection.remote_address())
            .finish_non_exhaustive()
    }
}

impl PeerSession {
    /// The code both users compare.
    pub fn verification_code(&self) -> &str {
        &self.code
    }

    /// The peer connection (for diagnostics: its RTT, its path statistics).
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// The channels, framed as on every path (PROTOCOL.md §8).
    pub(crate) fn data(&self) -> &UnsealedChannels {
        &self.data
    }
}

/// Opens (sharer) or accepts (helper) the session's peer connection through the relay's
/// forwarder, and derives the verification code.
pub(crate) async fn connect(opener: PeerOpener) -> Result<PeerSession, ClientError> {
    let started = Instant::now();
    let opened = tokio::time::timeout(PEER_HANDSHAKE_TIMEOUT, open(&opener))
        .await
        .map_err(|_| {
            ClientError::Unexpected(format!(
                "the peer connection through the relay did not come up within {} s",
                PEER_HANDSHAKE_TIMEOUT.as_secs()
            ))
        })
        .and_then(|opened| opened);
    if !opener.path.dial && opener.routes.key() == Some(opener.path.routing_key) {
        // Up or failed, this session accepts nothing more.
        opener.endpoint.set_server_config(None);
    }
    let connection = opened?;
    if opener.routes.key() != Some(opener.path.routing_key) {
        // The session ended (or the next began) during the handshake.
        connection.close(0u32.into(), b"session ended");
        return Err(ClientError::Unexpected(
            "the session ended before its peer connection came up".into(),
        ));
    }
    let code = verification_code(&connection, &opener.session_id)?;
    tracing::info!(
        took_ms = started.elapsed().as_millis() as u64,
        "peer connection up through the relay's forwarder"
    );
    *opener.slot.lock().unwrap_or_else(|p| p.into_inner()) = Some(connection.clone());
    opener.routes.established.send_replace(true);
    let inbox = Arc::new(Inbox::default());
    let accepting = inbox
        .clone()
        .accept_from(connection.clone(), Some(opener.view.clone()));
    let closing = {
        let inbox = inbox.clone();
        let connection = connection.clone();
        async move {
            accepting.await;
            inbox.close(
                connection
                    .close_reason()
                    .unwrap_or(quinn::ConnectionError::LocallyClosed),
            );
        }
    };
    tokio::spawn(closing);
    let (_, state) = watch::channel(DirectState::Up {
        connection: connection.clone(),
        peer: opener.virtual_peer,
        took: started.elapsed(),
    });
    Ok(PeerSession {
        data: UnsealedChannels {
            // Every channel of the session lives on the peer connection: none moves, and
            // none falls back to the relay's streams (the relay forwards none for it).
            connection: connection.clone(),
            direct: Some(DirectLink {
                state,
                inbox,
                view: opener.view.clone(),
            }),
            peer_unprotected: None,
        },
        code,
        connection,
    })
}

async fn open(opener: &PeerOpener) -> Result<quinn::Connection, ClientError> {
    if opener.path.dial {
        let crypto = opener.identity.direct_client_config(opener.peer)?;
        let mut config = quinn::ClientConfig::new(Arc::new(crypto));
        config.transport_config(opener.transport.clone());
        let connection = opener
            .endpoint
            .connect_with(config, opener.virtual_peer, PEER_NAME)?
            .await
            .map_err(ClientError::from_handshake)?;
        // In TLS 1.3 the client's handshake is over before the server has checked the
        // client's certificate: wait for the helper's HANDSHAKE_DONE (sent once it accepted
        // this side's certificate), or its refusal, before showing a code.
        while connection.stats().frame_rx.handshake_done == 0 {
            tokio::select! {
                why = connection.closed() => return Err(ClientError::from_handshake(why)),
                () = tokio::time::sleep(CONFIRMATION_POLL) => {}
            }
        }
        return Ok(connection);
    }
    loop {
        let incoming = opener.endpoint.accept().await.ok_or_else(|| {
            ClientError::Unexpected("the endpoint closed before the peer connected".into())
        })?;
        // Only what came through the session's route: the peer, authenticated by the relay.
        if incoming.remote_address() != opener.virtual_peer {
            tracing::debug!(from = %incoming.remote_address(), "connection from a stranger refused");
            incoming.refuse();
            continue;
        }
        return incoming
            .accept()
            .map_err(|e| ClientError::Unexpected(e.to_string()))?
            .await
            .map_err(ClientError::from_handshake);
    }
}

/// The six-digit code both users compare, from the peer connection's TLS exporter with the
/// session id as context, shown as `"123 456"`.
pub fn verification_code(
    connection: &quinn::Connection,
    session_id: &str,
) -> Result<String, ClientError> {
    let mut out = [0u8; 4];
    connection
        .export_keying_material(&mut out, CODE_EXPORTER_LABEL, session_id.as_bytes())
        .map_err(|_| ClientError::Unexpected("the TLS exporter is unavailable".into()))?;
    Ok(code_from_exporter(out))
}

/// The code shown for 4 bytes of exporter output: big endian, modulo 1,000,000, zero-padded
/// in two groups of three (PROTOCOL.md §8a item 10, with test vectors).
fn code_from_exporter(out: [u8; 4]) -> String {
    let code = u32::from_be_bytes(out) % 1_000_000;
    format!("{:03} {:03}", code / 1000, code % 1000)
}

impl PeerSession {
    /// Opens this side's channel.
    pub async fn open_channel(
        &self,
        channel: Channel,
    ) -> Result<super::ChannelSender, ClientError> {
        self.data.open_channel(channel).await
    }

    /// Sends one lossy screen datagram.
    pub fn send_datagram(&self, frame: Bytes) -> Result<(), ClientError> {
        self.data.send_datagram(frame)
    }
}

#[cfg(test)]
mod tests;
