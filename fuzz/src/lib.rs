//! Helpers shared by the fuzz targets in `fuzz_targets/` (see `docs/fuzzing.md`).

use bytes::BytesMut;
use remote_help_proto::framing::{DEFAULT_MAX_CONTROL_MESSAGE, FrameError};
use tokio_util::codec::Decoder;

/// The frame size limit a fuzz input selects with its first byte: mostly small limits,
/// so that the "too large" path is reached often, plus 0 and the real control limit.
pub fn max_frame_size(selector: u8) -> usize {
    match selector {
        0 => 0,
        255 => DEFAULT_MAX_CONTROL_MESSAGE,
        x => usize::from(x) * 4,
    }
}

/// Splits `input` into the chunks a QUIC stream might deliver, chosen by `seed`:
/// seed 0 delivers everything at once, other seeds cut 1..=16-byte pieces, with an
/// occasional empty read.
pub fn chunks(input: &[u8], seed: u8) -> Vec<&[u8]> {
    if seed == 0 {
        return vec![input];
    }
    let mut state = u32::from(seed) | 0x9e37_7900;
    let mut out = Vec::new();
    let mut rest = input;
    while !rest.is_empty() {
        // xorshift32: deterministic and cheap.
        state ^= state << 13;
        state ^= state >> 17;
        state ^= state << 5;
        let len = (state % 17) as usize;
        let len = len.min(rest.len());
        let (head, tail) = rest.split_at(len);
        out.push(head);
        rest = tail;
    }
    out
}

/// How a decoded stream ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Every byte was consumed by complete frames.
    Clean,
    /// `TooLarge { len, max }`.
    TooLarge {
        /// Announced length.
        len: usize,
        /// Limit.
        max: usize,
    },
    /// The body of a frame was not a valid message.
    Decode,
    /// The stream ended with `n` bytes of an incomplete frame.
    Truncated(usize),
    /// Any other error (there should be none).
    Other(String),
}

impl From<FrameError> for End {
    fn from(e: FrameError) -> End {
        match e {
            FrameError::TooLarge { len, max } => End::TooLarge { len, max },
            FrameError::Decode(_) => End::Decode,
            FrameError::Truncated(n) => End::Truncated(n),
            other => End::Other(other.to_string()),
        }
    }
}

/// What `FramedRead` would hand its reader: every item, then how the stream ended.
#[derive(Debug)]
pub struct Decoded<T> {
    /// Items in order.
    pub items: Vec<T>,
    /// Why decoding stopped.
    pub end: End,
    /// Bytes left in the buffer when decoding stopped.
    pub left: usize,
}

/// Feeds `chunks` to `codec` the way `tokio_util::codec::FramedRead` does: decode after
/// every read until the codec needs more bytes, stop at the first error, and call
/// `decode_eof` when the stream ends.
pub fn drive<D>(codec: &mut D, chunks: &[&[u8]]) -> Decoded<D::Item>
where
    D: Decoder<Error = FrameError>,
{
    let mut buf = BytesMut::new();
    let mut items = Vec::new();
    for chunk in chunks {
        buf.extend_from_slice(chunk);
        loop {
            match codec.decode(&mut buf) {
                Ok(Some(item)) => items.push(item),
                Ok(None) => break,
                Err(e) => {
                    return Decoded {
                        items,
                        end: e.into(),
                        left: buf.len(),
                    };
                }
            }
        }
    }
    loop {
        match codec.decode_eof(&mut buf) {
            Ok(Some(item)) => items.push(item),
            Ok(None) => {
                return Decoded {
                    items,
                    end: End::Clean,
                    left: buf.len(),
                };
            }
            Err(e) => {
                return Decoded {
                    items,
                    end: e.into(),
                    left: buf.len(),
                };
            }
        }
    }
}

/// One session's end-to-end keys, as the helper and the sharer derive them (made once
/// per process from fresh X25519 keys; both sides agree, which is checked).
pub struct SessionPair {
    /// The helper's keys.
    pub helper: remote_help_sdk::e2e::SessionKeys,
    /// The sharer's keys.
    pub sharer: remote_help_sdk::e2e::SessionKeys,
}

/// The process-wide key pair of a fake session.
pub fn session_keys() -> &'static SessionPair {
    use remote_help_sdk::session::Role;
    use remote_help_sdk::e2e::{KeyExchange, Party, Transcript};
    static KEYS: std::sync::OnceLock<SessionPair> = std::sync::OnceLock::new();
    KEYS.get_or_init(|| {
        let helper = KeyExchange::start().expect("helper key");
        let sharer = KeyExchange::start().expect("sharer key");
        let transcript = Transcript {
            session_id: "0123456789abcdef0123456789abcdef".into(),
            helper: Party {
                tenant: "contoso".into(),
                subject: "helper".into(),
            },
            sharer: Party {
                tenant: "contoso".into(),
                subject: "sharer".into(),
            },
            helper_suites: vec![1, 2],
            sharer_suites: vec![1, 2],
            suite: remote_help_sdk::e2e::Suite::X25519ChaCha20Poly1305,
            helper_key: helper.public_key(),
            sharer_key: sharer.public_key(),
        };
        let pair = SessionPair {
            helper: helper
                .finish(Role::Helper, &transcript)
                .expect("helper keys"),
            sharer: sharer
                .finish(Role::Sharer, &transcript)
                .expect("sharer keys"),
        };
        assert_eq!(
            pair.helper.verification_code, pair.sharer.verification_code,
            "both sides must show the same verification code"
        );
        pair
    })
}
