//! The packet forwarder's decisions, pure (PROTOCOL.md §8a): whether a session takes the
//! packet path, the per-direction byte budget of a route, which party a datagram comes
//! from, and the reasons a datagram is dropped. The shell (`server/forwarder.rs`) reads
//! the clock and the sockets and applies these.

use std::net::SocketAddr;
use std::time::Instant;

/// Why a forwarded datagram was not sent on (the `reason` label of
/// `relay_forwarder_drops_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DropReason {
    /// QUIC's fixed bit is clear but the datagram is no forwarder header and payload.
    Malformed,
    /// No route has this routing key (never assigned, or the session ended).
    UnknownKey,
    /// Larger than `[forwarder] max_packet_bytes`.
    TooLarge,
    /// Not from either party's relay-connection address, and neither party's relay
    /// connection has moved there.
    UnboundAddress,
    /// Over the route's byte budget in this direction.
    RateLimited,
    /// The socket would block or refused the send.
    SendFailed,
}

impl DropReason {
    /// Every reason, in label order.
    pub const ALL: [DropReason; 6] = [
        DropReason::Malformed,
        DropReason::UnknownKey,
        DropReason::TooLarge,
        DropReason::UnboundAddress,
        DropReason::RateLimited,
        DropReason::SendFailed,
    ];

    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownKey => "unknown_key",
            DropReason::TooLarge => "too_large",
            DropReason::UnboundAddress => "unbound_address",
            DropReason::RateLimited => "rate_limited",
            DropReason::SendFailed => "send_failed",
        }
    }

    /// Index into [`DropReason::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }
}

/// Why a session whose parties could use the packet path takes the stream path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StreamPathReason {
    /// At least one party did not announce `Hello.packet_path` (a WebTransport helper never
    /// does).
    NotAnnounced,
    /// `[forwarder] enabled = false`.
    Disabled,
    /// The routing table holds `[forwarder] max_routes` routes.
    TableFull,
}

impl StreamPathReason {
    /// The metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            StreamPathReason::NotAnnounced => "not_announced",
            StreamPathReason::Disabled => "disabled",
            StreamPathReason::TableFull => "table_full",
        }
    }
}

/// Whether a session takes the packet path: both parties announced it (with their peer
/// certificate hash), the forwarder is on, and the table has room.
pub fn packet_path(
    helper_announced: bool,
    sharer_announced: bool,
    enabled: bool,
    routes: usize,
    max_routes: usize,
) -> Result<(), StreamPathReason> {
    if !(helper_announced && sharer_announced) {
        Err(StreamPathReason::NotAnnounced)
    } else if !enabled {
        Err(StreamPathReason::Disabled)
    } else if routes >= max_routes {
        Err(StreamPathReason::TableFull)
    } else {
        Ok(())
    }
}

/// Which of a route's two parties (0: helper, 1: sharer) a datagram from `from` comes
/// from, by their bound addresses.
pub fn side_of(from: SocketAddr, bound: [SocketAddr; 2]) -> Option<usize> {
    bound.iter().position(|b| *b == from)
}

/// A byte budget: `bytes_per_sec` on average, up to `burst` at once. Integer arithmetic in
/// nanoseconds, so a datagram costs no floating point.
#[derive(Debug, Clone, Copy)]
pub struct ByteBucket {
    bytes_per_sec: u64,
    burst: u64,
    tokens: u64,
    at: Instant,
}

impl ByteBucket {
    /// A full bucket at `now`.
    pub fn new(bytes_per_sec: u64, burst: u64, now: Instant) -> ByteBucket {
        ByteBucket {
            bytes_per_sec,
            burst,
            tokens: burst,
            at: now,
        }
    }

    /// Takes `len` bytes if the budget has them at `now`.
    pub fn take(&mut self, len: u64, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.at);
        let earned = (u128::from(self.bytes_per_sec) * elapsed.as_nanos() / 1_000_000_000)
            .min(u128::from(self.burst)) as u64;
        if earned > 0 {
            self.tokens = (self.tokens + earned).min(self.burst);
            // Only the time the earned bytes stand for is used up, so slow trickles of
            // time (a datagram every few nanoseconds) still add up.
            self.at = if self.tokens == self.burst {
                now
            } else {
                self.at
                    + std::time::Duration::from_nanos(
                        (u128::from(earned) * 1_000_000_000 / u128::from(self.bytes_per_sec.max(1)))
                            as u64,
                    )
            };
        }
        if self.tokens >= len {
            self.tokens -= len;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn a_bucket_allows_its_burst_then_its_rate() {
        let t0 = Instant::now();
        let mut bucket = ByteBucket::new(1000, 1500, t0);
        assert!(bucket.take(1500, t0));
        assert!(!bucket.take(1, t0));
        // Half a second earns 500 bytes, not more.
        let t1 = t0 + Duration::from_millis(500);
        assert!(!bucket.take(501, t1));
        assert!(bucket.take(500, t1));
        assert!(!bucket.take(1, t1));
        // A long quiet spell refills to the burst only.
        let t2 = t1 + Duration::from_secs(60);
        assert!(bucket.take(1500, t2));
        assert!(!bucket.take(1, t2));
    }

    #[test]
    fn a_bucket_counts_time_in_small_steps() {
        let t0 = Instant::now();
        let mut bucket = ByteBucket::new(1000, 10, t0);
        assert!(bucket.take(10, t0));
        // 1000 steps of 1 ms each earn 1 byte each: all of them count.
        let mut taken = 0;
        for step in 1..=1000 {
            if bucket.take(1, t0 + Duration::from_millis(step)) {
                taken += 1;
            }
        }
        assert_eq!(taken, 1000);
    }

    #[test]
    fn the_packet_path_needs_both_announcements_the_switch_and_room() {
        assert_eq!(packet_path(true, true, true, 0, 1), Ok(()));
        assert_eq!(
            packet_path(true, false, true, 0, 1),
            Err(StreamPathReason::NotAnnounced)
        );
        assert_eq!(
            packet_path(false, true, true, 0, 1),
            Err(StreamPathReason::NotAnnounced)
        );
        assert_eq!(
            packet_path(true, true, false, 0, 1),
            Err(StreamPathReason::Disabled)
        );
        assert_eq!(
            packet_path(true, true, true, 1, 1),
            Err(StreamPathReason::TableFull)
        );
    }

    #[test]
    fn a_datagram_belongs_to_the_party_bound_to_its_address() {
        let helper: SocketAddr = "10.0.0.1:5000".parse().unwrap();
        let sharer: SocketAddr = "10.0.0.2:6000".parse().unwrap();
        assert_eq!(side_of(helper, [helper, sharer]), Some(0));
        assert_eq!(side_of(sharer, [helper, sharer]), Some(1));
        assert_eq!(
            side_of("10.0.0.1:5001".parse().unwrap(), [helper, sharer]),
            None
        );
    }

    #[test]
    fn drop_reasons_index_their_labels() {
        for (i, reason) in DropReason::ALL.iter().enumerate() {
            assert_eq!(reason.index(), i);
        }
    }
}
