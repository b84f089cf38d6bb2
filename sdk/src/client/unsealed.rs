//! The unsealed data plane: data channels and datagrams framed as PROTOCOL.md §8 says,
//! with no end-to-end protection, and the move of each channel between the relayed and the
//! direct connection. [`secure`](super::secure) seals on top of it; applications reach it
//! only through that layer, or through [`Client::unsealed_data`](super::Client::unsealed_data)
//! when they opted out of protection for a measurement.

use super::*;

/// The data plane of a connection in the clear: channels and datagrams framed as the
/// protocol says, with no end-to-end protection (the relay sees every byte). For
/// measurements and for tests of the relay's forwarding; applications use
/// [`secure::channels`]. From a [`Client`] only through [`Client::unsealed_data`], which a
/// protecting client refuses. Cheap to clone.
///
/// With a direct path (`ClientOptions::direct_path`), each channel moves to the direct
/// connection once it is up, at the sender's next frame: the sender ends the relayed stream
/// with an empty frame (the move marker) and continues on a direct stream tagged as a
/// continuation; the receiver reads the relayed stream to the marker, then the
/// continuation, so nothing is lost or reordered. If the direct path is lost, senders
/// continue on new relayed streams the same way.
#[derive(Clone)]
pub struct UnsealedChannels {
    pub(super) connection: quinn::Connection,
    pub(super) direct: Option<direct::DirectLink>,
    /// Set while this protecting client's peer announced no protection: nothing is sent.
    pub(super) peer_unprotected: Option<Arc<std::sync::atomic::AtomicBool>>,
}

impl UnsealedChannels {
    /// The data plane over any QUIC connection speaking the data-stream format, in the
    /// clear: a direct peer-to-peer connection (the `loadtest --baseline direct` run, which
    /// seals on top with [`secure::SecureSession::with_keys`]) as well as the relay's (tests
    /// that play a meddling relay or peer).
    pub fn over(connection: quinn::Connection) -> UnsealedChannels {
        UnsealedChannels {
            connection,
            direct: None,
            peer_unprotected: None,
        }
    }

    /// Opens this side's stream for `channel` in an active session (on the direct path
    /// when it is up).
    pub async fn open_channel(&self, channel: Channel) -> Result<ChannelSender, ClientError> {
        self.refuse_unprotected_peer()?;
        // A channel the session does not allow goes to the relay, which refuses it as usual.
        let usable = self
            .direct
            .as_ref()
            .filter(|d| d.view().is_some_and(|v| v.may_send(channel)))
            .and_then(|d| d.usable());
        // On the packet path the session's only connection is the peer connection: every
        // stream is "direct", so none ever moves (no empty move marker, PROTOCOL.md §8a).
        let on_direct = usable.is_some() || self.is_peer_connection();
        let target = usable.unwrap_or_else(|| self.connection.clone());
        let stream = open_tagged(&target, channel, channel_tag(channel.to_wire())).await?;
        Ok(ChannelSender {
            channel,
            frames: FramedWrite::new(stream, DataCodec::new(MAX_DATA_FRAME)),
            relay: self.connection.clone(),
            direct: self.direct.clone(),
            on_direct,
        })
    }

    /// Whether this data plane is the packet path's peer connection (its "relay"
    /// connection is its direct one).
    fn is_peer_connection(&self) -> bool {
        self.direct
            .as_ref()
            .and_then(|d| d.usable())
            .is_some_and(|d| d.stable_id() == self.connection.stable_id())
    }

    /// A protecting client never sends to a peer that announced no protection (PROTOCOL.md
    /// §8.7.1), not even through the transport under the sealed layer: a sealed session
    /// kept from this client's earlier session stops here when the next peer announced none.
    fn refuse_unprotected_peer(&self) -> Result<(), ClientError> {
        match &self.peer_unprotected {
            Some(flag) if flag.load(std::sync::atomic::Ordering::SeqCst) => {
                Err(crate::e2e::E2eError::PeerUnprotected.into())
            }
            _ => Ok(()),
        }
    }

    /// Waits for the peer to open a channel towards this side.
    pub async fn accept_channel(&self) -> Result<(Channel, ChannelReceiver), ClientError> {
        if let Some(link) = &self.direct {
            let (channel, incoming) = link.inbox.next_fresh().await?;
            return Ok((
                channel,
                ChannelReceiver {
                    channel,
                    frames: FramedRead::new(incoming.stream, DataCodec::new(MAX_DATA_FRAME)),
                    direct: Some(link.clone()),
                    on_direct: incoming.direct,
                    held: None,
                    awaiting_continuation: false,
                },
            ));
        }
        let mut stream = self
            .connection
            .accept_uni()
            .await
            .map_err(ClientError::from_connection)?;
        let mut tag = [0u8; 1];
        stream
            .read_exact(&mut tag)
            .await
            .map_err(|e| ClientError::Unexpected(format!("data stream without a tag: {e}")))?;
        let channel = Channel::from_wire(channel_from_tag(tag[0])?)
            .ok_or(ClientError::Frame(FrameError::UnknownChannel(tag[0])))?;
        Ok((
            channel,
            ChannelReceiver {
                channel,
                frames: FramedRead::new(stream, DataCodec::new(MAX_DATA_FRAME)),
                direct: None,
                on_direct: false,
                held: None,
                awaiting_continuation: false,
            },
        ))
    }

    /// Sharer: sends one lossy screen datagram (dropped if it does not fit), on the direct
    /// path when it is up.
    pub fn send_datagram(&self, datagram: Bytes) -> Result<(), ClientError> {
        self.refuse_unprotected_peer()?;
        let connection = self
            .direct
            .as_ref()
            .and_then(|d| d.usable())
            .unwrap_or_else(|| self.connection.clone());
        connection
            .send_datagram(datagram)
            .map_err(|e| ClientError::Unexpected(format!("datagram not sent: {e}")))
    }

    /// Helper: receives one lossy screen datagram, from whichever path it came on.
    pub async fn read_datagram(&self) -> Result<Bytes, ClientError> {
        // Screen datagrams come from the sharer only: a direct one is read only when the
        // peer may send screen (no relay checks the direct path).
        let direct = self
            .direct
            .as_ref()
            .filter(|d| d.view().is_some_and(|v| v.peer_may_send(Channel::Screen)))
            .and_then(|d| d.usable());
        let Some(direct) = direct else {
            if self.is_peer_connection() {
                // The packet path: no relay checks the peer's datagrams; those the session
                // does not allow are dropped here.
                loop {
                    let datagram = self
                        .connection
                        .read_datagram()
                        .await
                        .map_err(ClientError::from_connection)?;
                    let allowed = self
                        .direct
                        .as_ref()
                        .and_then(|d| d.view())
                        .is_some_and(|v| v.peer_may_send(Channel::Screen));
                    if allowed {
                        return Ok(datagram);
                    }
                    tracing::debug!("a screen datagram the session does not allow dropped");
                }
            }
            return self
                .connection
                .read_datagram()
                .await
                .map_err(ClientError::from_connection);
        };
        tokio::select! {
            relayed = self.connection.read_datagram() => relayed.map_err(ClientError::from_connection),
            // A lost direct path is not an error: datagrams come through the relay again
            // (select stops polling a branch whose pattern does not match).
            Ok(datagram) = direct.read_datagram() => Ok(datagram),
        }
    }
}

/// Opens a data stream on `connection` and writes its tag.
async fn open_tagged(
    connection: &quinn::Connection,
    channel: Channel,
    tag: u8,
) -> Result<quinn::SendStream, ClientError> {
    let mut stream = connection
        .open_uni()
        .await
        .map_err(ClientError::from_connection)?;
    let _ = stream.set_priority(channel.send_priority());
    stream
        .write_all(&[tag])
        .await
        .map_err(|e| ClientError::Frame(FrameError::Io(e.into())))?;
    Ok(stream)
}

/// This side's sending half of one data channel: length-prefixed frames, in order, as
/// given (unsealed; [`secure::SealedSender`] seals on top of it).
pub struct ChannelSender {
    channel: Channel,
    frames: FramedWrite<quinn::SendStream, DataCodec>,
    relay: quinn::Connection,
    direct: Option<direct::DirectLink>,
    /// The current stream is on the direct connection.
    on_direct: bool,
}

impl ChannelSender {
    /// The channel.
    pub fn channel(&self) -> Channel {
        self.channel
    }

    /// Sends one frame; waits while flow control says the receiver is behind. With direct
    /// paths on, frames must not be empty (an empty frame is the move marker).
    pub async fn send(&mut self, frame: Bytes) -> Result<(), ClientError> {
        if let Some(link) = &self.direct
            && link.offered()
        {
            if frame.is_empty() {
                return Err(ClientError::Unexpected(
                    "empty data frames are reserved (the path move marker) in a session with a direct path"
                        .into(),
                ));
            }
            self.follow_path().await?;
        }
        self.frames.send(frame).await.map_err(ClientError::from)
    }

    /// Puts this channel on the path it should use now: the direct connection while it is
    /// up (and the session allows this side to send on the channel: on a direct path no
    /// relay checks it), else the relay.
    async fn follow_path(&mut self) -> Result<(), ClientError> {
        let Some(link) = &self.direct else {
            return Ok(());
        };
        let Some(view) = link.view() else {
            return Err(ClientError::Unexpected("the session has ended".into()));
        };
        if !view.may_send(self.channel) {
            return Err(ClientError::Refused {
                code: ErrorCode::PermissionDenied,
                message: format!(
                    "the session's {} mode does not allow this side to send on the {} channel",
                    view.mode.as_str(),
                    self.channel.as_str()
                ),
            });
        }
        match (self.on_direct, link.usable()) {
            (false, Some(direct)) => self.move_to(Some(direct)).await,
            (true, None) => self.move_to(None).await,
            _ => Ok(()),
        }
    }

    /// Moves this channel to the direct connection (`Some`) or back to the relay (`None`):
    /// the move marker and the end of the current stream, then a continuation stream on
    /// the new path. The receiver reads the old stream to its end before the new one.
    async fn move_to(&mut self, direct: Option<quinn::Connection>) -> Result<(), ClientError> {
        // On a lost direct path these fail; the receiver then resumes at the continuation.
        let _ = self.frames.send(Bytes::from_static(MOVED_MARKER)).await;
        let _ = self.frames.get_mut().finish();
        let tag = channel_tag(self.channel.to_wire()) | CONTINUATION;
        let (stream, on_direct) = match direct {
            Some(direct) => match open_tagged(&direct, self.channel, tag).await {
                Ok(stream) => (stream, true),
                Err(_) => (open_tagged(&self.relay, self.channel, tag).await?, false),
            },
            None => (open_tagged(&self.relay, self.channel, tag).await?, false),
        };
        tracing::debug!(channel = self.channel.as_str(), on_direct, "channel moved");
        self.frames = FramedWrite::new(stream, DataCodec::new(MAX_DATA_FRAME));
        self.on_direct = on_direct;
        Ok(())
    }

    /// Finishes the channel cleanly (on the relay, if the direct path it was on is gone).
    pub async fn finish(mut self) -> Result<(), ClientError> {
        // Back to the relay only if the relay would take the channel (the mode may have
        // dropped meanwhile): else the dead stream is finished as it is.
        if self.on_direct
            && self.direct.as_ref().is_some_and(|l| {
                l.usable().is_none() && l.view().is_some_and(|v| v.may_send(self.channel))
            })
        {
            self.move_to(None).await?;
        }
        SinkExt::<Bytes>::flush(&mut self.frames).await?;
        self.frames
            .get_mut()
            .finish()
            .map_err(|e| ClientError::Unexpected(e.to_string()))
    }
}

/// This side's receiving half of one data channel: frames as they came (unsealed;
/// [`secure::SealedReceiver`] opens on top of it).
pub struct ChannelReceiver {
    channel: Channel,
    frames: FramedRead<quinn::RecvStream, DataCodec>,
    direct: Option<direct::DirectLink>,
    /// The current stream came on the direct connection.
    on_direct: bool,
    /// A direct frame read but not yet delivered (waiting for the mode check).
    held: Option<BytesMut>,
    /// The current stream ended with the move marker (or died with the direct path): the
    /// next frames come on the channel's continuation.
    awaiting_continuation: bool,
}

impl ChannelReceiver {
    /// The channel.
    pub fn channel(&self) -> Channel {
        self.channel
    }

    /// The next frame, or `None` when the sender finished the channel. Moves between the
    /// relay and the direct path are followed here, in order.
    pub async fn recv(&mut self) -> Result<Option<BytesMut>, ClientError> {
        // Cancel-safe: a frame held for the mode check, and a move in progress, live in
        // `self`, so a dropped call (a `select!` with a timer) loses nothing.
        loop {
            let Some(link) = self.direct.clone().filter(|l| l.offered()) else {
                return self
                    .frames
                    .next()
                    .await
                    .transpose()
                    .map_err(ClientError::from);
            };
            if self.awaiting_continuation {
                let incoming = link.inbox.continuation(self.channel).await?;
                tracing::debug!(
                    channel = self.channel.as_str(),
                    on_direct = incoming.direct,
                    "channel moved"
                );
                self.awaiting_continuation = false;
                self.on_direct = incoming.direct;
                self.frames = FramedRead::new(incoming.stream, DataCodec::new(MAX_DATA_FRAME));
                continue;
            }
            if self.held.is_none() {
                match self.frames.next().await {
                    // The sender moved the channel: its continuation follows on the other path.
                    Some(Ok(frame)) if frame.is_empty() => {
                        self.awaiting_continuation = true;
                        continue;
                    }
                    Some(Ok(frame)) if self.on_direct => self.held = Some(frame),
                    Some(Ok(frame)) => return Ok(Some(frame)),
                    // The direct path died under this stream: the sender resumes on the relay.
                    Some(Err(_)) if self.on_direct => {
                        self.awaiting_continuation = true;
                        continue;
                    }
                    other => return other.transpose().map_err(ClientError::from),
                }
            }
            // A frame from the direct path: no relay checked it, so check it here.
            if !link.peer_may_send_soon(self.channel).await {
                // The mode does not allow it (or the session ended): refused, as the relay
                // would, and never delivered.
                self.held = None;
                let _ = self
                    .frames
                    .get_mut()
                    .stop(ErrorCode::PermissionDenied.to_quic().into());
                return Err(ClientError::Refused {
                    code: ErrorCode::PermissionDenied,
                    message: format!(
                        "the session no longer allows the peer to send on the {} channel",
                        self.channel.as_str()
                    ),
                });
            }
            if let Some(frame) = self.held.take() {
                return Ok(Some(frame));
            }
        }
    }
}
