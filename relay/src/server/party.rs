//! The transport of an authenticated party: streams and datagrams, whether the client came
//! as native QUIC (ALPN `remote-help/1`) or as a WebTransport session (ALPN `h3`, extended
//! CONNECT to [`WEBTRANSPORT_PATH`]). The connection task and the forwarding hot path work
//! against [`Party`] only, so both kinds of client share one code path: the same checks,
//! limits, metrics and audit events (PROTOCOL.md "WebTransport access").
//!
//! `Party` is `web_transport_quinn::Session`, which is built for exactly this: a native
//! connection is wrapped with `Session::raw` (stream and datagram bytes as they are, stream
//! error codes as they are), a WebTransport session adds the session-id headers and maps
//! stream error codes into the HTTP/3 range that the WebTransport spec reserves for them.
//! One concrete type, no dynamic dispatch and no allocation per chunk: for a native client
//! a read or write is quinn's, plus a branch on the error path.

use std::sync::Arc;
use std::time::Duration;

use remote_help_proto::ALPN;

use crate::transport::{BIDI_STREAMS, UNI_STREAMS};

/// A party's connection: native QUIC or a WebTransport session (see the module docs).
///
/// Shared behind one `Arc`: a `Session` is several hundred bytes (per-clone poll state
/// that the async methods used here never touch), and the hub, the connection task and
/// the peer's task each hold a handle, so a clone stays a pointer, as `quinn::Connection`
/// is. Derefs to the session, and through it to the `quinn::Connection` (RTT, address).
#[derive(Clone, Debug)]
pub struct Party(Arc<web_transport_quinn::Session>);

impl Party {
    fn new(session: web_transport_quinn::Session) -> Party {
        Party(Arc::new(session))
    }
}

impl std::ops::Deref for Party {
    type Target = web_transport_quinn::Session;

    fn deref(&self) -> &Self::Target {
        &self.0
    }
}
/// A stream towards a party.
pub type PartySend = web_transport_quinn::SendStream;
/// A stream from a party.
pub type PartyRecv = web_transport_quinn::RecvStream;

/// The ALPN of WebTransport (HTTP/3), which the relay offers next to [`ALPN`].
pub const ALPN_H3: &[u8] = b"h3";

/// The path of the extended CONNECT that opens a WebTransport session to the relay
/// (`https://relay.example:443/remote-help/1`); any other path is answered 404.
pub const WEBTRANSPORT_PATH: &str = "/remote-help/1";

/// Bidirectional streams HTTP/3 itself takes from a WebTransport client: the CONNECT.
const H3_BIDI_STREAMS: u32 = 1;
/// Unidirectional streams HTTP/3 itself takes from a WebTransport client: its control
/// stream and the QPACK encoder and decoder streams (browsers open all three).
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
    /// The `reason` label of `relay_handshake_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            OpenError::UnknownAlpn => "alpn",
            OpenError::Handshake(_) => "webtransport",
            OpenError::WrongPath(_) => "webtransport_path",
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
        Some(a) if a == ALPN => Ok((
            Party::new(web_transport_quinn::Session::raw(connection)),
            Transport::Native,
        )),
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
                Ok(Ok(session)) => Ok((Party::new(session), Transport::WebTransport)),
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
    fn a_party_handle_is_one_pointer_like_a_quinn_connection() {
        // The hub, the connection task and the peer's task each hold one; events carry them.
        assert_eq!(
            std::mem::size_of::<Party>(),
            std::mem::size_of::<quinn::Connection>()
        );
        eprintln!(
            "web_transport_quinn::Session: {} bytes, once per connection",
            std::mem::size_of::<web_transport_quinn::Session>()
        );
    }
}
