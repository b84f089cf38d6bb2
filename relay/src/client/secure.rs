//! End-to-end protected sessions for the SDK: the key exchange over the `KEYS` channel,
//! then sealed channels and datagrams (see [`crate::e2e`] for the construction).
//!
//! ```no_run
//! # async fn demo(helper: &remote_help_relay::client::Client, start: &remote_help_relay::client::SessionStart)
//! #     -> Result<(), remote_help_relay::client::ClientError> {
//! use remote_help_relay::client::secure;
//! use remote_help_relay::core::{Channel, Role};
//! let mut session = secure::establish(helper, start, Role::Helper).await?;
//! println!("verification code: {}", session.verification_code()); // compare with the sharer
//! let mut input = session.open_channel(Channel::Input).await?;
//! input.send(b"click 10 20").await?;
//! # Ok(()) }
//! ```

use std::collections::VecDeque;

use bytes::Bytes;

use super::{ChannelReceiver, ChannelSender, Client, ClientError, DataChannels, SessionStart};
use crate::core::{Channel, Role};
use crate::e2e::{
    DatagramOpener, E2eError, KeyExchange, PUBLIC_KEY_LEN, Party, Sealer, SessionKeys,
    StreamOpener, Transcript, datagram_sealer, stream_domain,
};

/// An active session whose channels are sealed end to end.
pub struct SecureSession {
    keys: SessionKeys,
    data: DataChannels,
    /// Channels the peer opened before its key arrived.
    pending: VecDeque<(Channel, ChannelReceiver)>,
    datagrams_out: Sealer,
    datagrams_in: DatagramOpener,
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
pub async fn establish(
    client: &Client,
    start: &SessionStart,
    role: Role,
) -> Result<SecureSession, ClientError> {
    let me = client
        .me()
        .ok_or_else(|| ClientError::Unexpected("no own profile (not authenticated)".into()))?;
    let peer = client
        .peer()
        .ok_or_else(|| ClientError::Unexpected("the peer's profile is unknown".into()))?;
    let party = |p: &remote_help_proto::v1::Profile| Party {
        tenant: p.tenant_id.clone(),
        subject: p.subject.clone(),
    };
    let exchange = KeyExchange::start()?;
    let data = client.data();
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
        Role::Helper => (party(me), party(peer), exchange.public_key(), peer_key),
        Role::Sharer => (party(peer), party(me), peer_key, exchange.public_key()),
    };
    let transcript = Transcript {
        session_id: start.session_id.clone(),
        helper,
        sharer,
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
    })
}

impl SecureSession {
    /// The code both users compare (`123 456`); different codes mean the keys were
    /// substituted on the way, and the session must be ended.
    pub fn verification_code(&self) -> &str {
        &self.keys.verification_code
    }

    /// This side's session keys (to seal frames by hand, e.g. in tools and tests).
    pub fn keys(&self) -> &SessionKeys {
        &self.keys
    }

    /// Opens this side's sealed channel.
    pub async fn open_channel(&self, channel: Channel) -> Result<SealedSender, ClientError> {
        Ok(SealedSender {
            inner: self.data.open_channel(channel).await?,
            sealer: self.keys.sealer(stream_domain(channel)),
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
                opener: self.keys.stream_opener(stream_domain(channel)),
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
    opener: StreamOpener,
}

impl SealedReceiver {
    /// The next frame's plaintext; `None` once the sender finished with the sealed end
    /// marker. A forged, replayed, reordered or truncated stream is an error.
    pub async fn recv(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        match self.inner.recv().await? {
            Some(frame) => Ok(self.opener.open(&frame)?),
            None => {
                self.opener.finish()?;
                Ok(None)
            }
        }
    }
}
