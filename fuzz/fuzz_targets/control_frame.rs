//! The control stream: arbitrary bytes, cut into arbitrary chunks, through the control
//! framing codec with a small size limit, decoded as `ClientToRelay` (what the relay
//! reads) and as `RelayToClient` (what the SDK reads).
//!
//! Input: `[limit selector, chunking seed, stream bytes...]`.
//!
//! Invariants:
//! - framing does not depend on how the stream is cut into chunks;
//! - no frame exceeds the limit, and a refused length really is above it;
//! - the control codec yields exactly the raw frames' protobuf decodings, and stops with a
//!   decode error at the first frame that does not decode;
//! - every decoded message re-encodes under a length prefix equal to its encoded length,
//!   decodes back to itself, and re-encoding is a fixed point;
//! - the wire enums in a decoded message map to domain values exactly when they are known.
#![no_main]

use bytes::BytesMut;
use libfuzzer_sys::fuzz_target;
use prost::Message;
use remote_help_fuzz::{Decoded, End, chunks, drive, max_frame_size};
use remote_help_proto::ErrorCode;
use remote_help_proto::framing::{ControlCodec, DataCodec, FrameError, LENGTH_PREFIX};
use remote_help_proto::v1::{self, ClientToRelay, RelayToClient, client_to_relay, relay_to_client};
use remote_help_relay::core::code::SessionCode;
use remote_help_relay::core::{Mode, Role};
use tokio_util::codec::{Decoder, Encoder};

fuzz_target!(|data: &[u8]| {
    let [selector, seed, stream @ ..] = data else {
        return;
    };
    let max = max_frame_size(*selector);
    let pieces = chunks(stream, *seed);

    // Raw frames, as cut and all at once: chunking must not matter.
    let raw = drive(&mut DataCodec::new(max), &pieces);
    let whole = drive(&mut DataCodec::new(max), &[stream]);
    assert_eq!(raw.items, whole.items, "frames depend on chunking");
    assert_eq!(raw.end, whole.end, "the end depends on chunking");
    check_raw(&raw, stream, max);

    // The relay's side.
    let relay = drive(
        &mut ControlCodec::<ClientToRelay, RelayToClient>::new(max),
        &pieces,
    );
    check_control::<ClientToRelay>(&raw, &relay, max);
    for message in &relay.items {
        check_client_message(message);
    }

    // The SDK's side.
    let client = drive(
        &mut ControlCodec::<RelayToClient, ClientToRelay>::new(max),
        &pieces,
    );
    check_control::<RelayToClient>(&raw, &client, max);
    for message in &client.items {
        check_relay_message(message);
    }
});

/// The raw frames are the stream's bytes, prefix by prefix, each within the limit.
fn check_raw(raw: &Decoded<BytesMut>, stream: &[u8], max: usize) {
    let mut at = 0;
    let mut re_encoded = BytesMut::new();
    for frame in &raw.items {
        assert!(frame.len() <= max, "frame of {} above {max}", frame.len());
        let prefix = u32::try_from(frame.len()).unwrap().to_be_bytes();
        assert_eq!(stream[at..at + LENGTH_PREFIX], prefix, "length prefix");
        at += LENGTH_PREFIX;
        assert_eq!(stream[at..at + frame.len()], frame[..], "frame body");
        at += frame.len();
        DataCodec::new(max)
            .encode(&frame[..], &mut re_encoded)
            .expect("a frame that was read within the limit can be written");
    }
    assert_eq!(
        re_encoded[..],
        stream[..at],
        "frames re-encode to the input"
    );
    let rest = &stream[at..];
    // After an error the reader stops, so later chunks may never have been buffered.
    assert!(
        raw.left <= rest.len(),
        "more bytes left over than the stream had"
    );
    match &raw.end {
        End::Clean => assert!(rest.is_empty() && raw.left == 0),
        End::TooLarge { len, max: limit } => {
            assert!(
                raw.left >= LENGTH_PREFIX,
                "refused before the prefix arrived"
            );
            assert_eq!(*limit, max);
            assert!(*len > max);
            let announced = u32::from_be_bytes(rest[..LENGTH_PREFIX].try_into().unwrap());
            assert_eq!(*len, announced as usize);
        }
        End::Truncated(n) => {
            assert_eq!(*n, rest.len());
            assert_eq!(raw.left, rest.len());
            assert!(!rest.is_empty());
            if rest.len() >= LENGTH_PREFIX {
                let announced = u32::from_be_bytes(rest[..LENGTH_PREFIX].try_into().unwrap());
                assert!((announced as usize) <= max);
                assert!(rest.len() < LENGTH_PREFIX + announced as usize);
            }
        }
        other => panic!("unexpected end of raw framing: {other:?}"),
    }
}

/// The control codec yields the raw frames' decodings, up to the first undecodable one.
fn check_control<M>(raw: &Decoded<BytesMut>, control: &Decoded<M>, max: usize)
where
    M: Message + Default + PartialEq + Clone + std::fmt::Debug,
{
    let mut expected = Vec::new();
    let mut expected_end = raw.end.clone();
    for frame in &raw.items {
        match M::decode(&frame[..]) {
            Ok(message) => expected.push(message),
            Err(_) => {
                expected_end = End::Decode;
                break;
            }
        }
    }
    assert_eq!(
        control.items, expected,
        "control items differ from raw frames"
    );
    assert_eq!(control.end, expected_end, "control codec ended differently");

    for message in &control.items {
        round_trip(message, max);
    }
}

/// Re-encoding a decoded message: the prefix is its encoded length, it decodes back to
/// itself, and encoding is a fixed point from there on.
fn round_trip<M>(message: &M, max: usize)
where
    M: Message + Default + PartialEq + Clone + std::fmt::Debug,
{
    let len = message.encoded_len();
    let mut out = BytesMut::new();
    let mut codec = ControlCodec::<M, M>::new(max);
    match codec.encode(message.clone(), &mut out) {
        Ok(()) => {
            assert!(len <= max);
            assert_eq!(out.len(), LENGTH_PREFIX + len);
            assert_eq!(out[..LENGTH_PREFIX], (len as u32).to_be_bytes());
            assert_eq!(out[LENGTH_PREFIX..], message.encode_to_vec()[..]);
            let mut reader = out.clone();
            let back = codec
                .decode(&mut reader)
                .expect("our own encoding decodes")
                .expect("a whole frame");
            assert_eq!(&back, message, "decode(encode(m)) != m");
            assert!(reader.is_empty());
            assert_eq!(
                back.encode_to_vec(),
                out[LENGTH_PREFIX..],
                "not a fixed point"
            );
        }
        Err(FrameError::TooLarge { len: l, max: m }) => {
            // A decoded message can re-encode longer than it arrived (a 5-byte negative
            // enum becomes 10 bytes), so this is reachable; it must be exact, though.
            assert_eq!((l, m), (len, max));
            assert!(len > max);
        }
        Err(e) => panic!("encoding failed: {e}"),
    }
}

/// What the relay does first with a client's message: map its wire enums.
fn check_client_message(message: &ClientToRelay) {
    use client_to_relay::Msg;
    match &message.msg {
        Some(Msg::Hello(hello)) => {
            let role = Role::from_wire(hello.role);
            assert_eq!(role.is_some(), matches!(hello.role, 1 | 2));
        }
        Some(Msg::CreateSession(create)) => check_mode(create.mode),
        Some(Msg::RequestMode(request)) => check_mode(request.mode),
        Some(Msg::JoinSession(join)) => {
            if let Ok(code) = SessionCode::parse(&join.code) {
                assert_eq!(SessionCode::parse(&code.to_string()), Ok(code));
            }
        }
        Some(Msg::Ping(ping)) => check_quic_code(ping.nonce),
        _ => {}
    }
}

/// What the SDK does with the relay's messages: map modes, channels and error codes.
fn check_relay_message(message: &RelayToClient) {
    use relay_to_client::Msg;
    match &message.msg {
        Some(Msg::SessionEnded(ended)) => check_error_code(ended.reason),
        Some(Msg::Error(error)) => check_error_code(error.code),
        Some(Msg::SessionStarted(started)) => {
            check_mode(started.mode);
            check_channels(&started.channels);
        }
        Some(Msg::ModeChanged(changed)) => {
            check_mode(changed.mode);
            check_channels(&changed.channels);
        }
        Some(Msg::ConsentRequest(request)) => check_mode(request.mode),
        Some(Msg::Pong(pong)) => check_quic_code(pong.nonce),
        _ => {}
    }
}

fn check_mode(wire: i32) {
    match Mode::from_wire(wire) {
        Some(mode) => assert_eq!(mode.to_wire() as i32, wire),
        None => assert!(!(1..=4).contains(&wire)),
    }
}

fn check_channels(channels: &[i32]) {
    for &wire in channels {
        if let Ok(channel) = v1::Channel::try_from(wire) {
            assert_eq!(channel as i32, wire);
        }
    }
}

fn check_error_code(wire: i32) {
    if let Ok(code) = ErrorCode::try_from(wire) {
        assert!(!code.describe().is_empty());
        assert_eq!(ErrorCode::from_str_name(code.as_str_name()), Some(code));
        assert_eq!(ErrorCode::from_quic(u64::from(code.to_quic())), Some(code));
    }
}

/// A QUIC application close code from the peer (any u64) maps back only to itself.
fn check_quic_code(raw: u64) {
    if let Some(code) = ErrorCode::from_quic(raw) {
        assert_eq!(u64::from(code.to_quic()), raw);
    }
}
