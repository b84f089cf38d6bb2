//! `[forwarder]`: the packet forwarder's settings (PROTOCOL.md §8a), as written and as
//! checked.

use serde::Deserialize;

/// `[forwarder]` as written.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawForwarder {
    /// Sessions between two clients that announce it take the packet path (default true).
    pub enabled: Option<bool>,
    /// Largest forwarded datagram, header included, bytes (default 1472).
    pub max_packet_bytes: Option<u64>,
    /// Each direction of a session, bytes per second on average (default 250000000).
    pub session_bytes_per_sec: Option<u64>,
    /// Each direction of a session, bytes at once after a quiet spell (default: a tenth of
    /// a second at `session_bytes_per_sec`, at least 64 KiB).
    pub burst_bytes: Option<u64>,
    /// Most sessions on the packet path at once (default 100000); beyond it sessions take
    /// the stream path.
    pub max_routes: Option<u64>,
}

/// The packet forwarder's settings (`[forwarder]`, PROTOCOL.md §8a). Only a restart
/// applies them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ForwarderConfig {
    /// Whether sessions between two announcing clients take the packet path.
    pub enabled: bool,
    /// Largest forwarded datagram accepted, header included, bytes; told to clients as
    /// `PacketPath.max_packet_size`.
    pub max_packet_bytes: usize,
    /// Each direction of a session: sustained bytes per second.
    pub session_bytes_per_sec: u64,
    /// Each direction of a session: bytes at once.
    pub burst_bytes: u64,
    /// Most routes (packet-path sessions) at once.
    pub max_routes: usize,
}

impl Default for ForwarderConfig {
    fn default() -> ForwarderConfig {
        ForwarderConfig {
            enabled: true,
            max_packet_bytes: DEFAULT_MAX_PACKET_BYTES,
            session_bytes_per_sec: DEFAULT_SESSION_BYTES_PER_SEC,
            burst_bytes: default_burst(DEFAULT_SESSION_BYTES_PER_SEC),
            max_routes: DEFAULT_MAX_ROUTES,
        }
    }
}

/// Default `[forwarder] max_packet_bytes`: a 1500-byte IPv4 MTU less its IP and UDP headers.
pub const DEFAULT_MAX_PACKET_BYTES: usize = 1472;
/// Default `[forwarder] session_bytes_per_sec`: 2 Gbit/s per direction.
pub const DEFAULT_SESSION_BYTES_PER_SEC: u64 = 250_000_000;
/// Default `[forwarder] max_routes`.
pub const DEFAULT_MAX_ROUTES: usize = 100_000;

/// The default burst for a rate: a tenth of a second of it, at least 64 KiB.
fn default_burst(bytes_per_sec: u64) -> u64 {
    (bytes_per_sec / 10).max(64 << 10)
}

/// `[forwarder]`: each number within its range; the burst at least one largest datagram.
pub(super) fn forwarder_settings(
    raw: &RawForwarder,
    problem: &mut dyn FnMut(&str, String),
) -> ForwarderConfig {
    let defaults = ForwarderConfig::default();
    let mut ranged = |name: &str, value: Option<u64>, range: std::ops::RangeInclusive<u64>| {
        let value = value?;
        if range.contains(&value) {
            Some(value)
        } else {
            problem(
                &format!("forwarder.{name}"),
                format!(
                    "{value} is out of range; {} to {}",
                    range.start(),
                    range.end()
                ),
            );
            None
        }
    };
    // 1200: the smallest datagram QUIC must be able to send, plus the 9-byte header.
    let max_packet_bytes = ranged("max_packet_bytes", raw.max_packet_bytes, 1209..=65_527)
        .map_or(defaults.max_packet_bytes, |v| v as usize);
    let session_bytes_per_sec = ranged(
        "session_bytes_per_sec",
        raw.session_bytes_per_sec,
        1..=100_000_000_000,
    )
    .unwrap_or(defaults.session_bytes_per_sec);
    let burst_bytes = ranged("burst_bytes", raw.burst_bytes, 1..=100_000_000_000)
        .unwrap_or_else(|| default_burst(session_bytes_per_sec));
    let max_routes = ranged("max_routes", raw.max_routes, 0..=10_000_000)
        .map_or(defaults.max_routes, |v| v as usize);
    if raw.burst_bytes.is_some() && burst_bytes < max_packet_bytes as u64 {
        problem(
            "forwarder.burst_bytes",
            format!(
                "{burst_bytes} is below forwarder.max_packet_bytes ({max_packet_bytes}): no \
                 datagram of the largest size could ever pass"
            ),
        );
    }
    ForwarderConfig {
        enabled: raw.enabled.unwrap_or(defaults.enabled),
        max_packet_bytes,
        session_bytes_per_sec,
        burst_bytes,
        max_routes,
    }
}
