//! The forwarding hot path: data streams and datagrams from one party to the other.
//!
//! A data stream is copied chunk by chunk: `read_chunk` hands over a `Bytes` that
//! `write_chunk` queues on the peer's stream without copying. Each write waits for the
//! peer's flow-control credit, so a slow reader stops this loop, which stops reading,
//! which lets the sender's stream window run dry: backpressure end to end, with the
//! relay holding at most its configured windows. No locks, no per-chunk logging, no
//! policy checks here: those happened once, when the stream was admitted.

use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use remote_help_proto::ErrorCode;
use tracing::debug;

use super::party::{Party, PartyRecv, PartySend, StreamError};
use crate::core::Channel;

/// Largest chunk taken from a stream at once.
const CHUNK: usize = 64 * 1024;

/// Bytes forwarded for one side of a session (read for audit events and the admin view),
/// counted where `relay_forwarded_bytes_total` is, so the audit log and the metrics agree.
#[derive(Debug, Default)]
pub struct ChannelCounters {
    /// Stream bytes forwarded, by `Channel::index`.
    pub bytes: [AtomicU64; 4],
    /// Screen datagram bytes forwarded (sent on to the peer; dropped ones are not counted).
    pub datagram_bytes: AtomicU64,
    /// Packet-path bytes forwarded (whole forwarded datagrams, header included; sent on to
    /// the peer, dropped ones are not counted): see `forwarder`.
    pub forwarded_bytes: AtomicU64,
}

impl ChannelCounters {
    /// Every byte forwarded from this side: streams, datagrams and the packet path.
    pub fn total(&self) -> u64 {
        self.bytes
            .iter()
            .chain([&self.datagram_bytes, &self.forwarded_bytes])
            .map(|b| b.load(Ordering::Relaxed))
            .sum()
    }
}

/// Forwards one data stream to a new stream on `peer`, tagged `tag`, until either end
/// finishes or fails.
pub async fn stream(
    mut from: PartyRecv,
    tag: u8,
    channel: Channel,
    peer: Party,
    counters: std::sync::Arc<ChannelCounters>,
) {
    let to = match peer.open_uni().await {
        Ok(to) => to,
        Err(e) => {
            debug!(error = %e, "peer gone before its data stream opened");
            from.stop(ErrorCode::PeerLost.to_quic());
            return;
        }
    };
    // If this task is aborted (the session ended, input was revoked) or fails, the peer's
    // stream is reset rather than finished, so a cut stream never looks complete.
    let mut out = ResetOnDrop(Some(to));
    let Some(to) = out.0.as_mut() else { return };
    to.set_priority(channel.send_priority());
    if to.write_all(&[tag]).await.is_err() {
        from.stop(ErrorCode::PeerLost.to_quic());
        return;
    }
    // Handles resolved once per stream, so the loop does no label lookups.
    let bytes_metric =
        metrics::counter!("relay_forwarded_bytes_total", "channel" => channel.as_str());
    let chunks_metric =
        metrics::counter!("relay_forwarded_chunks_total", "channel" => channel.as_str());
    let stalls_metric =
        metrics::counter!("relay_backpressure_stalls_total", "channel" => channel.as_str());
    loop {
        match from.read_chunk(CHUNK, true).await {
            Ok(Some(chunk)) => {
                let len = chunk.bytes.len() as u64;
                #[cfg(feature = "tap")]
                crate::tap::record(&chunk.bytes);
                #[cfg(feature = "tap")]
                let chunk = if channel == Channel::Keys {
                    quinn::Chunk {
                        offset: chunk.offset,
                        bytes: crate::tap::keys_chunk(chunk.bytes),
                    }
                } else {
                    chunk
                };
                let write = to.write_chunk(chunk.bytes);
                tokio::pin!(write);
                // Poll once: if the peer's flow control has no room, this is a stall
                // (the slow reader is pushing back); count it, then wait as usual.
                let written = tokio::select! {
                    biased;
                    result = &mut write => result,
                    () = std::future::ready(()) => {
                        stalls_metric.increment(1);
                        write.await
                    }
                };
                if let Err(e) = written {
                    debug!(error = %e, channel = channel.as_str(), "peer stopped the stream");
                    let code = match e {
                        StreamError::Code(code) => code,
                        StreamError::Other(_) => ErrorCode::PeerLost.to_quic(),
                    };
                    from.stop(code);
                    return;
                }
                counters.bytes[channel.index()].fetch_add(len, Ordering::Relaxed);
                bytes_metric.increment(len);
                chunks_metric.increment(1);
            }
            Ok(None) => {
                if let Some(mut finished) = out.0.take() {
                    finished.finish();
                }
                return;
            }
            Err(e) => {
                debug!(error = %e, channel = channel.as_str(), "sender's stream failed");
                let code = match e {
                    StreamError::Code(code) => code,
                    StreamError::Other(_) => ErrorCode::PeerLost.to_quic(),
                };
                if let Some(mut reset) = out.0.take() {
                    reset.reset(code);
                }
                return;
            }
        }
    }
}

/// Owns the stream towards the peer; resets it unless it was finished deliberately.
struct ResetOnDrop(Option<PartySend>);

impl Drop for ResetOnDrop {
    fn drop(&mut self) {
        if let Some(mut stream) = self.0.take() {
            stream.reset(ErrorCode::PeerEnded.to_quic());
        }
    }
}

/// Forwards one lossy screen datagram, or drops it if the peer's send buffer is full
/// (screen frames are replaced by newer ones; queueing old ones only adds latency).
pub fn datagram(peer: &Party, datagram: Bytes, counters: &ChannelCounters) {
    // 0 when the peer takes no datagrams; a WebTransport peer's limit already leaves room
    // for its session-id header.
    let max = peer.max_datagram_size();
    let fits = max > 0 && datagram.len() <= max;
    if !fits || datagram.len() > peer.datagram_send_buffer_space() {
        metrics::counter!("relay_datagrams_dropped_total", "reason" => "peer_full").increment(1);
        return;
    }
    let len = datagram.len() as u64;
    #[cfg(feature = "tap")]
    crate::tap::record(&datagram);
    match peer.send_datagram(datagram) {
        Ok(()) => {
            counters.datagram_bytes.fetch_add(len, Ordering::Relaxed);
            metrics::counter!("relay_forwarded_bytes_total", "channel" => "screen_datagram")
                .increment(len);
        }
        Err(_) => {
            metrics::counter!("relay_datagrams_dropped_total", "reason" => "send_failed")
                .increment(1);
        }
    }
}
