//! The reference client SDK: connect to a relay, authenticate, create or join a session,
//! consent, and move data on the session's channels.
//!
//! A [`Client`] is one QUIC connection with its control stream. Control calls take
//! `&mut self` and read the control stream in order; a started session's channels come
//! from [`secure::channels`], sealed end to end, as objects that can move into their own
//! tasks.
//!
//! ```no_run
//! # async fn demo(helper_opts: remote_help_sdk::client::ClientOptions,
//! #               sharer_opts: remote_help_sdk::client::ClientOptions) -> Result<(), remote_help_sdk::client::ClientError> {
//! use remote_help_sdk::client::{Client, secure};
//! use remote_help_sdk::session::{Channel, Mode, Role};
//! let mut helper = Client::connect(helper_opts).await?;
//! let created = helper.create_session(Mode::FullControl).await?;
//! let mut sharer = Client::connect(sharer_opts).await?;
//! let request = sharer.join(&created.code).await?;       // shows request.helper
//! let _sharer_joined = helper.wait_for_sharer().await?;   // shows the sharer's profile
//! let sharer_start = sharer.accept().await?;
//! let helper_start = helper.wait_for_start().await?;
//! // Both sides run the key exchange at the same time (here in one process; in use, each
//! // in its own, showing its code to its user).
//! let (h, s) = tokio::join!(
//!     secure::channels(&helper, &helper_start, Role::Helper),
//!     secure::channels(&sharer, &sharer_start, Role::Sharer),
//! );
//! let (h, mut s) = (h?, s?);
//! assert_eq!(h.verification_code(), s.verification_code()); // what the users compare
//! let mut input = h.open_channel(Channel::Input).await?;
//! input.send(b"click").await?;
//! let (_channel, mut events) = s.accept_channel().await?;
//! let _click = events.recv().await?;
//! # Ok(()) }
//! ```
//!
//! Plaintext is reachable only through calls named for it: [`Client::unsealed_data`],
//! [`Client::open_unsealed_channel`] and [`Client::accept_unsealed_channel`] (unprotected
//! framing, for measurements and for tests of the relay's forwarding) refuse with
//! [`E2eError::UnsealedWhileProtected`](crate::e2e::E2eError::UnsealedWhileProtected) unless
//! the client opted out with [`ClientOptions::insecure_plaintext_for_measurement`].

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::{Bytes, BytesMut};
use futures_util::{SinkExt, StreamExt};
use remote_help_proto::framing::{
    CONTINUATION, ControlCodec, DataCodec, FrameError, MOVED_MARKER, channel_from_tag, channel_tag,
};
use remote_help_proto::v1::{self, client_to_relay::Msg as Out, relay_to_client::Msg as In};
use remote_help_proto::{ErrorCode, PROTOCOL_VERSION};
use tokio_util::codec::{FramedRead, FramedWrite};

pub mod content;
pub mod direct;
mod endpoint;
mod error;
mod options;
pub mod peer;
pub mod secure;
pub mod test_card;
mod unsealed;

pub use direct::{DirectOutcome, DirectState};
pub use endpoint::{connect_quic, connect_quic_on, endpoint_config};
use endpoint::{connect_quic_routed, quic_config};
pub use error::ClientError;
pub use options::{ClientOptions, Protection};
pub use peer::PeerSession;
pub use unsealed::{ChannelReceiver, ChannelSender, UnsealedChannels};

use crate::session::{Channel, Mode, Role};
use crate::tls::RelayTrust;

/// Largest data frame the SDK sends or accepts on a channel.
pub const MAX_DATA_FRAME: usize = 4 * 1024 * 1024;
/// Redirects one request may follow: a node names the holder directly, so one is normal
/// and a second means the nodes' cluster settings disagree.
const MAX_REDIRECTS: usize = 1;
/// Largest control message the SDK accepts from the relay.
const MAX_CONTROL: usize = 1024 * 1024;

/// The session has started: which mode and channels it has.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SessionStart {
    /// The session id.
    pub session_id: String,
    /// The active mode.
    pub mode: Mode,
    /// The channels the session carries.
    pub channels: Vec<Channel>,
    /// Largest datagram the relay forwards.
    pub max_datagram_size: usize,
    /// The tenant disabled chat.
    pub chat_disabled: bool,
    /// The other party, when the relay sends it (unattended sessions).
    pub peer: Option<v1::Profile>,
    /// The end-to-end protection suite the relay says the announcements give (0: none).
    pub e2e_suite: u32,
    /// The suites the relay says the peer announced, in the peer's order.
    pub peer_e2e_suites: Vec<u32>,
    /// The session's data goes the packet path (PROTOCOL.md §8a): [`secure::channels`]
    /// opens the peer connection.
    pub packet_path: bool,
}

type Reader = FramedRead<quinn::RecvStream, ControlCodec<v1::RelayToClient, v1::ClientToRelay>>;
pub(crate) type Writer =
    FramedWrite<quinn::SendStream, ControlCodec<v1::RelayToClient, v1::ClientToRelay>>;

/// An authenticated connection to a relay.
pub struct Client {
    /// How this client connected (what a redirect reuses, with another address).
    options: ClientOptions,
    endpoint: quinn::Endpoint,
    connection: quinn::Connection,
    /// Whether this client made its endpoint (and so waits for it to go idle on close).
    owns_endpoint: bool,
    reader: Reader,
    /// Shared with the direct-path task, which reports its result on the control stream.
    writer: Arc<tokio::sync::Mutex<Writer>>,
    /// Direct-path state (with the endpoint's socket, for punch packets), when
    /// `ClientOptions::direct_path` is on and this client has its own socket.
    direct: Option<direct::DirectSetup>,
    welcome: v1::Welcome,
    next_nonce: u64,
    peer: Option<v1::Profile>,
    /// This client protects and the current session's peer announced no suite: the data
    /// plane sends it nothing (PROTOCOL.md §8.7.1).
    peer_unprotected: Arc<std::sync::atomic::AtomicBool>,
    /// The packet path, when `ClientOptions::packet_path` is on and this client has its
    /// own socket.
    packet: Option<peer::PacketPath>,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("relay", &self.connection.remote_address())
            .field("me", &self.welcome.you.as_ref().map(|p| &p.subject))
            .finish_non_exhaustive()
    }
}

impl Client {
    /// Connects, sends `Hello` and waits for `Welcome` (and offers direct-path candidates
    /// when `direct_path` is on).
    pub async fn connect(options: ClientOptions) -> Result<Client, ClientError> {
        let socket = std::net::UdpSocket::bind(options.bind).map_err(ClientError::Socket)?;
        Client::connect_on(options, socket).await
    }

    /// Like [`Client::connect`], on a UDP socket the caller already has (bound where it
    /// needs to be, e.g. in another network namespace).
    pub async fn connect_on(
        options: ClientOptions,
        socket: std::net::UdpSocket,
    ) -> Result<Client, ClientError> {
        let raw = if options.direct_path {
            Some(Arc::new(socket.try_clone().map_err(ClientError::Socket)?))
        } else {
            None
        };
        if options.packet_path {
            let (endpoint, connection, routes) = connect_quic_routed(&options, socket).await?;
            let packet = peer::PacketPath::new(routes)?;
            return Client::hello(options, endpoint, connection, true, raw, Some(packet)).await;
        }
        let (endpoint, connection) = connect_quic_on(&options, socket).await?;
        Client::hello(options, endpoint, connection, true, raw, None).await
    }

    /// Like [`Client::connect`], from an endpoint the caller already has, which may carry
    /// many clients' connections (a load generator's thousands of clients on one socket).
    pub async fn connect_from(
        endpoint: &quinn::Endpoint,
        options: ClientOptions,
    ) -> Result<Client, ClientError> {
        let connection = endpoint
            .connect_with(quic_config(&options)?, options.relay, &options.server_name)?
            .await
            .map_err(ClientError::from_handshake)?;
        Client::hello(options, endpoint.clone(), connection, false, None, None).await
    }

    async fn hello(
        options: ClientOptions,
        endpoint: quinn::Endpoint,
        connection: quinn::Connection,
        owns_endpoint: bool,
        raw: Option<Arc<std::net::UdpSocket>>,
        packet: Option<peer::PacketPath>,
    ) -> Result<Client, ClientError> {
        let (send, recv) = connection
            .open_bi()
            .await
            .map_err(ClientError::from_connection)?;
        let mut client = Client {
            options: options.clone(),
            endpoint,
            connection,
            owns_endpoint,
            reader: FramedRead::new(recv, ControlCodec::new(MAX_CONTROL)),
            writer: Arc::new(tokio::sync::Mutex::new(FramedWrite::new(
                send,
                ControlCodec::new(MAX_CONTROL),
            ))),
            direct: None,
            welcome: v1::Welcome::default(),
            next_nonce: 1,
            peer: None,
            peer_unprotected: Arc::default(),
            packet,
        };
        let role = match options.role {
            Role::Helper => v1::Role::Helper,
            Role::Sharer => v1::Role::Sharer,
        };
        client
            .send(Out::Hello(v1::Hello {
                protocol_version: PROTOCOL_VERSION,
                token: options.token,
                role: role as i32,
                client_name: options.client_name,
                e2e_suites: options.protection.announced(),
                packet_path: client.packet.is_some(),
                peer_certificate_sha256: client
                    .packet
                    .as_ref()
                    .map(|p| p.fingerprint().0.to_vec())
                    .unwrap_or_default(),
            }))
            .await?;
        match client.recv().await? {
            In::Welcome(welcome) => {
                client.welcome = welcome;
                if client.options.direct_path
                    && let Some(raw) = raw
                {
                    let setup = direct::DirectSetup::new(&client.connection, raw)?;
                    let local = client.endpoint.local_addr().map_err(ClientError::Socket)?;
                    let offer = setup.offer(local);
                    client.direct = Some(setup);
                    client.send(Out::OfferCandidates(offer)).await?;
                }
                Ok(client)
            }
            other => Err(ClientError::Unexpected(format!(
                "{other:?} instead of Welcome"
            ))),
        }
    }

    /// Sends `request` and returns the relay's answer, following `REDIRECT`s to the node
    /// that holds the session or device (at most [`MAX_REDIRECTS`] hops).
    async fn ask(&mut self, request: Out) -> Result<In, ClientError> {
        let mut hops = 0;
        loop {
            self.send(request.clone()).await?;
            match self.recv().await {
                Err(ClientError::Redirected { address, .. }) if hops < MAX_REDIRECTS => {
                    hops += 1;
                    self.follow(&address).await?;
                }
                Err(ClientError::Redirected { address, .. }) => {
                    return Err(ClientError::Redirect {
                        address,
                        reason: format!(
                            "redirected again after {MAX_REDIRECTS} hop(s): the nodes' [cluster] settings disagree"
                        ),
                    });
                }
                other => return other,
            }
        }
    }

    /// Moves this client to the relay node at `address` (`host:port`): same socket, same
    /// token and role, a fresh connection and `Hello`; the old connection is closed. The
    /// TLS name checked is the address's host when it is a DNS name (cluster nodes' certificates
    /// carry their own names), else the name this client started with.
    async fn follow(&mut self, address: &str) -> Result<(), ClientError> {
        let fail = |reason: String| ClientError::Redirect {
            address: address.to_string(),
            reason,
        };
        let local_v6 = self
            .endpoint
            .local_addr()
            .map(|a| a.is_ipv6())
            .unwrap_or(false);
        let candidates: Vec<SocketAddr> = tokio::net::lookup_host(address)
            .await
            .map_err(|e| fail(e.to_string()))?
            .collect();
        let target = redirect_target(&candidates, local_v6)
            .ok_or_else(|| fail("no address this client's socket can reach (IP family)".into()))?;
        let mut options = self.options.clone();
        options.relay = target;
        let host = address.rsplit_once(':').map_or(address, |(host, _)| host);
        let is_name = host.parse::<std::net::IpAddr>().is_err() && !host.starts_with('[');
        if is_name && matches!(options.trust, RelayTrust::CaCerts(_)) {
            // A relay could name any host with a publicly trusted certificate: only follow
            // it within the domain this client was pointed at.
            if !redirect_host_allowed(&self.options.server_name, host) {
                return Err(fail(format!(
                    "{host} is outside the domain of {}",
                    self.options.server_name
                )));
            }
            options.server_name = host.to_string();
        }
        let connection = self
            .endpoint
            .connect_with(quic_config(&options)?, target, &options.server_name)?
            .await
            .map_err(ClientError::from_handshake)?;
        let packet = self.packet.take();
        if let Some(packet) = &packet {
            packet.routes.set_relay(connection.remote_address());
        }
        let next = Client::hello(
            options,
            self.endpoint.clone(),
            connection,
            self.owns_endpoint,
            self.direct.as_ref().map(|d| d.socket()),
            packet,
        )
        .await?;
        let previous = std::mem::replace(self, next);
        previous.connection.close(0u32.into(), b"redirected");
        Ok(())
    }

    /// The relay node this client is connected to now (after any redirect).
    pub fn relay_addr(&self) -> SocketAddr {
        self.connection.remote_address()
    }

    /// This client's own profile, as the relay verified it.
    pub fn me(&self) -> Option<&v1::Profile> {
        self.welcome.you.as_ref()
    }

    /// Whether this client protects end to end, and with which suites.
    pub fn protection(&self) -> &Protection {
        &self.options.protection
    }

    /// The other party of the current (or last) session, as the relay presented it.
    pub fn peer(&self) -> Option<&v1::Profile> {
        self.peer.as_ref()
    }

    /// The address the relay observes for this client (updated when the relay reports a
    /// change, which it does for clients that offered direct-path candidates).
    pub fn observed_addr(&self) -> &str {
        &self.welcome.observed_addr
    }

    /// Which way the current session's data goes now.
    pub fn path(&self) -> crate::path::Path {
        if let Some(packet) = self.packet.as_ref().filter(|p| p.active()) {
            return if packet.is_direct() {
                crate::path::Path::Direct
            } else {
                crate::path::Path::Relayed
            };
        }
        match self.direct.as_ref().map(|d| d.usable()) {
            Some(Some(_)) => crate::path::Path::Direct,
            _ => crate::path::Path::Relayed,
        }
    }

    /// The direct peer-to-peer connection while the session uses one (for diagnostics:
    /// its RTT, its path statistics).
    pub fn direct_connection(&self) -> Option<quinn::Connection> {
        self.direct.as_ref().and_then(|d| d.usable())
    }

    /// Moves this client's connections to a new local UDP socket, as after a network
    /// change: QUIC migrates them, and the relay (for a client with direct paths on) sends
    /// the new observed address.
    pub fn rebind(&mut self, socket: std::net::UdpSocket) -> Result<(), ClientError> {
        if let Some(direct) = self.direct.as_mut() {
            direct.set_socket(Arc::new(socket.try_clone().map_err(ClientError::Socket)?));
        }
        if let Some(packet) = &self.packet {
            let routed = peer::PeerSocket::wrap(socket, packet.routes.clone())
                .map_err(ClientError::Socket)?;
            return self
                .endpoint
                .rebind_abstract(routed)
                .map_err(ClientError::Socket);
        }
        self.endpoint.rebind(socket).map_err(ClientError::Socket)
    }

    /// Waits until the current session's direct attempt is over and says how it went
    /// (at once when none was offered).
    pub async fn direct_outcome(&self) -> DirectOutcome {
        let Some(setup) = &self.direct else {
            return DirectOutcome::NotOffered;
        };
        let mut state = setup.state();
        let settled = state
            .wait_for(|s| !matches!(s, DirectState::Trying))
            .await
            .map(|s| s.clone());
        match settled {
            Ok(DirectState::Off) => DirectOutcome::NotOffered,
            Ok(DirectState::Up { peer, took, .. }) => DirectOutcome::Direct { peer, took },
            Ok(DirectState::Failed(why) | DirectState::Lost(why)) => DirectOutcome::Relayed(why),
            Ok(DirectState::Trying) | Err(_) => {
                DirectOutcome::Relayed("the direct attempt stopped".into())
            }
        }
    }

    /// Waits until the current session's data goes `path` — for `Direct`, until the attempt
    /// is over either way; for `Relayed`, until no direct path is up (never offered, failed,
    /// or lost) — and says how the direct attempt stands.
    pub async fn wait_for_path(&self, path: crate::path::Path) -> DirectOutcome {
        let Some(setup) = &self.direct else {
            return DirectOutcome::NotOffered;
        };
        let mut state = setup.state();
        // Waiting for "direct" ends too when the attempt is over without it.
        let _ = state
            .wait_for(|s| match path {
                crate::path::Path::Direct => !matches!(s, DirectState::Trying),
                crate::path::Path::Relayed => {
                    !matches!(s, DirectState::Up { .. } | DirectState::Trying)
                }
            })
            .await;
        self.direct_outcome().await
    }

    /// A `SessionStarted`: when the relay offers a direct path, its offer follows at once;
    /// the attempt runs in the background (the session is usable on the relay meanwhile).
    async fn started(&mut self, started: v1::SessionStarted) -> Result<SessionStart, ClientError> {
        let offered = started.direct_path_offered;
        let packet_path = started.packet_path.clone();
        let start = session_start(started)?;
        if let Some(path) = packet_path {
            let rtt = self.connection.rtt();
            let Some(packet) = self.packet.as_mut() else {
                return Err(ClientError::Unexpected(
                    "the relay put the session on the packet path, which this client did not announce"
                        .into(),
                ));
            };
            packet.start(path, &self.endpoint, &self.options.transport, rtt)?;
        }
        if offered {
            match self.recv().await? {
                In::DirectPathOffer(offer) => {
                    let writer = Arc::downgrade(&self.writer);
                    let endpoint = self.endpoint.clone();
                    let routes = self
                        .packet
                        .as_ref()
                        .filter(|p| p.active())
                        .map(|p| p.routes.clone());
                    if let Some(setup) = self.direct.as_mut() {
                        setup.start(offer, endpoint, writer, &self.options.transport, routes);
                    }
                }
                other => return Err(unexpected(other)),
            }
        }
        Ok(start)
    }

    /// What opening the current session's peer connection needs (packet path only).
    pub(crate) fn peer_opener(&self, session_id: &str) -> Result<peer::PeerOpener, ClientError> {
        let packet = self.packet.as_ref().ok_or_else(|| {
            ClientError::Unexpected("this client does not run the packet path".into())
        })?;
        packet.opener(
            &self.endpoint,
            session_id,
            &self.options.transport,
            self.connection.rtt(),
        )
    }

    /// The underlying QUIC connection.
    pub fn connection(&self) -> &quinn::Connection {
        &self.connection
    }

    /// Helper: opens a session; give the returned code to the sharer.
    pub async fn create_session(&mut self, mode: Mode) -> Result<v1::SessionCreated, ClientError> {
        self.create_session_with_reason(mode, "").await
    }

    /// Helper: opens a session with a reason or ticket reference (kept for audit).
    pub async fn create_session_with_reason(
        &mut self,
        mode: Mode,
        reason: &str,
    ) -> Result<v1::SessionCreated, ClientError> {
        self.send(Out::CreateSession(v1::CreateSession {
            mode: mode.to_wire() as i32,
            reason: reason.into(),
        }))
        .await?;
        match self.recv().await? {
            In::SessionCreated(created) => Ok(created),
            other => Err(unexpected(other)),
        }
    }

    /// Helper: waits until a sharer joins; returns the sharer's profile.
    pub async fn wait_for_sharer(&mut self) -> Result<v1::Profile, ClientError> {
        match self.recv().await? {
            In::PeerJoined(joined) => Ok(joined.sharer.unwrap_or_default()),
            other => Err(unexpected(other)),
        }
    }

    /// Helper: waits until a sharer joins; returns the whole notice, including whether
    /// the sharer's device is non-compliant (then answer with [`Client::confirm_compliance`]).
    pub async fn wait_for_peer_joined(&mut self) -> Result<v1::PeerJoined, ClientError> {
        match self.recv().await? {
            In::PeerJoined(joined) => Ok(joined),
            other => Err(unexpected(other)),
        }
    }

    /// Helper: continue (or not) past a compliance warning.
    pub async fn confirm_compliance(&mut self, proceed: bool) -> Result<(), ClientError> {
        self.send(Out::ConfirmCompliance(v1::ConfirmCompliance { proceed }))
            .await
    }

    /// Helper: asks for another mode. Returns the new mode once in effect (after the
    /// sharer's consent when raising), or the refusal (`PERMISSION_DENIED`,
    /// `MODE_DECLINED`, `CONSENT_TIMEOUT`).
    pub async fn request_mode(&mut self, mode: Mode, reason: &str) -> Result<Mode, ClientError> {
        self.send(Out::RequestMode(v1::RequestMode {
            mode: mode.to_wire() as i32,
            reason: reason.into(),
        }))
        .await?;
        self.wait_for_mode_change().await
    }

    /// Waits for the session's mode to change; returns the new mode.
    pub async fn wait_for_mode_change(&mut self) -> Result<Mode, ClientError> {
        match self.recv().await? {
            In::ModeChanged(changed) => Mode::from_wire(changed.mode)
                .ok_or_else(|| ClientError::Unexpected(format!("unknown mode {}", changed.mode))),
            other => Err(unexpected(other)),
        }
    }

    /// Sharer: waits for a consent prompt (after a compliance confirmation, or to raise
    /// the mode of an active session).
    pub async fn wait_for_consent_request(&mut self) -> Result<v1::ConsentRequest, ClientError> {
        match self.recv().await? {
            In::ConsentRequest(request) => Ok(request),
            other => Err(unexpected(other)),
        }
    }

    /// Sharer: answers a prompt to raise the mode; on accept, returns the new mode.
    pub async fn answer_mode_change(&mut self, accept: bool) -> Result<Option<Mode>, ClientError> {
        self.send(Out::ConsentAnswer(v1::ConsentAnswer { accept }))
            .await?;
        if accept {
            self.wait_for_mode_change().await.map(Some)
        } else {
            Ok(None)
        }
    }

    /// Device agent: registers to wait for unattended sessions; returns its device id.
    pub async fn register_device(&mut self) -> Result<String, ClientError> {
        match self.ask(Out::RegisterDevice(v1::RegisterDevice {})).await? {
            In::DeviceRegistered(registered) => Ok(registered.device_id),
            other => Err(unexpected(other)),
        }
    }

    /// Helper: connects to a registered device agent without a consent prompt.
    pub async fn connect_unattended(
        &mut self,
        device_id: &str,
        reason: &str,
    ) -> Result<SessionStart, ClientError> {
        match self
            .ask(Out::ConnectUnattended(v1::ConnectUnattended {
                device_id: device_id.into(),
                reason: reason.into(),
            }))
            .await?
        {
            In::SessionStarted(started) => self.started(started).await,
            other => Err(unexpected(other)),
        }
    }

    /// Helper: waits until the sharer consents.
    pub async fn wait_for_start(&mut self) -> Result<SessionStart, ClientError> {
        match self.recv().await? {
            In::SessionStarted(started) => self.started(started).await,
            other => Err(unexpected(other)),
        }
    }

    /// Sharer: joins by code; returns the consent request to show the user.
    pub async fn join(&mut self, code: &str) -> Result<v1::ConsentRequest, ClientError> {
        match self
            .ask(Out::JoinSession(v1::JoinSession { code: code.into() }))
            .await?
        {
            In::ConsentRequest(request) => Ok(request),
            other => Err(unexpected(other)),
        }
    }

    /// Sharer: consents; returns once the session has started.
    pub async fn accept(&mut self) -> Result<SessionStart, ClientError> {
        self.send(Out::ConsentAnswer(v1::ConsentAnswer { accept: true }))
            .await?;
        match self.recv().await? {
            In::SessionStarted(started) => self.started(started).await,
            other => Err(unexpected(other)),
        }
    }

    /// Sharer: declines; returns once the relay confirms.
    pub async fn decline(&mut self) -> Result<(), ClientError> {
        self.send(Out::ConsentAnswer(v1::ConsentAnswer { accept: false }))
            .await?;
        match self.recv().await {
            Err(ClientError::Refused {
                code: ErrorCode::Declined,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
            Ok(other) => Err(unexpected(other)),
        }
    }

    /// Ends the current session; returns once the relay confirms.
    pub async fn end_session(&mut self) -> Result<(), ClientError> {
        self.send(Out::EndSession(v1::EndSession {})).await?;
        match self.recv().await {
            Err(ClientError::Refused {
                code: ErrorCode::EndedByClient,
                ..
            }) => Ok(()),
            Err(e) => Err(e),
            Ok(other) => Err(unexpected(other)),
        }
    }

    /// Waits for the session to end (the peer ended it, was lost, the relay shuts down);
    /// returns the reason. Other messages are skipped.
    pub async fn wait_for_end(&mut self) -> ErrorCode {
        loop {
            match self.recv().await {
                Ok(_) => continue,
                Err(ClientError::Refused { code, .. }) => return code,
                Err(ClientError::RelayLost(_)) => return ErrorCode::RelayLost,
                Err(_) => return ErrorCode::PeerLost,
            }
        }
    }

    /// Round trip to the relay over the control stream.
    pub async fn ping(&mut self) -> Result<Duration, ClientError> {
        let nonce = self.next_nonce;
        self.next_nonce += 1;
        let start = Instant::now();
        self.send(Out::Ping(v1::Ping { nonce })).await?;
        match self.recv().await? {
            In::Pong(pong) if pong.nonce == nonce => Ok(start.elapsed()),
            other => Err(unexpected(other)),
        }
    }

    /// The session's data plane in the clear: unprotected framing, for measurements and for
    /// tests of the relay's forwarding. Applications use [`secure::channels`].
    ///
    /// Refuses with [`E2eError::UnsealedWhileProtected`](crate::e2e::E2eError::UnsealedWhileProtected)
    /// unless this client opted out of protection
    /// ([`ClientOptions::insecure_plaintext_for_measurement`]): a protecting client's
    /// content goes only sealed, so plaintext is never one misnamed call away.
    ///
    /// Usable while control calls are pending. A request that follows a `REDIRECT`
    /// (`join`, `register_device`, `connect_unattended`) moves the client to another
    /// connection: take this handle after it, not before.
    pub fn unsealed_data(&self) -> Result<UnsealedChannels, ClientError> {
        match self.options.protection {
            Protection::PlaintextForMeasurement => Ok(self.transport()),
            Protection::EndToEnd(_) => Err(crate::e2e::E2eError::UnsealedWhileProtected.into()),
        }
    }

    /// The data plane whatever the protection, unsealed even while this client protects:
    /// the baseline of `rhelp e2e-bench` (the relay crate's `probe::e2e_bench`), which
    /// measures what sealing costs against relays that require protection too. Not for
    /// applications, hence hidden and named for what it is; they use [`secure::channels`].
    #[doc(hidden)]
    pub fn insecure_transport_for_measurement(&self) -> UnsealedChannels {
        self.transport()
    }

    /// The data plane whatever the protection: what the sealed layer ([`secure`]) and the
    /// measurement opt-out are built on. Never handed to applications as it is.
    pub(crate) fn transport(&self) -> UnsealedChannels {
        UnsealedChannels {
            connection: self.connection.clone(),
            direct: self.direct.as_ref().map(|d| d.link()),
            peer_unprotected: Some(self.peer_unprotected.clone()),
        }
    }

    /// Opens this side's stream for `channel` in an active session, unprotected: see
    /// [`Client::unsealed_data`] (measurements and relay tests only; refused while this
    /// client protects). Applications use [`secure::channels`].
    pub async fn open_unsealed_channel(
        &self,
        channel: Channel,
    ) -> Result<ChannelSender, ClientError> {
        self.unsealed_data()?.open_channel(channel).await
    }

    /// Waits for the peer to open a channel towards this side, unprotected: see
    /// [`Client::unsealed_data`] (measurements and relay tests only; refused while this
    /// client protects). Applications use [`secure::channels`].
    pub async fn accept_unsealed_channel(&self) -> Result<(Channel, ChannelReceiver), ClientError> {
        self.unsealed_data()?.accept_channel().await
    }

    /// Gives up the SDK's control of the connection after authentication: the endpoint,
    /// the connection and the control stream's halves, for tools and tests that speak the
    /// protocol themselves. Bytes the SDK had already buffered from the relay are dropped.
    /// Direct paths stop. Fails only while a direct-path task is writing to the control
    /// stream at that moment.
    #[allow(clippy::type_complexity)]
    pub fn into_raw_parts(
        mut self,
    ) -> Result<
        (
            quinn::Endpoint,
            quinn::Connection,
            quinn::SendStream,
            quinn::RecvStream,
        ),
        ClientError,
    > {
        self.direct = None;
        if let Some(packet) = self.packet.as_mut() {
            packet.end_session();
        }
        let writer = Arc::try_unwrap(self.writer)
            .map_err(|_| ClientError::Unexpected("the control stream is in use".into()))?
            .into_inner();
        Ok((
            self.endpoint,
            self.connection,
            writer.into_inner(),
            self.reader.into_inner(),
        ))
    }

    /// Closes the connection and waits (bounded) for the close to reach the relay.
    pub async fn close(mut self) {
        if let Some(direct) = self.direct.as_mut() {
            direct.end_session();
        }
        if let Some(packet) = self.packet.as_mut() {
            packet.end_session();
        }
        self.connection.close(0u32.into(), b"bye");
        // A shared endpoint's driver sends the close; waiting for it to be idle would wait
        // for every other client on it.
        if self.owns_endpoint {
            let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
        }
    }

    async fn send(&mut self, message: Out) -> Result<(), ClientError> {
        let result = self
            .writer
            .lock()
            .await
            .send(v1::ClientToRelay { msg: Some(message) })
            .await;
        match result {
            Ok(()) => Ok(()),
            Err(FrameError::Io(_)) => Err(self.why_closed().await),
            Err(e) => Err(e.into()),
        }
    }

    /// Our control stream was stopped: the relay is closing the connection, and said why in
    /// its last message, an `Error{fatal: true}` that may still be unread (the same code
    /// then arrives as the connection's close). Read what is left, briefly (the relay
    /// lingers 1 s for it), so the caller sees that code rather than a bare failure; older
    /// messages still queued are stale and skipped.
    async fn why_closed(&mut self) -> ClientError {
        let fatal = tokio::time::timeout(Duration::from_secs(1), async {
            while let Some(Ok(message)) = self.reader.next().await {
                if let Some(In::Error(e)) = message.msg
                    && e.fatal
                {
                    return Some(ClientError::Refused {
                        code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                        message: e.message,
                    });
                }
            }
            None
        })
        .await;
        match fatal {
            Ok(Some(refused)) => refused,
            _ => self.closed_error(),
        }
    }

    /// The next control message; `Error` and `SessionEnded` become `Refused` errors.
    async fn recv(&mut self) -> Result<In, ClientError> {
        loop {
            let message = match self.reader.next().await {
                None => return Err(self.closed_error()),
                Some(Err(FrameError::Io(_))) => return Err(self.closed_error()),
                Some(Err(e)) => return Err(e.into()),
                Some(Ok(v1::RelayToClient { msg: None })) => continue,
                Some(Ok(v1::RelayToClient { msg: Some(m) })) => m,
            };
            match &message {
                In::ObservedAddress(observed) => {
                    self.welcome.observed_addr = observed.address.clone();
                    continue;
                }
                In::SessionEnded(_) => {
                    if let Some(direct) = self.direct.as_mut() {
                        direct.end_session();
                    }
                    if let Some(packet) = self.packet.as_mut() {
                        packet.end_session();
                    }
                }
                // What the session allows, for the checks on a direct path.
                In::SessionStarted(started) => {
                    if started.peer.is_some() {
                        self.peer = started.peer.clone();
                    }
                    let protects = self.options.protection != Protection::PlaintextForMeasurement;
                    self.peer_unprotected.store(
                        protects && started.peer_e2e_suites.is_empty(),
                        std::sync::atomic::Ordering::SeqCst,
                    );
                    if let Some(mode) = Mode::from_wire(started.mode) {
                        let view = direct::SessionView {
                            mode,
                            chat_allowed: !started.chat_disabled,
                            role: self.options.role,
                        };
                        if let Some(direct) = self.direct.as_ref() {
                            direct.set_view(view);
                        }
                        if let Some(packet) = self.packet.as_ref() {
                            packet.set_view(view);
                        }
                    }
                }
                In::ModeChanged(changed) => {
                    if let Some(mode) = Mode::from_wire(changed.mode) {
                        if let Some(direct) = self.direct.as_ref() {
                            direct.set_mode(mode);
                        }
                        if let Some(packet) = self.packet.as_ref() {
                            packet.set_mode(mode);
                        }
                    }
                }
                In::PeerJoined(joined) => self.peer = joined.sharer.clone(),
                In::ConsentRequest(request) if !request.mode_change => {
                    self.peer = request.helper.clone()
                }
                _ => {}
            }
            return match message {
                In::Error(e) if e.code == ErrorCode::Redirect as i32 => {
                    Err(ClientError::Redirected {
                        address: e.redirect_address,
                        node: e.redirect_node,
                    })
                }
                In::Error(e) => Err(ClientError::Refused {
                    code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                    message: e.message,
                }),
                In::SessionEnded(e) => Err(ClientError::Refused {
                    code: ErrorCode::try_from(e.reason).unwrap_or(ErrorCode::Unspecified),
                    message: e.message,
                }),
                other => Ok(other),
            };
        }
    }

    fn closed_error(&self) -> ClientError {
        match self.connection.close_reason() {
            Some(reason) => ClientError::from_connection(reason),
            None => ClientError::Unexpected("the relay closed the control stream".into()),
        }
    }
}

/// Which resolved address of a redirect target to dial: one of the socket's own family,
/// else (from a dual-stack IPv6 socket) an IPv4 one. An IPv4 socket cannot reach IPv6.
fn redirect_target(candidates: &[SocketAddr], local_v6: bool) -> Option<SocketAddr> {
    candidates
        .iter()
        .find(|a| a.is_ipv6() == local_v6)
        .or_else(|| candidates.iter().find(|a| local_v6 && a.is_ipv4()))
        .copied()
}

/// Whether a redirect may take a CA-trusting client from `original` (the name it was
/// pointed at) to `target`: the same name or a name under it (`relay.example.com` allows
/// `relay-2.relay.example.com`). Siblings are refused: without the public suffix list a
/// "parent domain" may be a registry (`co.uk`) that anyone can hold names under.
fn redirect_host_allowed(original: &str, target: &str) -> bool {
    let original = original.trim_end_matches('.').to_ascii_lowercase();
    let target = target.trim_end_matches('.').to_ascii_lowercase();
    target == original || target.ends_with(&format!(".{original}"))
}

fn unexpected(message: In) -> ClientError {
    ClientError::Unexpected(format!("{message:?}"))
}

fn session_start(started: v1::SessionStarted) -> Result<SessionStart, ClientError> {
    let mode = Mode::from_wire(started.mode)
        .ok_or_else(|| ClientError::Unexpected(format!("unknown mode {}", started.mode)))?;
    Ok(SessionStart {
        session_id: started.session_id,
        mode,
        channels: started
            .channels
            .into_iter()
            .filter_map(|c| v1::Channel::try_from(c).ok().and_then(Channel::from_wire))
            .collect(),
        max_datagram_size: started.max_datagram_size as usize,
        chat_disabled: started.chat_disabled,
        peer: started.peer,
        e2e_suite: started.e2e_suite,
        peer_e2e_suites: started.peer_e2e_suites,
        packet_path: started.packet_path.is_some(),
    })
}

#[cfg(test)]
mod tests;
