//! Data streams: the channel tag byte the relay reads first, then the length-prefixed
//! frames the SDK reads with `DataCodec`, then each frame through the end-to-end opener.
//!
//! The relay's admission of a data stream (`on_tagged_stream` in
//! `relay/src/server/connection.rs`) is not a public pure function; this target checks the
//! public pieces it is built from: `channel_from_tag`, `core::Channel::from_wire`,
//! `core::may_send` and `core::session_channels`.
//!
//! Input: `[limit selector, chunking seed, tag, stream bytes...]`.
//!
//! Invariants:
//! - a tag names a channel exactly when, without the continuation bit (`0x80`, a channel
//!   moving between the relay and a direct path), it is one of the four channel numbers, and
//!   that channel's tag is that byte; a channel a party may send on is one the session
//!   carries;
//! - framing does not depend on chunking, no frame exceeds the limit, frames re-encode to
//!   exactly the input bytes, and a truncated or oversized end reports the right numbers;
//! - no arbitrary frame opens under the session's keys (stream or datagram opener).
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use remote_help_fuzz::{End, chunks, drive, max_frame_size, session_keys};
use remote_help_proto::framing::{
    CONTINUATION, DataCodec, FrameError, LENGTH_PREFIX, channel_from_tag, channel_tag,
};
use remote_help_proto::v1;
use remote_help_sdk::session::{Channel, Mode, Role, may_send, session_channels};
use remote_help_sdk::e2e::{self, E2eError, OVERHEAD};
use tokio_util::codec::Encoder;

const ROLES: [Role; 2] = [Role::Helper, Role::Sharer];
const MODES: [Mode; 4] = [
    Mode::ViewOnly,
    Mode::FullControl,
    Mode::Elevation,
    Mode::Unattended,
];

fuzz_target!(|data: &[u8]| {
    let [selector, seed, tag, stream @ ..] = data else {
        return;
    };
    let channel = check_tag(*tag);

    let max = max_frame_size(*selector);
    let pieces = chunks(stream, *seed);
    let framed = drive(&mut DataCodec::new(max), &pieces);
    let whole = drive(&mut DataCodec::new(max), &[stream]);
    assert_eq!(framed.items, whole.items, "frames depend on chunking");
    assert_eq!(framed.end, whole.end, "the end depends on chunking");

    let mut at = 0;
    let mut re_encoded = BytesMut::new();
    for frame in &framed.items {
        assert!(frame.len() <= max);
        DataCodec::new(max)
            .encode(&frame[..], &mut re_encoded)
            .expect("a frame read within the limit can be written");
        at += LENGTH_PREFIX + frame.len();
    }
    assert_eq!(
        re_encoded[..],
        stream[..at],
        "frames re-encode to the input"
    );
    let rest = &stream[at..];
    // After an error the reader stops, so later chunks may never have been buffered.
    assert!(framed.left <= rest.len());
    match framed.end {
        End::Clean => assert!(rest.is_empty() && framed.left == 0),
        End::TooLarge { len, max: limit } => {
            assert!(framed.left >= LENGTH_PREFIX);
            assert_eq!(limit, max);
            assert!(len > max);
            assert_eq!(
                len,
                u32::from_be_bytes(rest[..LENGTH_PREFIX].try_into().unwrap()) as usize
            );
        }
        End::Truncated(n) => assert!(n == rest.len() && n == framed.left && n > 0),
        other => panic!("unexpected end of a data stream: {other:?}"),
    }
    // Writing above the limit is refused with the exact numbers.
    let oversized = vec![0u8; max + 1];
    match DataCodec::new(max).encode(&oversized[..], &mut BytesMut::new()) {
        Err(FrameError::TooLarge { len, max: limit }) => assert_eq!((len, limit), (max + 1, max)),
        other => panic!("oversized write: {other:?}"),
    }

    // What the SDK does with each frame: open it. Nothing made up may open.
    let keys = session_keys();
    let domain = match channel {
        Some(channel) => e2e::stream_domain(channel),
        None => u32::from(*tag),
    };
    let mut opener = keys.helper.stream_opener(domain);
    let mut datagrams = keys.helper.datagram_opener();
    for frame in &framed.items {
        match opener.open(frame) {
            Ok(plain) => panic!("a made-up frame opened: {plain:?}"),
            Err(E2eError::Short(n)) => assert!(n == frame.len() && n < OVERHEAD + 1),
            Err(E2eError::Tampered) => assert!(frame.len() > OVERHEAD),
            Err(other) => panic!("unexpected opener error {other:?}"),
        }
        assert!(datagrams.open(frame).is_err(), "a made-up datagram opened");
    }
    assert_eq!(opener.finish(), Err(E2eError::Truncated));
});

/// The relay's first read of a data stream: the tag byte names a channel, or is refused.
fn check_tag(tag: u8) -> Option<Channel> {
    let number = tag & !CONTINUATION;
    match channel_from_tag(tag) {
        Ok(wire) => {
            assert!((1..=4).contains(&number), "tag {tag} accepted");
            assert_eq!(channel_tag(wire), number);
            assert_ne!(wire, v1::Channel::Unspecified);
            let channel = Channel::from_wire(wire).expect("a known channel maps");
            assert_eq!(channel.to_wire(), wire);
            assert_eq!(e2e::stream_domain(channel), u32::from(number));
            for role in ROLES {
                for mode in MODES {
                    for chat_allowed in [false, true] {
                        if may_send(role, channel, mode, chat_allowed) {
                            assert!(
                                session_channels(mode, chat_allowed).contains(&channel),
                                "{role:?} may send on {channel:?} in {mode:?} \
                                 (chat {chat_allowed}) but the session does not carry it"
                            );
                        }
                    }
                }
            }
            Some(channel)
        }
        Err(FrameError::UnknownChannel(t)) => {
            assert_eq!(t, tag);
            assert!(!(1..=4).contains(&number), "tag {tag} refused");
            None
        }
        Err(other) => panic!("unexpected tag error {other:?}"),
    }
}
