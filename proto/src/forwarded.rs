//! The packet forwarder's datagram format (PROTOCOL.md §8a): what a client sends to the
//! relay's UDP port, beside its QUIC connection, to reach its peer.
//!
//! A forwarded datagram is the byte [`MARKER`], the session's 8-byte routing key (big
//! endian), then the peer connection's own UDP payload. The marker has QUIC's fixed bit
//! (0x40) clear, so no QUIC packet can be mistaken for it: neither the relay nor the clients
//! announce `grease_quic_bit` (RFC 9287), so every QUIC packet they exchange has the bit set.

/// First byte of every forwarded datagram.
pub const MARKER: u8 = 0x2A;

/// Bytes before the payload: the marker and the routing key.
pub const HEADER_LEN: usize = 9;

/// QUIC's fixed bit: set in every QUIC packet the relay accepts, clear in a forwarded one.
pub const QUIC_FIXED_BIT: u8 = 0x40;

/// Whether a datagram on the relay's port is meant for the forwarder rather than QUIC (its
/// fixed bit is clear). It may still be malformed: see [`parse`].
pub fn is_forwarded(datagram: &[u8]) -> bool {
    datagram.first().is_some_and(|b| b & QUIC_FIXED_BIT == 0)
}

/// The header for `routing_key`.
pub fn header(routing_key: u64) -> [u8; HEADER_LEN] {
    let mut header = [0u8; HEADER_LEN];
    header[0] = MARKER;
    header[1..].copy_from_slice(&routing_key.to_be_bytes());
    header
}

/// The routing key and payload of a forwarded datagram; `None` when it is not one (wrong
/// marker, shorter than the header, or nothing after it).
pub fn parse(datagram: &[u8]) -> Option<(u64, &[u8])> {
    if datagram.len() <= HEADER_LEN || datagram[0] != MARKER {
        return None;
    }
    let key = u64::from_be_bytes(datagram[1..HEADER_LEN].try_into().ok()?);
    Some((key, &datagram[HEADER_LEN..]))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(bytes: &[u8]) -> String {
        bytes.iter().map(|b| format!("{b:02x}")).collect()
    }

    /// PROTOCOL.md §8a's vector block, as published and as this code computes it.
    #[test]
    fn the_published_test_vector_is_what_the_code_computes() {
        let doc = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../PROTOCOL.md"));
        let start = doc
            .find("<!-- forwarded-test-vectors -->")
            .expect("PROTOCOL.md has the forwarded datagram's test vector");
        let body = &doc[start..];
        let open = body.find("```text\n").expect("a fenced block follows") + "```text\n".len();
        let close = body[open..].find("```").expect("the block ends");
        let published = &body[open..open + close];
        let key = 0x0700_a1b2_c3d4_e5f6u64;
        let payload = [0x40, 0x01, 0x02, 0x03, 0x04];
        let mut datagram = header(key).to_vec();
        datagram.extend_from_slice(&payload);
        assert_eq!(parse(&datagram), Some((key, &payload[..])));
        let computed = format!(
            "routing_key        {}\npayload            {}\nforwarded_datagram {}\n",
            hex(&key.to_be_bytes()),
            hex(&payload),
            hex(&datagram)
        );
        assert_eq!(
            published, computed,
            "PROTOCOL.md §8a's vector differs from the code"
        );
    }

    #[test]
    fn a_header_round_trips_and_quic_packets_are_not_forwarded() {
        let mut datagram = header(0x0102_0304_0506_0708).to_vec();
        datagram.extend_from_slice(b"inner");
        assert_eq!(datagram[..HEADER_LEN], [0x2A, 1, 2, 3, 4, 5, 6, 7, 8]);
        assert!(is_forwarded(&datagram));
        assert_eq!(
            parse(&datagram),
            Some((0x0102_0304_0506_0708, &b"inner"[..]))
        );
        // A QUIC short header (0b01xx_xxxx) and a long header (0b11xx_xxxx).
        assert!(!is_forwarded(&[0x41, 0, 0]));
        assert!(!is_forwarded(&[0xC3, 0, 0]));
        // No payload, another marker, too short.
        assert_eq!(parse(&header(7)), None);
        assert_eq!(parse(&[0x2B, 0, 0, 0, 0, 0, 0, 0, 7, 1]), None);
        assert_eq!(parse(&[0x2A, 1]), None);
        assert!(!is_forwarded(&[]));
    }
}
