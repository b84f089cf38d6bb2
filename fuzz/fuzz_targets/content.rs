//! Content profile v1 (PROTOCOL.md §8.8): arbitrary frames through a receiver's
//! `ContentDecoder` on each content channel, mirrored by a sender's `ContentEncoder`.
//!
//! Input: `[channel selector, frames...]`, each frame a 2-byte big-endian length and that
//! many bytes (a short tail is one last frame).
//!
//! Invariants:
//! - decoding never panics, whatever the bytes;
//! - a refused frame leaves the decoder exactly as it was (the stream goes on);
//! - the encoder and the decoder apply the same rules: an encoder in the same state
//!   accepts every item the decoder accepted (and every start), and its bytes decode, in
//!   the decoder's state before that frame, to the same item.
#![no_main]

use libfuzzer_sys::fuzz_target;
use remote_help_sdk::client::content::{ContentDecoder, ContentEncoder};
use remote_help_sdk::session::Channel;

fuzz_target!(|data: &[u8]| {
    let Some((&selector, mut rest)) = data.split_first() else {
        return;
    };
    let channel = match selector % 3 {
        0 => Channel::Screen,
        1 => Channel::Input,
        _ => Channel::Chat,
    };
    let mut decoder = ContentDecoder::new(channel);
    let mut encoder = ContentEncoder::new(channel);
    while !rest.is_empty() {
        let (frame, tail) = if rest.len() >= 2 {
            let len = usize::from(u16::from_be_bytes([rest[0], rest[1]])).min(rest.len() - 2);
            rest[2..].split_at(len)
        } else {
            (rest, &[][..])
        };
        rest = tail;
        let before = decoder.clone();
        match decoder.decode(frame) {
            Err(_) => assert_eq!(decoder, before, "a refused frame changed the decoder"),
            Ok(None) => {
                encoder
                    .start("fuzz")
                    .expect("the encoder refused a start the decoder took");
            }
            Ok(Some(item)) => {
                let bytes = encoder
                    .encode(&item)
                    .unwrap_or_else(|e| panic!("the encoder refused {item:?}: {e}"));
                let mut again = before;
                assert_eq!(again.decode(&bytes), Ok(Some(item)));
                assert_eq!(again, decoder, "re-encoding leads to another state");
            }
        }
    }
});
