//! End-to-end protected sessions for the SDK: the key exchange over the `KEYS` channel,
//! then sealed channels and datagrams (see [`crate::e2e`] for the construction).
//!
//! ```no_run
//! # async fn demo(helper: &remote_help_sdk::client::Client, start: &remote_help_sdk::client::SessionStart)
//! #     -> Result<(), remote_help_sdk::client::ClientError> {
//! use remote_help_sdk::client::secure;
//! use remote_help_sdk::session::{Channel, Role};
//! let mut session = secure::establish(helper, start, Role::Helper).await?;
//! println!("verification code: {}", session.verification_code()); // compare with the sharer
//! let mut input = session.open_channel(Channel::Input).await?;
//! input.send(b"click 10 20").await?;
//! # Ok(()) }
//! ```

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};

use bytes::Bytes;

use super::{ChannelReceiver, ChannelSender, Client, ClientError, SessionStart, UnsealedChannels};
use crate::e2e::{
    DatagramOpener, E2eError, KeyExchange, PUBLIC_KEY_LEN, Party, Sealer, SessionKeys,
    StreamOpener, Suite, Transcript, choose_suite, datagram_sealer, stream_domain,
};
use crate::session::{Channel, Role};

/// An active session whose channels are sealed end to end.
pub struct SecureSession {
    keys: SessionKeys,
    data: UnsealedChannels,
    /// Channels the peer opened before its key arrived.
    pending: VecDeque<(Channel, ChannelReceiver)>,
    datagrams_out: Sealer,
    datagrams_in: DatagramOpener,
    /// The next stream number of each channel this side opens (by channel index).
    streams_out: Mutex<[u32; 4]>,
    /// Stream numbers of the peer's streams already accepted, by channel: a stream that
    /// repeats one is a replay.
    streams_in: Arc<Mutex<HashSet<(usize, u32)>>>,
}

impl std::fmt::Debug for SecureSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SecureSession")
            .field("keys", &self.keys)
            .finish_non_exhaustive()
    }
}

/// Runs the key exchange for an active session: both sides call this right after
/// `SessionStarted`, before opening other channels.
///
/// Refuses, before anything is sent, a peer that announced no protection
/// ([`E2eError::PeerUnprotected`]), a client that announced none itself
/// ([`crate::client::Protection::PlaintextForMeasurement`]), and a suite the relay named
/// that the two announcements do not give ([`E2eError::SuiteMismatch`]).
///
/// The future borrows nothing: a caller can race it against [`Client::wait_for_end`], so a
/// peer that vanishes before sending its key ends the wait with the session's end.
pub fn establish(
    client: &Client,
    start: &SessionStart,
    role: Role,
) -> impl std::future::Future<Output = Result<SecureSession, ClientError>> + Send + 'static {
    let party = |p: &remote_help_proto::v1::Profile| Party {
        tenant: p.tenant_id.clone(),
        subject: p.subject.clone(),
    };
    let me = client
        .me()
        .map(party)
        .ok_or_else(|| ClientError::Unexpected("no own profile (not authenticated)".into()));
    let peer = client
        .peer()
        .map(party)
        .ok_or_else(|| ClientError::Unexpected("the peer's profile is unknown".into()));
    let own_suites = client.protection().announced();
    let start = start.clone();
    let data = client.transport();
    async move { exchange_keys(me?, peer?, own_suites, &start, role, data).await }
}

/// The key exchange itself, on owned parts (see [`establish`]).
async fn exchange_keys(
    me: Party,
    peer: Party,
    own_suites: Vec<u32>,
    start: &SessionStart,
    role: Role,
    data: UnsealedChannels,
) -> Result<SecureSession, ClientError> {
    let suite = negotiated(role, &own_suites, start)?;
    let exchange = KeyExchange::start()?;
    let mut keys_out = data.open_channel(Channel::Keys).await?;
    keys_out
        .send(Bytes::copy_from_slice(&exchange.public_key()))
        .await?;
    keys_out.finish().await?;

    let mut pending = VecDeque::new();
    let peer_key = loop {
        let (channel, mut receiver) = data.accept_channel().await?;
        if channel != Channel::Keys {
            pending.push_back((channel, receiver));
            continue;
        }
        let frame = receiver.recv().await?.ok_or_else(|| {
            ClientError::E2e(E2eError::KeyExchange("the peer sent no key".into()))
        })?;
        let key: [u8; PUBLIC_KEY_LEN] = frame[..].try_into().map_err(|_| {
            ClientError::E2e(E2eError::KeyExchange(format!(
                "a key has 32 bytes, not {}",
                frame.len()
            )))
        })?;
        break key;
    };
    let (helper, sharer, helper_key, sharer_key) = match role {
        Role::Helper => (me, peer, exchange.public_key(), peer_key),
        Role::Sharer => (peer, me, peer_key, exchange.public_key()),
    };
    let (helper_suites, sharer_suites) = match role {
        Role::Helper => (own_suites, start.peer_e2e_suites.clone()),
        Role::Sharer => (start.peer_e2e_suites.clone(), own_suites),
    };
    let transcript = Transcript {
        session_id: start.session_id.clone(),
        helper,
        sharer,
        helper_suites,
        sharer_suites,
        suite,
        helper_key,
        sharer_key,
    };
    let keys = exchange.finish(role, &transcript)?;
    Ok(SecureSession {
        datagrams_out: datagram_sealer(&keys),
        datagrams_in: keys.datagram_opener(),
        keys,
        data,
        pending,
        streams_out: Mutex::new([0; 4]),
        streams_in: Arc::new(Mutex::new(HashSet::new())),
    })
}

/// The suite both announcements give, checked against what the relay said: this side's
/// own list, the peer's list as the relay reported it, and the relay's choice must agree.
fn negotiated(role: Role, own: &[u32], start: &SessionStart) -> Result<Suite, E2eError> {
    if own.is_empty() {
        return Err(E2eError::KeyExchange(
            "this client announced no protection suite".into(),
        ));
    }
    if start.peer_e2e_suites.is_empty() {
        return Err(E2eError::PeerUnprotected);
    }
    let (helper, sharer) = match role {
        Role::Helper => (own, &start.peer_e2e_suites[..]),
        Role::Sharer => (&start.peer_e2e_suites[..], own),
    };
    let computed = choose_suite(helper, sharer).ok_or(E2eError::NoCommonSuite)?;
    if computed != start.e2e_suite {
        return Err(E2eError::SuiteMismatch {
            announced: start.e2e_suite,
            computed,
        });
    }
    // Our own list holds only suites we know, so the common one is known.
    Suite::from_id(computed).ok_or(E2eError::NoCommonSuite)
}

impl SecureSession {
    /// A sealed session over `data` with keys agreed elsewhere: for tools that play both
    /// parties in one process over a connection no relay announces suites on (loadtest's
    /// direct baseline). Applications use [`establish`] or [`channels`].
    pub fn with_keys(data: UnsealedChannels, keys: SessionKeys) -> SecureSession {
        SecureSession {
            datagrams_out: datagram_sealer(&keys),
            datagrams_in: keys.datagram_opener(),
            keys,
            data,
            pending: VecDeque::new(),
            streams_out: Mutex::new([0; 4]),
            streams_in: Arc::new(Mutex::new(HashSet::new())),
        }
    }

    /// The code both users compare (`123 456`); different codes mean the keys were
    /// substituted on the way, and the session must be ended.
    pub fn verification_code(&self) -> &str {
        &self.keys.verification_code
    }

    /// This side's session keys (to seal frames by hand, e.g. in tools and tests).
    pub fn keys(&self) -> &SessionKeys {
        &self.keys
    }

    /// The suite in use.
    pub fn suite(&self) -> Suite {
        self.keys.suite()
    }

    /// Opens this side's sealed channel. Each stream of a channel gets the next stream
    /// number, so a channel opened again never reuses a nonce.
    pub async fn open_channel(&self, channel: Channel) -> Result<SealedSender, ClientError> {
        let stream = {
            let mut numbers = self
                .streams_out
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            let slot = &mut numbers[channel.index()];
            let stream = *slot;
            *slot = slot.checked_add(1).ok_or_else(|| {
                ClientError::E2e(E2eError::KeyExchange("stream numbers exhausted".into()))
            })?;
            stream
        };
        Ok(SealedSender {
            inner: self.data.open_channel(channel).await?,
            sealer: self.keys.stream_sealer(stream_domain(channel), stream),
        })
    }

    /// Waits for the peer's next sealed channel.
    pub async fn accept_channel(&mut self) -> Result<(Channel, SealedReceiver), ClientError> {
        let (channel, inner) = match self.pending.pop_front() {
            Some(ready) => ready,
            None => self.data.accept_channel().await?,
        };
        Ok((
            channel,
            SealedReceiver {
                inner,
                channel,
                opener: self.keys.stream_opener(stream_domain(channel)),
                seen: self.streams_in.clone(),
                checked: false,
            },
        ))
    }

    /// Sends one sealed lossy screen frame.
    pub fn send_datagram(&mut self, plaintext: &[u8]) -> Result<(), ClientError> {
        let sealed = self.datagrams_out.seal(plaintext)?;
        self.data.send_datagram(Bytes::from(sealed))
    }

    /// Receives and opens one lossy screen frame.
    pub async fn read_datagram(&mut self) -> Result<Vec<u8>, ClientError> {
        let sealed = self.data.read_datagram().await?;
        Ok(self.datagrams_in.open(&sealed)?)
    }
}

/// A sealed sending channel.
pub struct SealedSender {
    inner: ChannelSender,
    sealer: Sealer,
}

impl SealedSender {
    /// Seals and sends one frame.
    pub async fn send(&mut self, plaintext: &[u8]) -> Result<(), ClientError> {
        let sealed = self.sealer.seal(plaintext)?;
        self.inner.send(Bytes::from(sealed)).await
    }

    /// Sends the sealed end marker and finishes the stream.
    pub async fn finish(mut self) -> Result<(), ClientError> {
        let end = self.sealer.seal_end()?;
        self.inner.send(Bytes::from(end)).await?;
        self.inner.finish().await
    }
}

/// A sealed receiving channel.
pub struct SealedReceiver {
    inner: ChannelReceiver,
    channel: Channel,
    opener: StreamOpener,
    /// The session's accepted stream numbers.
    seen: Arc<Mutex<HashSet<(usize, u32)>>>,
    /// This stream's number was checked against `seen`.
    checked: bool,
}

impl SealedReceiver {
    /// The next frame's plaintext; `None` once the sender finished with the sealed end
    /// marker. A forged, replayed, reordered or truncated stream is an error.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        match self.inner.recv().await? {
            Some(frame) => {
                let plain = self.opener.open(&frame)?;
                if !self.checked
                    && let Some(stream) = self.opener.stream()
                {
                    let fresh = self
                        .seen
                        .lock()
                        .unwrap_or_else(|poisoned| poisoned.into_inner())
                        .insert((self.channel.index(), stream));
                    if !fresh {
                        // A whole earlier stream sent again (by a relay) opens frame by
                        // frame; its stream number gives it away.
                        return Err(E2eError::Replayed(u64::from(stream) << 32).into());
                    }
                    self.checked = true;
                }
                Ok(plain)
            }
            None => {
                self.opener.finish()?;
                Ok(None)
            }
        }
    }
}

/// A started session's channels as the SDK hands them to applications: sealed end to end
/// unless the client was built with
/// [`ClientOptions::insecure_plaintext_for_measurement`](crate::client::ClientOptions::insecure_plaintext_for_measurement).
///
/// ```no_run
/// # async fn demo(sharer: &remote_help_sdk::client::Client, start: &remote_help_sdk::client::SessionStart)
/// #     -> Result<(), remote_help_sdk::client::ClientError> {
/// use remote_help_sdk::client::secure;
/// use remote_help_sdk::session::{Channel, Role};
/// let channels = secure::channels(sharer, start, Role::Sharer).await?;
/// if let Some(code) = channels.verification_code() {
///     println!("verification code: {code}"); // the helper must see the same
/// }
/// let mut screen = channels.open_channel(Channel::Screen).await?;
/// screen.send(b"first frame").await?;
/// # Ok(()) }
/// ```
pub enum SessionChannels {
    /// The packet path (PROTOCOL.md §8a): the peer connection's streams, protected by its
    /// TLS 1.3 end to end, whatever the client's `Protection` (there is no plaintext
    /// packet path).
    Peer(super::PeerSession),
    /// Sealed end to end (the default on the stream path).
    Protected(SecureSession),
    /// In the clear, for measurements only.
    PlaintextForMeasurement(super::UnsealedChannels),
}

impl std::fmt::Debug for SessionChannels {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            SessionChannels::Peer(s) => f.debug_tuple("Peer").field(s).finish(),
            SessionChannels::Protected(s) => f.debug_tuple("Protected").field(s).finish(),
            SessionChannels::PlaintextForMeasurement(_) => f.write_str("PlaintextForMeasurement"),
        }
    }
}

/// The channels of a started session, as the client's [`Protection`](crate::client::Protection)
/// says: with protection (the default), the key exchange runs first and every channel is
/// sealed; a peer that announced no protection is refused before anything is sent.
///
/// Like [`establish`], the future borrows nothing, so it can be raced against
/// [`Client::wait_for_end`].
pub fn channels(
    client: &Client,
    start: &SessionStart,
    role: Role,
) -> impl std::future::Future<Output = Result<SessionChannels, ClientError>> + Send + 'static {
    let peer = if start.packet_path {
        Some(client.peer_opener(&start.session_id))
    } else {
        None
    };
    let protected = match client.protection() {
        _ if peer.is_some() => None,
        crate::client::Protection::EndToEnd(_) => Some(establish(client, start, role)),
        crate::client::Protection::PlaintextForMeasurement => None,
    };
    let data = client.transport();
    async move {
        if let Some(opener) = peer {
            return Ok(SessionChannels::Peer(super::peer::connect(opener?).await?));
        }
        Ok(match protected {
            Some(exchange) => SessionChannels::Protected(exchange.await?),
            None => SessionChannels::PlaintextForMeasurement(data),
        })
    }
}

impl SessionChannels {
    /// The code both users compare; `None` without protection.
    pub fn verification_code(&self) -> Option<&str> {
        match self {
            SessionChannels::Peer(s) => Some(s.verification_code()),
            SessionChannels::Protected(s) => Some(s.verification_code()),
            SessionChannels::PlaintextForMeasurement(_) => None,
        }
    }

    /// The suite in use; `None` without protection.
    pub fn suite(&self) -> Option<Suite> {
        match self {
            SessionChannels::Protected(s) => Some(s.suite()),
            SessionChannels::Peer(_) | SessionChannels::PlaintextForMeasurement(_) => None,
        }
    }

    /// Opens this side's channel.
    pub async fn open_channel(&self, channel: Channel) -> Result<Sender, ClientError> {
        Ok(match self {
            SessionChannels::Peer(s) => Sender::Plain(s.data().open_channel(channel).await?),
            SessionChannels::Protected(s) => Sender::Sealed(s.open_channel(channel).await?),
            SessionChannels::PlaintextForMeasurement(d) => {
                Sender::Plain(d.open_channel(channel).await?)
            }
        })
    }

    /// Waits for the peer's next channel.
    pub async fn accept_channel(&mut self) -> Result<(Channel, Receiver), ClientError> {
        Ok(match self {
            SessionChannels::Protected(s) => {
                let (channel, receiver) = s.accept_channel().await?;
                (channel, Receiver::Sealed(receiver))
            }
            SessionChannels::PlaintextForMeasurement(d) => {
                let (channel, receiver) = d.accept_channel().await?;
                (channel, Receiver::Plain(receiver))
            }
            SessionChannels::Peer(s) => {
                let (channel, receiver) = s.data().accept_channel().await?;
                (channel, Receiver::Plain(receiver))
            }
        })
    }

    /// Sends one lossy screen frame.
    pub fn send_datagram(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        match self {
            SessionChannels::Protected(s) => s.send_datagram(frame),
            SessionChannels::Peer(s) => s.data().send_datagram(Bytes::copy_from_slice(frame)),
            SessionChannels::PlaintextForMeasurement(d) => {
                d.send_datagram(Bytes::copy_from_slice(frame))
            }
        }
    }

    /// Receives one lossy screen frame.
    pub async fn read_datagram(&mut self) -> Result<Bytes, ClientError> {
        match self {
            SessionChannels::Protected(s) => Ok(Bytes::from(s.read_datagram().await?)),
            SessionChannels::PlaintextForMeasurement(d) => d.read_datagram().await,
            SessionChannels::Peer(s) => s.data().read_datagram().await,
        }
    }
}

/// A sending channel of [`SessionChannels`].
pub enum Sender {
    /// Sealed.
    Sealed(SealedSender),
    /// In the clear.
    Plain(ChannelSender),
}

impl Sender {
    /// Sends one frame (sealed first, when protected).
    pub async fn send(&mut self, frame: &[u8]) -> Result<(), ClientError> {
        match self {
            Sender::Sealed(s) => s.send(frame).await,
            Sender::Plain(p) => p.send(Bytes::copy_from_slice(frame)).await,
        }
    }

    /// Sends one frame already in a `Bytes` (no copy when not protected).
    pub async fn send_bytes(&mut self, frame: Bytes) -> Result<(), ClientError> {
        match self {
            Sender::Sealed(s) => s.send(&frame).await,
            Sender::Plain(p) => p.send(frame).await,
        }
    }

    /// Finishes the channel (with the sealed end marker, when protected).
    pub async fn finish(self) -> Result<(), ClientError> {
        match self {
            Sender::Sealed(s) => s.finish().await,
            Sender::Plain(p) => p.finish().await,
        }
    }
}

impl From<SealedSender> for Sender {
    fn from(s: SealedSender) -> Sender {
        Sender::Sealed(s)
    }
}

impl From<ChannelSender> for Sender {
    fn from(p: ChannelSender) -> Sender {
        Sender::Plain(p)
    }
}

/// A receiving channel of [`SessionChannels`].
pub enum Receiver {
    /// Sealed.
    Sealed(SealedReceiver),
    /// In the clear.
    Plain(ChannelReceiver),
}

impl Receiver {
    /// The next frame; `None` once the sender finished the channel.
    pub async fn recv(&mut self) -> Result<Option<Bytes>, ClientError> {
        match self {
            Receiver::Sealed(s) => Ok(s.recv().await?.map(Bytes::from)),
            Receiver::Plain(p) => Ok(p.recv().await?.map(|b| b.freeze())),
        }
    }
}

impl From<SealedReceiver> for Receiver {
    fn from(s: SealedReceiver) -> Receiver {
        Receiver::Sealed(s)
    }
}

impl From<ChannelReceiver> for Receiver {
    fn from(p: ChannelReceiver) -> Receiver {
        Receiver::Plain(p)
    }
}
