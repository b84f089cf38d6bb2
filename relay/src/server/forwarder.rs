//! The packet path's forwarder (PROTOCOL.md §8a): the relay's second data path. In a
//! packet-path session the two clients run one QUIC connection between themselves and send
//! its UDP payloads to the relay's port, each behind a 9-byte header naming the session's
//! routing key; the relay sends each one on, unchanged, to the other party. It never holds
//! the inner connection's keys: its cost per byte is a receive and a send.
//!
//! [`ForwardingSocket`] wraps each of the relay's UDP sockets under its quinn endpoint. It
//! takes the datagrams whose QUIC fixed bit is clear (the relay never announces
//! `grease_quic_bit`, so every QUIC packet has it set) out of each received batch before
//! quinn sees it, and sends them on from the same socket. [`Forwarder`] holds the routing
//! table: a sharded map from routing key to [`Route`], so sessions share no lock. A route
//! knows both parties' relay connections and the addresses they are bound to; a datagram
//! from any other address is dropped unless that party's relay connection has itself
//! migrated there (quinn accepted an authenticated packet from it), and then the binding
//! follows. Each direction has its own byte budget, and every forwarded byte is counted in
//! the session's `ChannelCounters`, so the audit's session end includes it.
//!
//! The hot path allocates nothing: kept QUIC datagrams are moved to the front of quinn's
//! own buffers, forwarded ones are sent from where they were received, consecutive ones of
//! one receive-offload batch as one send with segmentation offload (GSO). It never blocks:
//! a socket that would block drops the datagram (`send_failed`); the peers' QUIC recovers,
//! which is what keeps backpressure end to end inside their connection.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{IpAddr, SocketAddr};
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Instant;

use dashmap::DashMap;
use metrics::{Counter, Gauge};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use remote_help_proto::forwarded;
use tracing::debug;

use super::forward::ChannelCounters;
use crate::config::ForwarderConfig;
use crate::core::SessionId;
use crate::core::forwarding::{ByteBucket, DropReason, StreamPathReason, side_of};

/// Batches in a row that `poll_recv` may find entirely forwarded before it yields to the
/// runtime (so a flood of forwarded datagrams cannot starve the endpoint's other work).
const MAX_FORWARDED_BATCHES: usize = 16;

/// The routing table and settings, shared by every relay endpoint's socket and the hub.
pub struct Forwarder {
    settings: ForwarderConfig,
    /// This node: routing keys are connection ids routable to it (QUIC-LB format).
    node: crate::core::cluster::NodeId,
    routes: DashMap<u64, Arc<Route>>,
    unknown_key: Counter,
    malformed: Counter,
    routes_gauge: Gauge,
}

impl fmt::Debug for Forwarder {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Forwarder")
            .field("settings", &self.settings)
            .field("routes", &self.routes.len())
            .finish()
    }
}

/// One party of a route, as the forwarder needs it.
#[derive(Debug)]
pub struct RouteParty {
    /// Its relay connection: where its binding may move (QUIC migration).
    pub connection: quinn::Connection,
    /// Where the bytes it sends are counted (the session's audit and admin counts).
    pub counters: Arc<ChannelCounters>,
}

/// What can change per party while the session runs, behind the party's own lock.
#[derive(Debug)]
struct Binding {
    /// The address forwarded datagrams from this party come from and to it go to.
    addr: SocketAddr,
    /// The relay's address this party's relay connection uses (the source of what is
    /// sent to it); `None` where the socket does not tell.
    local_ip: Option<IpAddr>,
    /// The byte budget of datagrams from this party.
    budget: ByteBucket,
}

#[derive(Debug)]
struct Side {
    binding: Mutex<Binding>,
    party: RouteParty,
}

/// A packet-path session in the routing table.
#[derive(Debug)]
pub struct Route {
    session: SessionId,
    /// The helper (0) and the sharer (1).
    sides: [Side; 2],
    packets: Counter,
    bytes: Counter,
    batches: Counter,
    drops: [Counter; DropReason::ALL.len()],
}

impl Route {
    /// The session this route carries.
    pub fn session(&self) -> &SessionId {
        &self.session
    }

    fn binding(&self, side: usize) -> std::sync::MutexGuard<'_, Binding> {
        // A panic while holding it would be a bug; the binding stays usable.
        self.sides[side]
            .binding
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn drop_counted(&self, reason: DropReason, count: u64) {
        self.drops[reason.index()].increment(count);
    }

    /// Which side sent a datagram of `len` bytes from `from`, its budget taken; the binding
    /// follows a party whose relay connection migrated to `from`.
    fn admit(&self, from: SocketAddr, len: u64, now: Instant) -> Result<usize, DropReason> {
        for side in 0..2 {
            let mut binding = self.binding(side);
            if binding.addr == from {
                return if binding.budget.take(len, now) {
                    Ok(side)
                } else {
                    Err(DropReason::RateLimited)
                };
            }
        }
        // Not from a bound address: only a party whose own relay connection has moved there
        // (an authenticated QUIC packet came from it) may send from it now.
        let moved = [0, 1].map(|side| self.sides[side].party.connection.remote_address());
        let Some(side) = side_of(from, moved) else {
            return Err(DropReason::UnboundAddress);
        };
        let local_ip = self.sides[side].party.connection.local_ip();
        let mut binding = self.binding(side);
        debug!(session = %self.session, side, from = %binding.addr, to = %from, "packet-path binding follows the party's migration");
        binding.addr = from;
        binding.local_ip = local_ip;
        if binding.budget.take(len, now) {
            Ok(side)
        } else {
            Err(DropReason::RateLimited)
        }
    }

    /// Where datagrams to `side` go, and from which relay address: where that party's relay
    /// connection is now, as quinn sees it. A binding moved by an unvalidated migration
    /// (a spoofed packet) follows quinn back when its path validation fails, even if the
    /// party never sends from its old address again: the relay never keeps sending to an
    /// address QUIC gave up (one lookup per run of datagrams, not per datagram).
    fn destination(&self, side: usize) -> (SocketAddr, Option<IpAddr>) {
        let connection = &self.sides[side].party.connection;
        let now_at = connection.remote_address();
        let mut binding = self.binding(side);
        if binding.addr != now_at {
            debug!(session = %self.session, side, from = %binding.addr, to = %now_at, "packet-path binding follows the party's relay connection");
            binding.addr = now_at;
            binding.local_ip = connection.local_ip();
        }
        (binding.addr, binding.local_ip)
    }
}

impl Forwarder {
    /// A forwarder with `settings` and an empty table.
    pub fn new(settings: ForwarderConfig, node: crate::core::cluster::NodeId) -> Forwarder {
        Forwarder {
            settings,
            node,
            routes: DashMap::new(),
            routes_gauge: metrics::gauge!("relay_forwarder_routes"),
            unknown_key: metrics::counter!("relay_forwarder_drops_total", "reason" => DropReason::UnknownKey.as_str(), "tenant" => ""),
            malformed: metrics::counter!("relay_forwarder_drops_total", "reason" => DropReason::Malformed.as_str(), "tenant" => ""),
        }
    }

    /// The settings.
    pub fn settings(&self) -> &ForwarderConfig {
        &self.settings
    }

    /// Routes in the table.
    pub fn routes(&self) -> usize {
        self.routes.len()
    }

    /// Whether `key` routes now (tests, leak checks).
    pub fn has_route(&self, key: u64) -> bool {
        self.routes.contains_key(&key)
    }

    /// Adds a route for `session` between `helper` and `sharer` (bound to their relay
    /// connections' addresses now) under a fresh key, unique in the table; `Err` when the
    /// table is full. Its metrics carry `tenant`. The key has the shape of this node's QUIC
    /// connection ids (QUIC-LB unencrypted format, [`crate::core::cluster::routable_cid`]):
    /// it sits where a short header's destination connection id does, so a load balancer
    /// that routes QUIC by connection id sends a forwarded datagram to this node.
    pub fn insert(
        &self,
        session: SessionId,
        tenant: &str,
        helper: RouteParty,
        sharer: RouteParty,
    ) -> Result<u64, StreamPathReason> {
        if self.routes.len() >= self.settings.max_routes {
            return Err(StreamPathReason::TableFull);
        }
        let now = Instant::now();
        let side = |party: RouteParty| Side {
            binding: Mutex::new(Binding {
                addr: party.connection.remote_address(),
                local_ip: party.connection.local_ip(),
                budget: ByteBucket::new(
                    self.settings.session_bytes_per_sec,
                    self.settings.burst_bytes,
                    now,
                ),
            }),
            party,
        };
        let tenant = tenant.to_string();
        let route = Arc::new(Route {
            session,
            sides: [side(helper), side(sharer)],
            packets: metrics::counter!("relay_forwarder_packets_total", "tenant" => tenant.clone()),
            bytes: metrics::counter!("relay_forwarder_bytes_total", "tenant" => tenant.clone()),
            batches: metrics::counter!("relay_forwarder_batches_total", "tenant" => tenant.clone()),
            drops: DropReason::ALL.map(|reason| {
                metrics::counter!("relay_forwarder_drops_total", "reason" => reason.as_str(), "tenant" => tenant.clone())
            }),
        });
        loop {
            let steering = crate::core::cluster::SocketSteering::SINGLE;
            let key = u64::from_be_bytes(crate::core::cluster::routable_cid(
                self.node,
                steering,
                &mut rand::rng(),
            ));
            if let dashmap::Entry::Vacant(slot) = self.routes.entry(key) {
                slot.insert(route);
                self.routes_gauge.increment(1.0);
                return Ok(key);
            }
        }
    }

    /// Removes `key`'s route: from now on its datagrams are dropped (`unknown_key`).
    pub fn remove(&self, key: u64) {
        if self.routes.remove(&key).is_some() {
            self.routes_gauge.decrement(1.0);
        }
    }

    /// Decides about one forwarded datagram from `from`: the route, the sending side, or
    /// why it is dropped (counted by the caller). `run` is the route of the datagram before
    /// it in the same batch, reused when the key is the same.
    fn accept(
        &self,
        datagram: &[u8],
        from: SocketAddr,
        now: Instant,
        run: Option<(u64, &Arc<Route>)>,
    ) -> Result<Accepted, Refused> {
        let Some((key, _payload)) = forwarded::parse(datagram) else {
            return Err((None, DropReason::Malformed));
        };
        let route = match run {
            Some((run_key, route)) if run_key == key => route.clone(),
            _ => match self.routes.get(&key) {
                Some(route) => route.value().clone(),
                None => return Err((None, DropReason::UnknownKey)),
            },
        };
        if datagram.len() > self.settings.max_packet_bytes {
            return Err((Some(route), DropReason::TooLarge));
        }
        match route.admit(from, datagram.len() as u64, now) {
            Ok(side) => {
                #[cfg(feature = "tap")]
                crate::tap::record(_payload);
                Ok((key, route, side))
            }
            Err(reason) => Err((Some(route), reason)),
        }
    }

    fn count_drop(&self, route: Option<&Arc<Route>>, reason: DropReason) {
        match (route, reason) {
            (Some(route), reason) => route.drop_counted(reason, 1),
            (None, DropReason::UnknownKey) => self.unknown_key.increment(1),
            (None, _) => self.malformed.increment(1),
        }
    }
}

/// An accepted datagram: its key, its route, and the side (0: helper, 1: sharer) it came
/// from.
type Accepted = (u64, Arc<Route>, usize);

/// A dropped datagram: its route when it has one (for the tenant's count), and why.
type Refused = (Option<Arc<Route>>, DropReason);

/// Consecutive accepted datagrams of one received batch that go out as one send.
struct Run {
    key: u64,
    route: Arc<Route>,
    from_side: usize,
    destination: SocketAddr,
    src_ip: Option<IpAddr>,
    /// Byte range in the received buffer.
    start: usize,
    end: usize,
    segments: usize,
}

/// A relay UDP socket under quinn that takes the packet path's datagrams out of what quinn
/// receives and forwards them (see the module's documentation).
pub struct ForwardingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    forwarder: Arc<Forwarder>,
}

impl fmt::Debug for ForwardingSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ForwardingSocket")
            .field("inner", &self.inner)
            .finish()
    }
}

impl ForwardingSocket {
    /// Wraps `inner` (the runtime's socket for one relay endpoint).
    pub fn new(inner: Arc<dyn AsyncUdpSocket>, forwarder: Arc<Forwarder>) -> ForwardingSocket {
        ForwardingSocket { inner, forwarder }
    }

    /// Sends a run from `buf`, counting it as forwarded or dropped.
    fn flush(&self, run: Run, buf: &[u8], ecn: Option<quinn::udp::EcnCodepoint>, stride: usize) {
        let contents = &buf[run.start..run.end];
        let transmit = Transmit {
            destination: run.destination,
            ecn,
            contents,
            segment_size: (run.segments > 1).then_some(stride),
            src_ip: run.src_ip,
        };
        let route = &run.route;
        match self.inner.try_send(&transmit) {
            Ok(()) => {
                let len = contents.len() as u64;
                route.packets.increment(run.segments as u64);
                route.bytes.increment(len);
                route.batches.increment(1);
                route.sides[run.from_side]
                    .party
                    .counters
                    .forwarded_bytes
                    .fetch_add(len, Ordering::Relaxed);
            }
            Err(e) => {
                route.drop_counted(DropReason::SendFailed, run.segments as u64);
                if e.kind() != io::ErrorKind::WouldBlock {
                    debug!(error = %e, destination = %run.destination, "forwarded datagram not sent");
                }
            }
        }
    }

    /// Takes the forwarded datagrams out of one received message (possibly several
    /// segments of `stride` bytes, from receive offload), sends them on, and moves the kept
    /// QUIC datagrams to the front; returns the bytes kept.
    fn demux(&self, meta: &RecvMeta, buf: &mut [u8], now: Instant) -> usize {
        let len = meta.len.min(buf.len());
        let stride = if meta.stride == 0 { len } else { meta.stride };
        if len == 0 || stride == 0 {
            return len;
        }
        // Most batches are QUIC only: one look at each segment's first byte.
        if !(0..len)
            .step_by(stride)
            .any(|at| forwarded::is_forwarded(&buf[at..]))
        {
            return len;
        }
        let max_segments = self.inner.max_transmit_segments().max(1);
        let mut kept = 0;
        let mut run: Option<Run> = None;
        for start in (0..len).step_by(stride) {
            let end = (start + stride).min(len);
            if !forwarded::is_forwarded(&buf[start..end]) {
                if let Some(done) = run.take() {
                    self.flush(done, buf, meta.ecn, stride);
                }
                // Only the last segment may be shorter than the stride, and it stays last.
                if kept != start {
                    buf.copy_within(start..end, kept);
                }
                kept += end - start;
                continue;
            }
            let accepted = self.forwarder.accept(
                &buf[start..end],
                meta.addr,
                now,
                run.as_ref().map(|r| (r.key, &r.route)),
            );
            match accepted {
                Ok((key, route, from_side)) => {
                    let extends = run.as_ref().is_some_and(|r| {
                        r.key == key
                            && r.from_side == from_side
                            && r.end == start
                            && r.segments < max_segments
                            && r.end - r.start == r.segments * stride
                    });
                    if extends {
                        if let Some(r) = run.as_mut() {
                            r.end = end;
                            r.segments += 1;
                        }
                    } else {
                        if let Some(done) = run.take() {
                            self.flush(done, buf, meta.ecn, stride);
                        }
                        let (destination, src_ip) = route.destination(1 - from_side);
                        run = Some(Run {
                            key,
                            route,
                            from_side,
                            destination,
                            src_ip,
                            start,
                            end,
                            segments: 1,
                        });
                    }
                }
                Err((route, reason)) => {
                    if let Some(done) = run.take() {
                        self.flush(done, buf, meta.ecn, stride);
                    }
                    self.forwarder.count_drop(route.as_ref(), reason);
                    if reason != DropReason::RateLimited {
                        debug!(reason = reason.as_str(), from = %meta.addr, "forwarded datagram dropped");
                    }
                }
            }
        }
        if let Some(done) = run.take() {
            self.flush(done, buf, meta.ecn, stride);
        }
        kept
    }
}

impl AsyncUdpSocket for ForwardingSocket {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        self.inner.clone().create_io_poller()
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        self.inner.try_send(transmit)
    }

    fn poll_recv(
        &self,
        cx: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        for _ in 0..MAX_FORWARDED_BATCHES {
            let count = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(count)) => count,
                other => return other,
            };
            let now = Instant::now();
            let mut any_kept = false;
            for (meta, buf) in meta.iter_mut().zip(bufs.iter_mut()).take(count) {
                // A message left empty is skipped by quinn (it walks `len` bytes by
                // `stride`), so the batch keeps its shape.
                meta.len = self.demux(meta, buf, now);
                any_kept |= meta.len > 0;
            }
            if any_kept {
                return Poll::Ready(Ok(count));
            }
        }
        // Only forwarded datagrams for a while: let the endpoint's other work run, and come
        // back at once.
        cx.waker().wake_by_ref();
        Poll::Pending
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        self.inner.local_addr()
    }

    fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }

    fn max_receive_segments(&self) -> usize {
        self.inner.max_receive_segments()
    }

    fn may_fragment(&self) -> bool {
        self.inner.may_fragment()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::{RelayIdentity as _, RelayTrust, ServerIdentity};

    /// One send: destination, contents, segment size.
    type Sent = (SocketAddr, Vec<u8>, Option<usize>);

    /// A socket that records what is sent through it.
    #[derive(Debug, Default)]
    struct Recorder {
        sent: Mutex<Vec<Sent>>,
    }

    #[derive(Debug)]
    struct AlwaysWritable;

    impl UdpPoller for AlwaysWritable {
        fn poll_writable(self: Pin<&mut Self>, _: &mut Context) -> Poll<io::Result<()>> {
            Poll::Ready(Ok(()))
        }
    }

    impl AsyncUdpSocket for Recorder {
        fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
            Box::pin(AlwaysWritable)
        }
        fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
            self.sent.lock().unwrap().push((
                transmit.destination,
                transmit.contents.to_vec(),
                transmit.segment_size,
            ));
            Ok(())
        }
        fn poll_recv(
            &self,
            _: &mut Context,
            _: &mut [IoSliceMut<'_>],
            _: &mut [RecvMeta],
        ) -> Poll<io::Result<usize>> {
            Poll::Pending
        }
        fn local_addr(&self) -> io::Result<SocketAddr> {
            Ok(SocketAddr::from(([127, 0, 0, 1], 9)))
        }
        fn max_transmit_segments(&self) -> usize {
            64
        }
    }

    /// Two real QUIC connections on loopback, as the relay sees them (server side).
    async fn two_connections() -> (Vec<quinn::Endpoint>, quinn::Connection, quinn::Connection) {
        let identity = ServerIdentity::self_signed(vec!["localhost".into()]).unwrap();
        let server_config =
            quinn::ServerConfig::with_crypto(Arc::new(identity.quic_server_config().unwrap()));
        let server =
            quinn::Endpoint::server(server_config, SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let crypto = Arc::new(
            RelayTrust::Pin(identity.fingerprint())
                .quic_client_config()
                .unwrap(),
        );
        let mut endpoints = vec![server.clone()];
        let mut accepted = Vec::new();
        for _ in 0..2 {
            let mut client =
                quinn::Endpoint::client(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
            client.set_default_client_config(quinn::ClientConfig::new(crypto.clone()));
            let connecting = client
                .connect(server.local_addr().unwrap(), "localhost")
                .unwrap();
            let incoming = server.accept().await.unwrap();
            let (_, connection) = tokio::join!(connecting, incoming);
            accepted.push(connection.unwrap());
            endpoints.push(client);
        }
        let sharer = accepted.pop().unwrap();
        let helper = accepted.pop().unwrap();
        (endpoints, helper, sharer)
    }

    fn segment(first: u8, fill: u8, len: usize, key: u64) -> Vec<u8> {
        let mut segment = if first == forwarded::MARKER {
            forwarded::header(key).to_vec()
        } else {
            vec![first]
        };
        segment.resize(len, fill);
        segment
    }

    #[tokio::test]
    async fn a_mixed_batch_keeps_quic_in_place_and_forwards_runs_as_one_send() {
        let (_endpoints, helper, sharer) = two_connections().await;
        let (helper_addr, sharer_addr) = (helper.remote_address(), sharer.remote_address());
        let forwarder = Arc::new(Forwarder::new(
            ForwarderConfig::default(),
            crate::core::cluster::NodeId::FIRST,
        ));
        let counters = [
            Arc::new(ChannelCounters::default()),
            Arc::new(ChannelCounters::default()),
        ];
        let key = forwarder
            .insert(
                SessionId::empty(),
                "unit",
                RouteParty {
                    connection: helper,
                    counters: counters[0].clone(),
                },
                RouteParty {
                    connection: sharer,
                    counters: counters[1].clone(),
                },
            )
            .unwrap();
        let recorder = Arc::new(Recorder::default());
        let socket = ForwardingSocket::new(recorder.clone(), forwarder.clone());

        // From the helper, stride 100: QUIC, forwarded, forwarded, QUIC, forwarded (short).
        let segments = [
            segment(0x41, 1, 100, key),
            segment(forwarded::MARKER, 2, 100, key),
            segment(forwarded::MARKER, 3, 100, key),
            segment(0xC3, 4, 100, key),
            segment(forwarded::MARKER, 5, 60, key),
        ];
        let mut buf: Vec<u8> = segments.concat();
        let meta = RecvMeta {
            addr: helper_addr,
            len: buf.len(),
            stride: 100,
            ecn: None,
            dst_ip: None,
        };
        let kept = socket.demux(&meta, &mut buf, Instant::now());

        // The QUIC segments, moved together at the front, the stride kept.
        assert_eq!(kept, 200);
        assert_eq!(buf[..100], segments[0][..]);
        assert_eq!(buf[100..200], segments[3][..]);
        // The two adjacent forwarded ones as one GSO send, the last one alone; unchanged,
        // to the sharer.
        let sent = recorder.sent.lock().unwrap().clone();
        assert_eq!(
            sent,
            vec![
                (
                    sharer_addr,
                    [&segments[1][..], &segments[2][..]].concat(),
                    Some(100)
                ),
                (sharer_addr, segments[4].clone(), None),
            ]
        );
        assert_eq!(counters[0].forwarded_bytes.load(Ordering::Relaxed), 260);
        assert_eq!(counters[1].total(), 0);

        // A batch of forwarded datagrams only leaves nothing for quinn.
        let mut buf = segment(forwarded::MARKER, 6, 80, key);
        let meta = RecvMeta {
            addr: sharer_addr,
            len: 80,
            stride: 80,
            ecn: None,
            dst_ip: None,
        };
        assert_eq!(socket.demux(&meta, &mut buf, Instant::now()), 0);
        assert_eq!(recorder.sent.lock().unwrap().last().unwrap().0, helper_addr);

        // After the route is gone, nothing more is sent.
        forwarder.remove(key);
        let before = recorder.sent.lock().unwrap().len();
        let mut buf = segment(forwarded::MARKER, 7, 80, key);
        assert_eq!(socket.demux(&meta, &mut buf, Instant::now()), 0);
        assert_eq!(recorder.sent.lock().unwrap().len(), before);
    }
}
