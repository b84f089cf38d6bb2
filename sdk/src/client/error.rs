//! Why a client call failed: [`ClientError`], with the protocol code behind it.

use remote_help_proto::ErrorCode;
use remote_help_proto::framing::FrameError;

use crate::tls::TlsError;

/// Why a client call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// TLS could not be configured.
    #[error("TLS setup: {0}")]
    Tls(#[from] TlsError),
    /// The local UDP socket could not be opened.
    #[error("cannot open a UDP socket: {0}")]
    Socket(std::io::Error),
    /// The connection attempt could not start.
    #[error("cannot connect: {0}")]
    Connect(#[from] quinn::ConnectError),
    /// The relay refused a request or ended the session, with a stable code.
    #[error("{code}: {message}")]
    Refused {
        /// The stable code.
        code: ErrorCode,
        /// The relay's explanation.
        message: String,
    },
    /// The connection failed without a code of ours (timeout, TLS failure, reset).
    #[error("connection failed: {0}")]
    Connection(quinn::ConnectionError),
    /// The relay sent something this client did not expect.
    #[error("unexpected message from the relay: {0}")]
    Unexpected(String),
    /// A frame could not be read or written.
    #[error("framing: {0}")]
    Frame(FrameError),
    /// End-to-end protection failed: the frame was forged, replayed, reordered or cut.
    #[error("end-to-end protection: {0}")]
    E2e(#[from] crate::e2e::E2eError),
    /// The connection to the relay was lost without a close from it (the node crashed or
    /// the network failed): `RELAY_LOST`.
    #[error("the connection to the relay was lost: {0}")]
    RelayLost(quinn::ConnectionError),
    /// The relay said the request belongs to another node (`REDIRECT`). The SDK's requests
    /// follow redirects themselves; this surfaces only where one could not be followed.
    #[error("redirected to relay node {node} at {address}")]
    Redirected {
        /// The node's `host:port`.
        address: String,
        /// The node's id.
        node: u32,
    },
    /// A redirect could not be followed (the address does not resolve, or too many hops).
    #[error("cannot follow the redirect to {address}: {reason}")]
    Redirect {
        /// Where the relay pointed.
        address: String,
        /// Why it failed.
        reason: String,
    },
}

impl ClientError {
    /// The stable error code, when the relay gave one.
    pub fn code(&self) -> Option<ErrorCode> {
        match self {
            ClientError::Refused { code, .. } => Some(*code),
            ClientError::RelayLost(_) => Some(ErrorCode::RelayLost),
            ClientError::Redirected { .. } => Some(ErrorCode::Redirect),
            _ => None,
        }
    }

    /// A failed handshake: like [`Self::from_connection`], except that silence is a
    /// connection failure, not `RELAY_LOST` (a relay never reached was never lost).
    pub fn from_handshake(e: quinn::ConnectionError) -> ClientError {
        match e {
            quinn::ConnectionError::TimedOut | quinn::ConnectionError::Reset => {
                ClientError::Connection(e)
            }
            other => ClientError::from_connection(other),
        }
    }

    /// A connection-level failure, as the relay's close code when it sent one.
    pub fn from_connection(e: quinn::ConnectionError) -> ClientError {
        match &e {
            quinn::ConnectionError::ApplicationClosed(close) => {
                match ErrorCode::from_quic(close.error_code.into_inner()) {
                    Some(code) if code != ErrorCode::Unspecified => ClientError::Refused {
                        code,
                        message: String::from_utf8_lossy(&close.reason).into_owned(),
                    },
                    _ => ClientError::Connection(e),
                }
            }
            // Silence or a stateless reset: the relay is gone, not refusing anything.
            quinn::ConnectionError::TimedOut | quinn::ConnectionError::Reset => {
                ClientError::RelayLost(e)
            }
            _ => ClientError::Connection(e),
        }
    }
}

impl From<FrameError> for ClientError {
    /// A data stream the relay (or the peer) reset or stopped with one of the protocol's
    /// codes (`PEER_LOST` when the peer vanished, `PEER_ENDED`, `CHAT_DISABLED`, …) is that
    /// code, with its `describe()` sentence: the user is told what happened, not the
    /// transport's "stream reset by peer: error 13".
    fn from(e: FrameError) -> ClientError {
        match stream_code(&e) {
            Some(code) => ClientError::Refused {
                code,
                message: code.describe().to_string(),
            },
            None => ClientError::Frame(e),
        }
    }
}

/// The protocol code a data stream was reset (reading) or stopped (writing) with, if it
/// is one of ours; code 0 is a plain stop, not a refusal.
fn stream_code(e: &FrameError) -> Option<ErrorCode> {
    let FrameError::Io(io) = e else {
        return None;
    };
    let inner = io.get_ref()?;
    let raw = if let Some(quinn::ReadError::Reset(code)) = inner.downcast_ref() {
        *code
    } else if let Some(quinn::WriteError::Stopped(code)) = inner.downcast_ref() {
        *code
    } else {
        return None;
    };
    ErrorCode::from_quic(raw.into_inner()).filter(|c| *c != ErrorCode::Unspecified)
}
