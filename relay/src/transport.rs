//! QUIC transport settings for both ends, derived from the configured limits.
//!
//! quinn's defaults suit a general-purpose endpoint with generous (for the connection-level
//! receive window: unbounded) buffers. A relay must bound what one peer can make it hold,
//! so every window is set explicitly here; `Limits::session_memory_bound` adds them up.

use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, TransportConfig, VarInt};

use crate::config::Limits;
use crate::core::cluster::{CID_LEN, NodeId, node_of_cid, routable_cid};

/// Control stream plus nothing: clients get one bidirectional stream.
pub const BIDI_STREAMS: u32 = 1;
/// Screen, input and chat, plus headroom for a stream still closing.
pub const UNI_STREAMS: u32 = 6;

fn varint(value: u64) -> VarInt {
    VarInt::from_u64(value).unwrap_or(VarInt::MAX)
}

/// Transport settings for the relay's side of every connection.
pub fn server(
    limits: &Limits,
    idle_timeout: Duration,
    keep_alive: Duration,
) -> Arc<TransportConfig> {
    let mut t = TransportConfig::default();
    t.max_concurrent_bidi_streams(BIDI_STREAMS.into())
        .max_concurrent_uni_streams(UNI_STREAMS.into())
        .stream_receive_window(varint(limits.stream_receive_window))
        .receive_window(varint(limits.connection_receive_window))
        .send_window(limits.send_window)
        .datagram_receive_buffer_size(Some(limits.datagram_receive_buffer))
        .datagram_send_buffer_size(limits.datagram_send_buffer)
        .max_idle_timeout(IdleTimeout::try_from(idle_timeout).ok())
        .keep_alive_interval(Some(keep_alive));
    Arc::new(t)
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

/// A UDP socket bound to `addr` with kernel buffers of `buffer_bytes` each way (or as much
/// as the kernel allows: Linux caps them at `net.core.rmem_max` / `wmem_max`). Returns the
/// socket and the receive buffer actually granted.
pub fn udp_socket(
    addr: std::net::SocketAddr,
    buffer_bytes: usize,
) -> std::io::Result<(std::net::UdpSocket, usize)> {
    use socket2::{Domain, Protocol, Socket, Type};
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    if addr.is_ipv6() {
        // Dual-stack where the address is the unspecified v6 one, as std does not.
        let _ = socket.set_only_v6(false);
    }
    // Best effort: a smaller buffer than asked is not an error, only slower under bursts.
    let _ = socket.set_recv_buffer_size(buffer_bytes);
    let _ = socket.set_send_buffer_size(buffer_bytes);
    socket.bind(&addr.into())?;
    let granted = socket.recv_buffer_size().unwrap_or(0);
    Ok((socket.into(), granted))
}

/// quinn's connection id source for the relay: every id routes to `node` (QUIC-LB
/// format, [`crate::core::cluster`]).
#[derive(Debug, Clone, Copy)]
pub struct RoutableCids {
    node: NodeId,
}

impl RoutableCids {
    /// Ids for `node`.
    pub fn new(node: NodeId) -> RoutableCids {
        RoutableCids { node }
    }
}

impl quinn_proto::ConnectionIdGenerator for RoutableCids {
    fn generate_cid(&mut self) -> quinn_proto::ConnectionId {
        quinn_proto::ConnectionId::new(&routable_cid(self.node, &mut rand::rng()))
    }

    fn validate(&self, cid: &quinn_proto::ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        // Ids of other nodes (or other formats) cannot be ours: quinn may then skip the
        // lookup, and a stateless reset is never sent for another node's connection.
        match node_of_cid(cid) {
            Some(node) if node == self.node => Ok(()),
            _ => Err(quinn_proto::InvalidCid),
        }
    }

    fn cid_len(&self) -> usize {
        CID_LEN
    }

    fn cid_lifetime(&self) -> Option<Duration> {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn_proto::ConnectionIdGenerator;

    #[test]
    fn the_quinn_generator_only_accepts_its_own_node() {
        let mut mine = RoutableCids::new(NodeId::new(2).unwrap());
        let cid = mine.generate_cid();
        assert_eq!(cid.len(), CID_LEN);
        assert!(mine.validate(&cid).is_ok());
        let theirs = RoutableCids::new(NodeId::new(3).unwrap()).generate_cid();
        assert!(mine.validate(&theirs).is_err());
    }
}
