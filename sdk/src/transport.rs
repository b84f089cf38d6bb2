//! QUIC transport settings of a client: towards the relay and on a direct path.
//!
//! quinn's defaults suit a general-purpose endpoint with generous (for the connection-level
//! receive window: unbounded) buffers; a client of the relay sets every window explicitly,
//! and accepts exactly the streams the protocol opens towards it.

use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, TransportConfig, VarInt};

/// Control stream plus nothing: clients get one bidirectional stream.
pub const BIDI_STREAMS: u32 = 1;
/// Screen, input and chat, plus headroom for a stream still closing.
pub const UNI_STREAMS: u32 = 6;

fn varint(value: u64) -> VarInt {
    VarInt::from_u64(value).unwrap_or(VarInt::MAX)
}

/// Client-side windows, idle timeout and keep-alive.
#[derive(Debug, Clone, Copy)]
pub struct ClientTransport {
    /// Per-stream receive window, bytes.
    pub stream_receive_window: u64,
    /// Per-connection receive window, bytes.
    pub connection_receive_window: u64,
    /// Per-connection send window, bytes.
    pub send_window: u64,
    /// Idle timeout.
    pub idle_timeout: Duration,
    /// Keep-alive interval.
    pub keep_alive: Duration,
}

impl Default for ClientTransport {
    fn default() -> ClientTransport {
        ClientTransport {
            stream_receive_window: 1024 * 1024,
            connection_receive_window: 4 * 1024 * 1024,
            send_window: 4 * 1024 * 1024,
            idle_timeout: Duration::from_secs(6),
            keep_alive: Duration::from_millis(1500),
        }
    }
}

/// Transport settings for a client's connection to the relay.
pub fn client(settings: &ClientTransport) -> Arc<TransportConfig> {
    // The relay opens one data stream per channel towards each client.
    Arc::new(client_base(settings))
}

/// A direct peer-to-peer connection's transport (either side): the client's windows and
/// timeouts, one bidirectional stream for the path check, one unidirectional stream per
/// channel each way, and loss recovery starting from `initial_rtt` (the relay's estimate of
/// the path) so that a handshake packet lost to a NAT not yet open is resent quickly.
pub fn direct(settings: &ClientTransport, initial_rtt: Duration) -> Arc<TransportConfig> {
    let mut t = client_base(settings);
    t.max_concurrent_bidi_streams(1u32.into())
        .initial_rtt(initial_rtt);
    Arc::new(t)
}

/// The packet path's peer connection (either side): the client's windows and timeouts,
/// one unidirectional stream per channel each way, loss recovery from `initial_rtt`, and
/// UDP payloads of at most `max_udp_payload` bytes (the relay's forwarder adds its header
/// and refuses larger datagrams; path MTU discovery stays under it on a direct path too).
pub fn peer(
    settings: &ClientTransport,
    initial_rtt: Duration,
    max_udp_payload: usize,
) -> Arc<TransportConfig> {
    let mut t = client_base(settings);
    let upper = u16::try_from(max_udp_payload)
        .unwrap_or(u16::MAX)
        .max(MIN_QUIC_PAYLOAD);
    let mut mtu = quinn::MtuDiscoveryConfig::default();
    mtu.upper_bound(upper);
    t.initial_rtt(initial_rtt.clamp(MIN_PEER_RTT, MAX_PEER_RTT))
        .initial_mtu(MIN_QUIC_PAYLOAD)
        .min_mtu(MIN_QUIC_PAYLOAD)
        .mtu_discovery_config(Some(mtu));
    Arc::new(t)
}

/// The smallest UDP payload QUIC allows a path (RFC 9000 §14).
const MIN_QUIC_PAYLOAD: u16 = 1200;
/// Bounds of the peer connection's starting RTT estimate: never zero (a loopback relay),
/// never over quinn's default.
const MIN_PEER_RTT: Duration = Duration::from_millis(10);
const MAX_PEER_RTT: Duration = Duration::from_millis(333);

/// A client's windows, timeouts and unidirectional streams; no bidirectional streams.
fn client_base(settings: &ClientTransport) -> TransportConfig {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(0u32.into())
        .max_concurrent_uni_streams(UNI_STREAMS.into())
        .stream_receive_window(varint(settings.stream_receive_window))
        .receive_window(varint(settings.connection_receive_window))
        .send_window(settings.send_window)
        .max_idle_timeout(IdleTimeout::try_from(settings.idle_timeout).ok())
        .keep_alive_interval(Some(settings.keep_alive));
    t
}
