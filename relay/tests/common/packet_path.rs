//! A packet-path client for tests, driving the wire by hand (PROTOCOL.md §8a): a native
//! QUIC connection to the relay over a UDP socket of its own ([`DivertingSocket`]) that
//! also sends forwarded datagrams (header + payload) from that same socket, and hands the
//! forwarded datagrams the relay sends it (fixed bit clear) to the test instead of quinn,
//! which would drop them. Control messages are spoken directly, so a test sees exactly
//! what the relay announces.

use std::fmt;
use std::io::{self, IoSliceMut};
use std::net::{Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::{SinkExt, StreamExt};
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use remote_help_proto::framing::ControlCodec;
use remote_help_proto::v1::{self, client_to_relay::Msg as Out, relay_to_client::Msg as In};
use remote_help_proto::{ErrorCode, PROTOCOL_VERSION, forwarded};
use remote_help_relay::core::Role;
use remote_help_relay::dev::Persona;
use remote_help_relay::tls::RelayTrust;
use tokio::sync::mpsc;
use tokio_util::codec::{FramedRead, FramedWrite};

use super::{TestRelay, within};

/// A UDP socket under a quinn endpoint that diverts datagrams with QUIC's fixed bit clear
/// (forwarded ones) to a channel, and can send forwarded datagrams itself.
pub struct DivertingSocket {
    inner: Arc<dyn AsyncUdpSocket>,
    diverted: mpsc::UnboundedSender<Vec<u8>>,
}

impl fmt::Debug for DivertingSocket {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("DivertingSocket")
    }
}

impl DivertingSocket {
    /// A socket on 127.0.0.1 and the receiving end of what it diverts.
    pub fn bind() -> (Arc<DivertingSocket>, mpsc::UnboundedReceiver<Vec<u8>>) {
        let std = std::net::UdpSocket::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let runtime = quinn::default_runtime().unwrap();
        let (diverted, receiver) = mpsc::unbounded_channel();
        let socket = DivertingSocket {
            inner: runtime.wrap_udp_socket(std).unwrap(),
            diverted,
        };
        (Arc::new(socket), receiver)
    }

    /// Sends `datagrams` (each a whole forwarded datagram) to `to` from this socket; with
    /// `segment_size`, as one segmentation-offload send where the socket can.
    pub async fn send(&self, to: SocketAddr, contents: &[u8], segment_size: Option<usize>) {
        loop {
            let transmit = Transmit {
                destination: to,
                ecn: None,
                contents,
                segment_size,
                src_ip: None,
            };
            match self.inner.try_send(&transmit) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => tokio::task::yield_now().await,
                other => return other.unwrap(),
            }
        }
    }

    /// Segments this socket may send at once.
    pub fn max_transmit_segments(&self) -> usize {
        self.inner.max_transmit_segments()
    }
}

impl AsyncUdpSocket for DivertingSocket {
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
        loop {
            let count = match self.inner.poll_recv(cx, bufs, meta) {
                Poll::Ready(Ok(count)) => count,
                other => return other,
            };
            let mut any = false;
            for (meta, buf) in meta.iter_mut().zip(bufs.iter_mut()).take(count) {
                let stride = if meta.stride == 0 {
                    meta.len
                } else {
                    meta.stride
                };
                let mut kept = 0;
                let mut at = 0;
                while at < meta.len {
                    let end = (at + stride).min(meta.len);
                    if forwarded::is_forwarded(&buf[at..end]) {
                        let _ = self.diverted.send(buf[at..end].to_vec());
                    } else {
                        buf.copy_within(at..end, kept);
                        kept += end - at;
                    }
                    at = end;
                }
                meta.len = kept;
                any |= kept > 0;
            }
            if any {
                return Poll::Ready(Ok(count));
            }
        }
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

type Reader = FramedRead<quinn::RecvStream, ControlCodec<v1::RelayToClient, v1::ClientToRelay>>;
type Writer = FramedWrite<quinn::SendStream, ControlCodec<v1::RelayToClient, v1::ClientToRelay>>;

/// A native client speaking the control protocol by hand, on a [`DivertingSocket`].
pub struct PacketClient {
    pub endpoint: quinn::Endpoint,
    pub connection: quinn::Connection,
    pub socket: Arc<DivertingSocket>,
    /// Forwarded datagrams the relay sent to this client's socket, whole (header included).
    pub received: mpsc::UnboundedReceiver<Vec<u8>>,
    reader: Reader,
    writer: Writer,
    relay: SocketAddr,
}

/// The certificate hash a test client announces for `role` (what its peer is told).
pub fn certificate_of(role: Role) -> [u8; 32] {
    match role {
        Role::Helper => [0x11; 32],
        Role::Sharer => [0x22; 32],
    }
}

impl PacketClient {
    /// Connects to `relay` as `role` of `tenant`, announcing the packet path with a
    /// certificate hash of `hash_len` bytes (32 is valid) unless `announce` is false.
    pub async fn connect_with(
        relay: &TestRelay,
        tenant: &str,
        role: Role,
        announce: bool,
        hash_len: usize,
    ) -> Result<PacketClient, (ErrorCode, String)> {
        let (socket, received) = DivertingSocket::bind();
        let mut endpoint_config = quinn::EndpointConfig::default();
        // The relay tells its QUIC packets from forwarded datagrams by the fixed bit.
        endpoint_config.grease_quic_bit(false);
        let mut endpoint = quinn::Endpoint::new_with_abstract_socket(
            endpoint_config,
            None,
            socket.clone(),
            quinn::default_runtime().unwrap(),
        )
        .unwrap();
        let crypto = RelayTrust::Pin(relay.handle.fingerprint())
            .quic_client_config()
            .unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let connection = within(endpoint.connect(relay.addr(), "localhost").unwrap())
            .await
            .unwrap();
        let (send, recv) = within(connection.open_bi()).await.unwrap();
        let max = remote_help_proto::framing::DEFAULT_MAX_CONTROL_MESSAGE;
        let mut client = PacketClient {
            endpoint,
            connection,
            socket,
            received,
            reader: FramedRead::new(recv, ControlCodec::new(max)),
            writer: FramedWrite::new(send, ControlCodec::new(max)),
            relay: relay.addr(),
        };
        let persona = match role {
            Role::Helper => Persona::Helper,
            Role::Sharer => Persona::Sharer,
        };
        let mut hash = certificate_of(role).to_vec();
        hash.resize(hash_len, 0x33);
        client
            .send(Out::Hello(v1::Hello {
                protocol_version: PROTOCOL_VERSION,
                token: relay.tenant(tenant).token(persona),
                role: match role {
                    Role::Helper => v1::Role::Helper,
                    Role::Sharer => v1::Role::Sharer,
                } as i32,
                client_name: "packet-path test client".into(),
                e2e_suites: vec![2, 1],
                packet_path: announce,
                peer_certificate_sha256: hash,
            }))
            .await;
        match client.recv().await? {
            In::Welcome(_) => Ok(client),
            other => panic!("expected Welcome, got {other:?}"),
        }
    }

    /// Connects as `role` of `tenant`, announcing the packet path.
    pub async fn connect(relay: &TestRelay, tenant: &str, role: Role) -> PacketClient {
        Self::connect_with(relay, tenant, role, true, 32)
            .await
            .unwrap()
    }

    /// Sends one control message.
    pub async fn send(&mut self, message: Out) {
        within(self.writer.send(v1::ClientToRelay { msg: Some(message) }))
            .await
            .expect("control message sent");
    }

    /// The next control message; an `Error` becomes `Err`.
    pub async fn recv(&mut self) -> Result<In, (ErrorCode, String)> {
        match within(self.reader.next()).await {
            Some(Ok(v1::RelayToClient {
                msg: Some(In::Error(e)),
            })) => Err((
                ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                e.message,
            )),
            Some(Ok(v1::RelayToClient { msg: Some(m) })) => Ok(m),
            // Refused before the Error could be read: the close carries the code.
            other => match self.connection.close_reason() {
                Some(quinn::ConnectionError::ApplicationClosed(close)) => Err((
                    ErrorCode::from_quic(close.error_code.into_inner())
                        .unwrap_or(ErrorCode::Unspecified),
                    String::from_utf8_lossy(&close.reason).into_owned(),
                )),
                closed => panic!("control stream ended ({other:?}); closed: {closed:?}"),
            },
        }
    }

    /// The next control message that is not an `ObservedAddress` or `DirectPathOffer`.
    pub async fn next(&mut self) -> In {
        loop {
            match self.recv().await.expect("no Error") {
                In::ObservedAddress(_) | In::DirectPathOffer(_) => continue,
                other => return other,
            }
        }
    }

    /// Sends a forwarded datagram: the header for `key`, then `payload`.
    pub async fn forward(&self, key: u64, payload: &[u8]) {
        let mut datagram = forwarded::header(key).to_vec();
        datagram.extend_from_slice(payload);
        self.socket.send(self.relay, &datagram, None).await;
    }

    /// The next forwarded datagram the relay sent to this client, whole.
    pub async fn next_forwarded(&mut self) -> Vec<u8> {
        within(self.received.recv()).await.expect("socket open")
    }

    /// A control round trip (`Ping`/`Pong`): the relay has seen a packet from this
    /// client's current socket when it returns.
    pub async fn round_trip(&mut self, nonce: u64) {
        self.send(Out::Ping(v1::Ping { nonce })).await;
        loop {
            if let In::Pong(pong) = self.next().await
                && pong.nonce == nonce
            {
                return;
            }
        }
    }
}

/// A helper and a sharer of `tenant` (either may decline to announce the packet path) in
/// an active full-control session: each with what its `SessionStarted` said.
pub async fn session_of(
    relay: &TestRelay,
    tenant: &str,
    helper_announces: bool,
    sharer_announces: bool,
) -> (
    (PacketClient, v1::SessionStarted),
    (PacketClient, v1::SessionStarted),
) {
    let mut helper = PacketClient::connect_with(relay, tenant, Role::Helper, helper_announces, 32)
        .await
        .unwrap();
    let mut sharer = PacketClient::connect_with(relay, tenant, Role::Sharer, sharer_announces, 32)
        .await
        .unwrap();
    helper
        .send(Out::CreateSession(v1::CreateSession {
            mode: v1::Mode::FullControl as i32,
            reason: "packet path test".into(),
        }))
        .await;
    let In::SessionCreated(created) = helper.next().await else {
        panic!("expected SessionCreated")
    };
    sharer
        .send(Out::JoinSession(v1::JoinSession { code: created.code }))
        .await;
    let In::ConsentRequest(_) = sharer.next().await else {
        panic!("expected ConsentRequest")
    };
    sharer
        .send(Out::ConsentAnswer(v1::ConsentAnswer { accept: true }))
        .await;
    let In::SessionStarted(sharer_started) = sharer.next().await else {
        panic!("expected SessionStarted")
    };
    let helper_started = loop {
        match helper.next().await {
            In::PeerJoined(_) => continue,
            In::SessionStarted(started) => break started,
            other => panic!("expected SessionStarted, got {other:?}"),
        }
    };
    ((helper, helper_started), (sharer, sharer_started))
}

/// Both parties announced: the session on the packet path, with each side's `PacketPath`.
pub async fn packet_session(
    relay: &TestRelay,
    tenant: &str,
) -> (
    (PacketClient, v1::PacketPath),
    (PacketClient, v1::PacketPath),
) {
    let ((helper, h), (sharer, s)) = session_of(relay, tenant, true, true).await;
    let h = h.packet_path.expect("the helper is told the packet path");
    let s = s.packet_path.expect("the sharer is told the packet path");
    ((helper, h), (sharer, s))
}

/// The sum of the series of metric `name` whose labels include every one of `labels`
/// (`key="value"`), in the relay's `/metrics` now.
pub async fn metric(relay: &TestRelay, name: &str, labels: &[&str]) -> f64 {
    let admin = relay.handle.admin_addr().expect("admin listener");
    super::metrics(admin)
        .await
        .iter()
        .filter(|(series, _)| {
            series
                .split_once('{')
                .map_or(series.as_str() == name, |(n, rest)| {
                    n == name && labels.iter().all(|l| rest.contains(l))
                })
        })
        .map(|(_, v)| v)
        .sum()
}

/// Waits until metric `name` with `labels` reaches at least `at_least`.
pub async fn metric_reaches(relay: &TestRelay, name: &str, labels: &[&str], at_least: f64) {
    within(async {
        loop {
            if metric(relay, name, labels).await >= at_least {
                return;
            }
            tokio::task::yield_now().await;
        }
    })
    .await;
}
