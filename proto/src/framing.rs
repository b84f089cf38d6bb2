//! Framing on QUIC streams.
//!
//! *Control stream* (the first bidirectional stream, opened by the client): a sequence of
//! frames, each a 4-byte big-endian unsigned length `N` followed by `N` bytes of one
//! protobuf message (`ClientToRelay` from the client, `RelayToClient` from the relay).
//! `N` above the receiver's maximum is an error ([`FrameError::TooLarge`]) before any of
//! the body is buffered, so a peer cannot make the receiver allocate more than the limit.
//!
//! *Data streams* (unidirectional): the first byte is the [`Channel`] number, with
//! [`CONTINUATION`] set when the stream continues a channel that moved between the relay and
//! a direct path; the rest is opaque to the relay. The reference client puts length-prefixed
//! frames inside them with [`DataCodec`], the same 4-byte prefix as the control stream; an
//! empty frame ([`MOVED_MARKER`]) says that the channel continues on another path.

use std::marker::PhantomData;

use bytes::{Buf, BufMut, Bytes, BytesMut};
use tokio_util::codec::{Decoder, Encoder};

use crate::v1::Channel;

/// Size of the length prefix in front of every frame.
pub const LENGTH_PREFIX: usize = 4;

/// Bit set in a data stream's tag byte when the stream continues a channel that moved to
/// this path (the direct connection, or back to the relay); clear for a channel's first stream.
pub const CONTINUATION: u8 = 0x80;

/// The frame a sender writes last on a data stream whose channel moves to another path
/// (then it finishes the stream): an empty frame, which carries no data otherwise.
pub const MOVED_MARKER: &[u8] = &[];

/// Default maximum control message size (bytes, prefix excluded).
pub const DEFAULT_MAX_CONTROL_MESSAGE: usize = 64 * 1024;

/// Why a frame could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// The length prefix announced more bytes than the receiver accepts.
    #[error("frame of {len} bytes exceeds the limit of {max} bytes")]
    TooLarge {
        /// Announced length.
        len: usize,
        /// The receiver's limit.
        max: usize,
    },
    /// The frame's bytes are not a valid protobuf message of the expected type.
    #[error("malformed message: {0}")]
    Decode(#[from] prost::DecodeError),
    /// The stream ended in the middle of a frame.
    #[error("stream ended inside a frame ({0} bytes left over)")]
    Truncated(usize),
    /// The data stream's tag byte names no known channel.
    #[error("unknown data channel tag {0}")]
    UnknownChannel(u8),
    /// The underlying stream failed.
    #[error("stream error: {0}")]
    Io(#[from] std::io::Error),
}

/// Splits a byte stream into length-prefixed frames of at most `max` bytes.
#[derive(Debug, Clone, Copy)]
pub struct DataCodec {
    max: usize,
}

impl DataCodec {
    /// A codec that accepts frames of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        DataCodec { max }
    }
}

impl Decoder for DataCodec {
    type Item = BytesMut;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        if src.len() < LENGTH_PREFIX {
            src.reserve(LENGTH_PREFIX - src.len());
            return Ok(None);
        }
        let mut prefix = [0u8; LENGTH_PREFIX];
        prefix.copy_from_slice(&src[..LENGTH_PREFIX]);
        // u32 always fits in usize on the 32- and 64-bit targets we build for.
        let len = u32::from_be_bytes(prefix) as usize;
        if len > self.max {
            return Err(FrameError::TooLarge { len, max: self.max });
        }
        if src.len() < LENGTH_PREFIX + len {
            src.reserve(LENGTH_PREFIX + len - src.len());
            return Ok(None);
        }
        src.advance(LENGTH_PREFIX);
        Ok(Some(src.split_to(len)))
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<BytesMut>, FrameError> {
        match self.decode(src)? {
            Some(frame) => Ok(Some(frame)),
            None if src.is_empty() => Ok(None),
            None => Err(FrameError::Truncated(src.len())),
        }
    }
}

impl Encoder<Bytes> for DataCodec {
    type Error = FrameError;

    fn encode(&mut self, item: Bytes, dst: &mut BytesMut) -> Result<(), FrameError> {
        self.encode(&item[..], dst)
    }
}

impl Encoder<&[u8]> for DataCodec {
    type Error = FrameError;

    fn encode(&mut self, item: &[u8], dst: &mut BytesMut) -> Result<(), FrameError> {
        if item.len() > self.max {
            return Err(FrameError::TooLarge {
                len: item.len(),
                max: self.max,
            });
        }
        dst.reserve(LENGTH_PREFIX + item.len());
        // Checked just above: item.len() <= max, and max is configured far below u32::MAX.
        dst.put_u32(u32::try_from(item.len()).map_err(|_| FrameError::TooLarge {
            len: item.len(),
            max: self.max,
        })?);
        dst.put_slice(item);
        Ok(())
    }
}

/// Reads `In` and writes `Out` protobuf messages as length-prefixed frames.
///
/// The relay uses `ControlCodec<ClientToRelay, RelayToClient>`, a client the reverse.
#[derive(Debug)]
pub struct ControlCodec<In, Out> {
    frames: DataCodec,
    _types: PhantomData<fn(Out) -> In>,
}

impl<In, Out> ControlCodec<In, Out> {
    /// A codec that accepts messages of at most `max` bytes.
    pub fn new(max: usize) -> Self {
        ControlCodec {
            frames: DataCodec::new(max),
            _types: PhantomData,
        }
    }
}

impl<In: prost::Message + Default, Out> Decoder for ControlCodec<In, Out> {
    type Item = In;
    type Error = FrameError;

    fn decode(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        match self.frames.decode(src)? {
            Some(frame) => Ok(Some(In::decode(frame)?)),
            None => Ok(None),
        }
    }

    fn decode_eof(&mut self, src: &mut BytesMut) -> Result<Option<In>, FrameError> {
        match self.frames.decode_eof(src)? {
            Some(frame) => Ok(Some(In::decode(frame)?)),
            None => Ok(None),
        }
    }
}

impl<In, Out: prost::Message> Encoder<Out> for ControlCodec<In, Out> {
    type Error = FrameError;

    fn encode(&mut self, item: Out, dst: &mut BytesMut) -> Result<(), FrameError> {
        let len = item.encoded_len();
        if len > self.frames.max {
            return Err(FrameError::TooLarge {
                len,
                max: self.frames.max,
            });
        }
        dst.reserve(LENGTH_PREFIX + len);
        dst.put_u32(len as u32);
        // Cannot fail: `reserve` above made room for exactly `len` more bytes.
        item.encode(dst).map_err(|_| FrameError::TooLarge {
            len,
            max: self.frames.max,
        })?;
        Ok(())
    }
}

/// The tag byte that opens a data stream for `channel`.
pub fn channel_tag(channel: Channel) -> u8 {
    // Channel numbers are small by definition in the .proto file.
    channel as i32 as u8
}

/// The channel a data stream's tag byte names (with or without [`CONTINUATION`]).
pub fn channel_from_tag(tag: u8) -> Result<Channel, FrameError> {
    match Channel::try_from(i32::from(tag & !CONTINUATION)) {
        Ok(Channel::Unspecified) | Err(_) => Err(FrameError::UnknownChannel(tag)),
        Ok(channel) => Ok(channel),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::v1::{ClientToRelay, Hello, Role, client_to_relay::Msg};

    fn hello() -> ClientToRelay {
        ClientToRelay {
            msg: Some(Msg::Hello(Hello {
                protocol_version: 1,
                token: "a.b.c".into(),
                role: Role::Helper as i32,
                client_name: "test".into(),
                e2e_suites: vec![1, 2],
                ..Default::default()
            })),
        }
    }

    #[test]
    fn control_messages_round_trip() {
        let mut codec = ControlCodec::<ClientToRelay, ClientToRelay>::new(1024);
        let mut buf = BytesMut::new();
        codec.encode(hello(), &mut buf).unwrap();
        codec.encode(hello(), &mut buf).unwrap();
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(hello()));
        assert_eq!(codec.decode(&mut buf).unwrap(), Some(hello()));
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
    }

    #[test]
    fn frame_bytes_are_length_prefixed_big_endian() {
        let mut codec = DataCodec::new(16);
        let mut buf = BytesMut::new();
        codec.encode(&b"abc"[..], &mut buf).unwrap();
        assert_eq!(&buf[..], &[0, 0, 0, 3, b'a', b'b', b'c']);
    }

    #[test]
    fn partial_frames_wait_for_more_bytes() {
        let mut codec = DataCodec::new(16);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, b'a'][..]);
        assert_eq!(codec.decode(&mut buf).unwrap(), None);
        buf.extend_from_slice(b"bc");
        assert_eq!(&codec.decode(&mut buf).unwrap().unwrap()[..], b"abc");
    }

    #[test]
    fn oversized_length_is_refused_before_the_body_arrives() {
        let mut codec = DataCodec::new(16);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 17][..]);
        assert!(matches!(
            codec.decode(&mut buf),
            Err(FrameError::TooLarge { len: 17, max: 16 })
        ));
        let mut huge = BytesMut::from(&[0xffu8, 0xff, 0xff, 0xff][..]);
        assert!(matches!(
            codec.decode(&mut huge),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn oversized_messages_are_refused_when_encoding() {
        let mut codec = ControlCodec::<ClientToRelay, ClientToRelay>::new(8);
        let mut buf = BytesMut::new();
        assert!(matches!(
            codec.encode(hello(), &mut buf),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn garbage_bodies_are_decode_errors() {
        let mut codec = ControlCodec::<ClientToRelay, ClientToRelay>::new(64);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 3, 0xff, 0xff, 0xff][..]);
        assert!(matches!(codec.decode(&mut buf), Err(FrameError::Decode(_))));
    }

    #[test]
    fn a_stream_ending_inside_a_frame_is_truncated() {
        let mut codec = DataCodec::new(16);
        let mut buf = BytesMut::from(&[0u8, 0, 0, 5, 1, 2][..]);
        assert!(matches!(
            codec.decode_eof(&mut buf),
            Err(FrameError::Truncated(6))
        ));
    }

    #[test]
    fn channel_tags_round_trip_and_unknown_tags_are_refused() {
        for channel in [
            Channel::Screen,
            Channel::Input,
            Channel::Chat,
            Channel::Keys,
        ] {
            assert_eq!(channel_from_tag(channel_tag(channel)).unwrap(), channel);
            assert_eq!(
                channel_from_tag(channel_tag(channel) | CONTINUATION).unwrap(),
                channel
            );
        }
        assert!(matches!(
            channel_from_tag(CONTINUATION),
            Err(FrameError::UnknownChannel(CONTINUATION))
        ));
        assert!(matches!(
            channel_from_tag(0),
            Err(FrameError::UnknownChannel(0))
        ));
        assert!(matches!(
            channel_from_tag(200),
            Err(FrameError::UnknownChannel(200))
        ));
    }
}
