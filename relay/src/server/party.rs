//! The transport of an authenticated party: streams and datagrams, whether the client came
//! as native QUIC (ALPN `remote-help/1`) or as a WebTransport session (ALPN `h3`, extended
//! CONNECT to [`WEBTRANSPORT_PATH`]). The connection task and the forwarding hot path work
//! against [`Party`] only, so both kinds of client share one code path: the same checks,
//! limits, metrics and audit events (PROTOCOL.md "WebTransport access").
//!
//! `Party` is an enum: a native connection is quinn's own `Connection` and streams, so the
//! hot path and the memory of a native client are exactly what they were; a WebTransport
//! session is `web_transport_quinn`'s, which adds the session-id headers and maps stream
//! error codes into the HTTP/3 range the WebTransport spec reserves for them. Dispatch is
//! one `match` per call, no allocation per chunk.

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use remote_help_proto::ALPN;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::transport::{BIDI_STREAMS, UNI_STREAMS};

/// How long a closed WebTransport session is kept for its close capsule to reach the client
/// (see [`Party::close`]).
const WEB_CLOSE_LINGER: Duration = Duration::from_secs(2);

/// A party's connection: native QUIC or a WebTransport session (see the module docs).
/// A clone is a handle to the same connection.
#[derive(Clone, Debug)]
pub enum Party {
    /// Native QUIC, ALPN `remote-help/1`.
    Native(quinn::Connection),
    /// A WebTransport session over HTTP/3 (boxed in an `Arc`: a `Session` is several
    /// hundred bytes and the hub, this task and the peer's task each hold a handle).
    Web(Arc<web_transport_quinn::Session>),
}

/// Why a connection-level operation failed (the connection or session is gone, or a
/// WebTransport datagram named no session of ours).
#[derive(Debug, thiserror::Error)]
pub enum PartyError {
    /// The native connection's error.
    #[error(transparent)]
    Native(#[from] quinn::ConnectionError),
    /// The WebTransport session's error.
    #[error(transparent)]
    Web(#[from] web_transport_quinn::SessionError),
    /// A datagram could not be sent.
    #[error(transparent)]
    Datagram(#[from] quinn::SendDatagramError),
}

impl PartyError {
    /// A WebTransport datagram too short to name a session, or naming another one: the
    /// datagram is unusable, the session is fine.
    pub fn is_unknown_session(&self) -> bool {
        matches!(
            self,
            PartyError::Web(web_transport_quinn::SessionError::WebTransportError(
                web_transport_quinn::WebTransportError::UnknownSession
            ))
        )
    }
}

/// Why a stream operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    /// The peer stopped (STOP_SENDING) or reset (RESET_STREAM) the stream with this
    /// application code (for WebTransport, already mapped back from HTTP/3's range).
    #[error("stream stopped or reset with code {0}")]
    Code(u32),
    /// The stream ended early, or the connection is gone.
    #[error("{0}")]
    Other(String),
}

fn native_code(code: quinn::VarInt) -> StreamError {
    match u32::try_from(code.into_inner()) {
        Ok(code) => StreamError::Code(code),
        Err(_) => StreamError::Other(format!("stream code {code} out of range")),
    }
}

impl Party {
    /// Accepts the party's next bidirectional stream.
    pub async fn accept_bi(&self) -> Result<(PartySend, PartyRecv), PartyError> {
        match self {
            Party::Native(c) => {
                let (send, recv) = c.accept_bi().await?;
                Ok((PartySend::Native(send), PartyRecv::Native(recv)))
            }
            Party::Web(s) => {
                let (send, recv) = s.accept_bi().await?;
                Ok((PartySend::Web(send), PartyRecv::Web(recv, None)))
            }
        }
    }

    /// Accepts the party's next unidirectional stream.
    pub async fn accept_uni(&self) -> Result<PartyRecv, PartyError> {
        match self {
            Party::Native(c) => Ok(PartyRecv::Native(c.accept_uni().await?)),
            Party::Web(s) => Ok(PartyRecv::Web(s.accept_uni().await?, None)),
        }
    }

    /// Opens a unidirectional stream towards the party.
    pub async fn open_uni(&self) -> Result<PartySend, PartyError> {
        match self {
            Party::Native(c) => Ok(PartySend::Native(c.open_uni().await?)),
            Party::Web(s) => Ok(PartySend::Web(s.open_uni().await?)),
        }
    }

    /// The party's next datagram (for WebTransport, without the session header).
    pub async fn read_datagram(&self) -> Result<Bytes, PartyError> {
        match self {
            Party::Native(c) => Ok(c.read_datagram().await?),
            Party::Web(s) => Ok(s.read_datagram().await?),
        }
    }

    /// Queues a datagram towards the party.
    pub fn send_datagram(&self, datagram: Bytes) -> Result<(), PartyError> {
        match self {
            Party::Native(c) => Ok(c.send_datagram(datagram)?),
            Party::Web(s) => Ok(s.send_datagram(datagram)?),
        }
    }

    /// The largest datagram payload the party takes now; 0 when it takes none.
    pub fn max_datagram_size(&self) -> usize {
        match self {
            Party::Native(c) => c.max_datagram_size().unwrap_or(0),
            Party::Web(s) => s.max_datagram_size(),
        }
    }

    /// Free space in the outgoing datagram buffer, in payload bytes.
    pub fn datagram_send_buffer_space(&self) -> usize {
        match self {
            Party::Native(c) => c.datagram_send_buffer_space(),
            Party::Web(s) => s.datagram_send_buffer_space(),
        }
    }

    /// Closes with one of our codes and a reason, and returns once the connection is
    /// closed: a QUIC application close for a native party, at once. For WebTransport a
    /// `CLOSE_WEBTRANSPORT_SESSION` capsule with the code and reason, then a wait of at most
    /// `WEB_CLOSE_LINGER` (2 s) for the client to close the connection, then the connection's
    /// own close (the code mapped into HTTP/3's range).
    ///
    /// The wait keeps this handle, and with it the client's HTTP/3 control streams: dropping
    /// the last handle stops the browser's HTTP/3 control stream, which Chromium takes as a
    /// connection error (H3_CLOSED_CRITICAL_STREAM) before it reads the capsule, so a
    /// browser would see "connection lost" instead of the code. The wait is ours and
    /// bounded, not the library's (three round trips, which a client can stretch by
    /// delaying its ACKs), and the caller holds the connection's limit slot until this
    /// returns: a closing connection still counts against the connection limits.
    pub async fn close(&self, code: u32, reason: &[u8]) {
        match self {
            Party::Native(c) => c.close(code.into(), reason),
            Party::Web(s) => {
                s.close(code, reason);
                if tokio::time::timeout(WEB_CLOSE_LINGER, s.closed())
                    .await
                    .is_err()
                {
                    metrics::counter!("relay_webtransport_failures_total", "reason" => "close_timeout")
                        .increment(1);
                    tracing::info!(
                        code,
                        "WebTransport client did not close its session in time; connection closed"
                    );
                    self.quic().close(web_code(code), reason);
                }
            }
        }
    }

    /// A guard that closes this party's connection when dropped (see [`CloseOnDrop`]).
    pub fn close_on_drop(&self) -> CloseOnDrop {
        CloseOnDrop(self.clone())
    }

    /// The QUIC connection underneath (address, RTT).
    fn quic(&self) -> &quinn::Connection {
        match self {
            Party::Native(c) => c,
            // The session derefs to its connection.
            Party::Web(s) => s,
        }
    }

    /// The party's current address.
    pub fn remote_address(&self) -> SocketAddr {
        self.quic().remote_address()
    }

    /// The connection's current RTT estimate.
    pub fn rtt(&self) -> Duration {
        self.quic().rtt()
    }
}

/// Closes its party's connection when dropped, with code 0 (for WebTransport mapped into
/// HTTP/3's range), unless it was closed already: however a connection's task ends —
/// returned, failed or aborted — the connection ends with it. A native connection would
/// close anyway once its last handle is gone; a WebTransport session would not:
/// `web_transport_quinn` keeps the connection in a task of its own for as long as the
/// client keeps its CONNECT stream open, and the relay's keep-alive keeps it from idling
/// out, so without this a client could hold connections the relay no longer counts.
#[derive(Debug)]
pub struct CloseOnDrop(Party);

impl Drop for CloseOnDrop {
    fn drop(&mut self) {
        let quic = self.0.quic();
        if quic.close_reason().is_none() {
            let code = match &self.0 {
                Party::Native(_) => 0u32.into(),
                Party::Web(_) => web_code(0),
            };
            quic.close(code, b"");
        }
    }
}

/// One of our codes as WebTransport carries it in a QUIC close: in HTTP/3's range.
fn web_code(code: u32) -> quinn::VarInt {
    // Below 2^62 for every u32 (the mapping spreads 2^32 codes over less than 2^33
    // values from 0x52e4a40fa8db), so the fallback is never taken.
    quinn::VarInt::from_u64(web_transport_quinn::proto::error_to_http3(code))
        .unwrap_or(quinn::VarInt::from_u32(H3_NO_ERROR))
}

/// A stream from a party.
#[derive(Debug)]
pub enum PartyRecv {
    /// Native QUIC.
    Native(quinn::RecvStream),
    /// WebTransport; with its place in [`DataStreams`] once admitted there.
    Web(web_transport_quinn::RecvStream, Option<DataStreamSlot>),
}

/// The data streams a party has in the relay's hands at once (being read for their tag
/// byte, or forwarded), held to the native limit of [`UNI_STREAMS`] for every transport.
///
/// A native client cannot open more: QUIC's stream credit stops it. A WebTransport client
/// is granted `H3_UNI_STREAMS` more credit, for the HTTP/3 streams a browser opens
/// (control, QPACK encoder and decoder), but the relay cannot see which of them a client
/// really opened (`web_transport_quinn` takes them in), and one that skips the QPACK
/// streams, as `web_transport_quinn`'s own client does, would have 2 more data streams
/// than a native client. Those are refused here: STOP_SENDING `LIMIT_EXCEEDED`.
#[derive(Debug, Default)]
pub struct DataStreams(Arc<AtomicUsize>);

/// A data stream's place in its party's [`DataStreams`], given back when the stream is
/// dropped.
#[derive(Debug)]
pub struct DataStreamSlot(Arc<AtomicUsize>);

impl Drop for DataStreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

impl DataStreams {
    /// Takes a newly accepted data stream into the count; false (the stream is to be
    /// refused) if the party already has [`UNI_STREAMS`] in the relay's hands. Native
    /// streams are not counted: QUIC holds them to the same limit.
    pub fn admit(&self, stream: &mut PartyRecv) -> bool {
        let PartyRecv::Web(_, slot) = stream else {
            return true;
        };
        // Only the connection's own task admits, so load-then-add cannot race past the limit.
        if self.0.load(Ordering::Relaxed) >= UNI_STREAMS as usize {
            return false;
        }
        self.0.fetch_add(1, Ordering::Relaxed);
        *slot = Some(DataStreamSlot(self.0.clone()));
        true
    }
}

impl PartyRecv {
    /// The next chunk of at most `max` bytes; `None` at the end of the stream.
    pub async fn read_chunk(
        &mut self,
        max: usize,
        ordered: bool,
    ) -> Result<Option<quinn::Chunk>, StreamError> {
        match self {
            PartyRecv::Native(r) => r.read_chunk(max, ordered).await.map_err(|e| match e {
                quinn::ReadError::Reset(code) => native_code(code),
                e => StreamError::Other(e.to_string()),
            }),
            PartyRecv::Web(r, _) => r.read_chunk(max, ordered).await.map_err(|e| match e {
                web_transport_quinn::ReadError::Reset(code) => StreamError::Code(code),
                e => StreamError::Other(e.to_string()),
            }),
        }
    }

    /// Fills `buf` exactly.
    pub async fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), StreamError> {
        match self {
            PartyRecv::Native(r) => r
                .read_exact(buf)
                .await
                .map_err(|e| StreamError::Other(e.to_string())),
            PartyRecv::Web(r, _) => r
                .read_exact(buf)
                .await
                .map_err(|e| StreamError::Other(e.to_string())),
        }
    }

    /// Asks the party to stop sending, with one of our codes (STOP_SENDING).
    pub fn stop(&mut self, code: u32) {
        // Err only when the stream is already gone: nothing left to stop.
        let _ = match self {
            PartyRecv::Native(r) => r.stop(code.into()),
            PartyRecv::Web(r, _) => r.stop(code),
        };
    }
}

/// A stream dropped unread is stopped with code 0 (PROTOCOL.md §8.5: an aborted forwarder,
/// a session that ended, a stream refused by returning early). quinn does that on drop,
/// but with the raw code, and `web_transport_quinn` adds no drop of its own: a raw 0 lies
/// outside WebTransport's range in HTTP/3, so the sender's library would report no code.
/// A WebTransport stream is stopped here through the mapping first; quinn's own drop then
/// has nothing left to stop. (On a stream already read to its end, or stopped, this does
/// nothing.)
impl Drop for PartyRecv {
    fn drop(&mut self) {
        if let PartyRecv::Web(r, _) = self {
            let _ = r.stop(0);
        }
    }
}

impl AsyncRead for PartyRecv {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PartyRecv::Native(r) => AsyncRead::poll_read(Pin::new(r), cx, buf),
            PartyRecv::Web(r, _) => AsyncRead::poll_read(Pin::new(r), cx, buf),
        }
    }
}

/// A stream towards a party.
#[derive(Debug)]
pub enum PartySend {
    /// Native QUIC.
    Native(quinn::SendStream),
    /// WebTransport.
    Web(web_transport_quinn::SendStream),
}

impl PartySend {
    /// Writes all of `buf`, waiting for flow-control credit.
    pub async fn write_all(&mut self, buf: &[u8]) -> Result<(), StreamError> {
        match self {
            PartySend::Native(w) => w.write_all(buf).await.map_err(native_write_error),
            PartySend::Web(w) => w.write_all(buf).await.map_err(web_write_error),
        }
    }

    /// Queues `chunk` without copying, waiting for flow-control credit.
    pub async fn write_chunk(&mut self, chunk: Bytes) -> Result<(), StreamError> {
        match self {
            PartySend::Native(w) => w.write_chunk(chunk).await.map_err(native_write_error),
            PartySend::Web(w) => w.write_chunk(chunk).await.map_err(web_write_error),
        }
    }

    /// Finishes the stream (FIN); false if it was already finished or reset.
    pub fn finish(&mut self) -> bool {
        match self {
            PartySend::Native(w) => w.finish().is_ok(),
            PartySend::Web(w) => w.finish().is_ok(),
        }
    }

    /// Resets the stream with one of our codes (RESET_STREAM).
    pub fn reset(&mut self, code: u32) {
        // Err only when the stream is already gone: nothing left to reset.
        let _ = match self {
            PartySend::Native(w) => w.reset(code.into()).map_err(|_| ()),
            PartySend::Web(w) => w.reset(code).map_err(|_| ()),
        };
    }

    /// Sets the stream's send priority (higher goes first).
    pub fn set_priority(&self, priority: i32) {
        // Err only when the stream is already gone.
        let _ = match self {
            PartySend::Native(w) => w.set_priority(priority).map_err(|_| ()),
            PartySend::Web(w) => w.set_priority(priority).map_err(|_| ()),
        };
    }

    /// Waits until the party acknowledged everything (after `finish`) or stopped the stream.
    pub async fn stopped(&self) {
        match self {
            PartySend::Native(w) => {
                let _ = w.stopped().await;
            }
            PartySend::Web(w) => {
                let _ = w.stopped().await;
            }
        }
    }
}

fn native_write_error(e: quinn::WriteError) -> StreamError {
    match e {
        quinn::WriteError::Stopped(code) => native_code(code),
        e => StreamError::Other(e.to_string()),
    }
}

fn web_write_error(e: web_transport_quinn::WriteError) -> StreamError {
    match e {
        web_transport_quinn::WriteError::Stopped(code) => StreamError::Code(code),
        e => StreamError::Other(e.to_string()),
    }
}

impl AsyncWrite for PartySend {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            PartySend::Native(w) => AsyncWrite::poll_write(Pin::new(w), cx, buf),
            PartySend::Web(w) => AsyncWrite::poll_write(Pin::new(w), cx, buf),
        }
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PartySend::Native(w) => Pin::new(w).poll_flush(cx),
            PartySend::Web(w) => Pin::new(w).poll_flush(cx),
        }
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            PartySend::Native(w) => Pin::new(w).poll_shutdown(cx),
            PartySend::Web(w) => Pin::new(w).poll_shutdown(cx),
        }
    }
}

/// The ALPN of WebTransport (HTTP/3), which the relay offers next to [`ALPN`].
pub const ALPN_H3: &[u8] = b"h3";

/// The path of the extended CONNECT that opens a WebTransport session to the relay
/// (`https://relay.example:443/remote-help/1`); any other path is answered 404.
pub const WEBTRANSPORT_PATH: &str = "/remote-help/1";

/// Bidirectional streams HTTP/3 itself takes from a WebTransport client: the CONNECT.
const H3_BIDI_STREAMS: u32 = 1;
/// Unidirectional streams HTTP/3 itself takes from a WebTransport client: its control
/// stream and the QPACK encoder and decoder streams (browsers open all three; a client
/// that does not is still held to [`UNI_STREAMS`] data streams by [`DataStreams`]).
const H3_UNI_STREAMS: u32 = 3;

/// Longest wait, after a 404, for the client to read it and close.
const REJECT_LINGER: Duration = Duration::from_secs(1);
/// HTTP/3's "no error" connection code (RFC 9114 §8.1).
const H3_NO_ERROR: u32 = 0x100;

/// How a client reached the relay (a label for metrics and logs).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    /// Native QUIC, ALPN `remote-help/1`.
    Native,
    /// WebTransport over HTTP/3, ALPN `h3`.
    WebTransport,
}

impl Transport {
    /// The label used in metrics and logs.
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Native => "native",
            Transport::WebTransport => "webtransport",
        }
    }
}

/// Why a connection did not become a party.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The handshake negotiated neither ALPN (rustls refuses that; kept for completeness).
    #[error("no known ALPN was negotiated")]
    UnknownAlpn,
    /// The HTTP/3 SETTINGS exchange or the CONNECT request failed or timed out.
    #[error("WebTransport handshake failed: {0}")]
    Handshake(String),
    /// The CONNECT named another path; answered 404.
    #[error("WebTransport CONNECT to {0}, not {WEBTRANSPORT_PATH}")]
    WrongPath(String),
}

impl OpenError {
    /// Counts the failure: `relay_handshake_failures_total` for the handshake itself,
    /// `relay_webtransport_failures_total{reason}` for what follows it in WebTransport.
    pub fn count(&self) {
        match self {
            OpenError::UnknownAlpn => {
                metrics::counter!("relay_handshake_failures_total").increment(1);
            }
            OpenError::Handshake(_) => {
                metrics::counter!("relay_webtransport_failures_total", "reason" => "handshake")
                    .increment(1);
            }
            OpenError::WrongPath(_) => {
                metrics::counter!("relay_webtransport_failures_total", "reason" => "path")
                    .increment(1);
            }
        }
    }
}

/// Turns an established QUIC connection into a party by its negotiated ALPN: native as it
/// is, `h3` after the HTTP/3 SETTINGS exchange and the CONNECT to [`WEBTRANSPORT_PATH`]
/// (answered 200), all within `deadline`.
pub async fn open(
    connection: quinn::Connection,
    deadline: Duration,
) -> Result<(Party, Transport), OpenError> {
    let alpn = connection
        .handshake_data()
        .and_then(|data| data.downcast::<quinn::crypto::rustls::HandshakeData>().ok())
        .and_then(|data| data.protocol);
    match alpn.as_deref() {
        Some(a) if a == ALPN => Ok((Party::Native(connection), Transport::Native)),
        Some(a) if a == ALPN_H3 => {
            // HTTP/3 takes streams of its own on top of ours: the CONNECT request's
            // bidirectional stream, and the client's HTTP/3 control stream and QPACK encoder
            // and decoder streams. Credit for exactly those, so a WebTransport client has
            // the same room for the control stream and data streams as a native one.
            connection.set_max_concurrent_bi_streams((BIDI_STREAMS + H3_BIDI_STREAMS).into());
            connection.set_max_concurrent_uni_streams((UNI_STREAMS + H3_UNI_STREAMS).into());
            let conn = connection.clone();
            let handshake = async {
                let request = web_transport_quinn::Request::accept(connection)
                    .await
                    .map_err(|e| OpenError::Handshake(e.to_string()))?;
                let path = request.url.path().to_string();
                if path != WEBTRANSPORT_PATH {
                    // The client learns 404. Closing at once would discard the response
                    // unsent, so give the client a moment to read it and close first.
                    let _ = request
                        .reject(web_transport_quinn::http::StatusCode::NOT_FOUND)
                        .await;
                    let _ = tokio::time::timeout(REJECT_LINGER, conn.closed()).await;
                    conn.close(H3_NO_ERROR.into(), b"not found");
                    return Err(OpenError::WrongPath(path));
                }
                request
                    .ok()
                    .await
                    .map_err(|e| OpenError::Handshake(e.to_string()))
            };
            match tokio::time::timeout(deadline, handshake).await {
                Ok(Ok(session)) => Ok((Party::Web(Arc::new(session)), Transport::WebTransport)),
                Ok(Err(e)) => Err(e),
                Err(_) => Err(OpenError::Handshake(
                    "no CONNECT within the authentication deadline".into(),
                )),
            }
        }
        _ => Err(OpenError::UnknownAlpn),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_party_handle_is_a_tagged_pointer() {
        // The hub, the connection task and the peer's task each hold one; events carry
        // them. A native party costs what its `quinn::Connection` did, plus the tag.
        assert!(std::mem::size_of::<Party>() <= 2 * std::mem::size_of::<quinn::Connection>());
        eprintln!(
            "web_transport_quinn::Session: {} bytes, once per connection",
            std::mem::size_of::<web_transport_quinn::Session>()
        );
    }
}
