//! How a connection's service ends: why ([`Close`]), and closing it with the code and
//! sentence the client is owed.

use super::*;

/// Why a connection's service ended.
#[derive(Debug)]
pub(super) enum Close {
    /// The client went away (closed, reset, timed out); nothing more can be sent.
    Lost(String),
    /// The relay refuses to go on: send the code and close.
    Refuse(ErrorCode, String),
    /// The relay is shutting down.
    Shutdown,
}

impl From<FrameError> for Close {
    fn from(e: FrameError) -> Close {
        match e {
            FrameError::TooLarge { len, max } => Close::Refuse(
                ErrorCode::MessageTooLarge,
                format!("control message of {len} bytes exceeds {max}"),
            ),
            FrameError::Decode(e) => Close::Refuse(
                ErrorCode::ProtocolViolation,
                format!("malformed control message: {e}"),
            ),
            FrameError::Truncated(n) => Close::Refuse(
                ErrorCode::ProtocolViolation,
                format!("control stream ended inside a message ({n} bytes)"),
            ),
            FrameError::UnknownChannel(tag) => Close::Refuse(
                ErrorCode::ProtocolViolation,
                format!("unknown data channel tag {tag}"),
            ),
            FrameError::Io(e) => Close::Lost(e.to_string()),
        }
    }
}

/// Closes the connection the way `close` says, telling the client why where it can.
pub(super) async fn finish(connection: &Party, writer: Option<&mut Writer>, close: Close) {
    let (code, message) = match close {
        Close::Lost(reason) => {
            debug!(%reason, "connection lost");
            // Nothing to tell a native client: its connection closes with its last
            // handle. A WebTransport session stays open as long as the client keeps its
            // CONNECT stream (see `party::CloseOnDrop`): close it, with code 0.
            if matches!(connection, Party::Web(_)) {
                connection.close(0, b"").await;
            }
            return;
        }
        Close::Refuse(code, message) => {
            warn!(code = code.as_str_name(), %message, "closing connection");
            metrics::counter!("relay_refusals_total", "code" => code.as_str_name()).increment(1);
            (code, message)
        }
        Close::Shutdown => {
            metrics::counter!("relay_refusals_total", "code" => ErrorCode::RelayShutdown.as_str_name())
                .increment(1);
            (
                ErrorCode::RelayShutdown,
                ErrorCode::RelayShutdown.describe().to_string(),
            )
        }
    };
    if let Some(writer) = writer {
        // Closing a QUIC connection discards unsent stream data, so the last messages
        // (a SessionEnded, this Error) could be lost. Finish the stream and wait, briefly
        // and boundedly, for the client to acknowledge everything on it; the close frame
        // below carries the same code and reason either way.
        let _ = writer
            .send(v1::RelayToClient {
                msg: Some(Out::Error(v1::Error {
                    code: code as i32,
                    message: message.clone(),
                    fatal: true,
                    ..Default::default()
                })),
            })
            .await;
        let stream = writer.get_mut();
        if stream.finish() {
            let _ = tokio::time::timeout(LINGER, stream.stopped()).await;
        }
    }
    // QUIC carries the reason in the close frame: keep it short, cut on a character boundary.
    let mut end = message.len().min(256);
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    connection
        .close(code.to_quic(), &message.as_bytes()[..end])
        .await;
}
