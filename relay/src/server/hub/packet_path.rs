//! The hub's part in the packet path (PROTOCOL.md §8a): whether a starting session takes
//! it, its route in the forwarder, what each party is told; and the measure of the hub
//! lock's contention.

use std::sync::Arc;

use remote_help_proto::v1;
use tracing::{debug, warn};

use super::super::forward::ChannelCounters;
use super::{ConnLink, Hub, PendingStart};

/// The two parties' `PacketPath`s (helper's, sharer's) for a session routed under
/// `routing_key`: the sharer dials (its socket picks the path, PROTOCOL.md §8a), the helper
/// accepts; each pins the other's certificate.
pub(super) fn packet_paths(
    start: &PendingStart,
    routing_key: Option<u64>,
    max_packet_size: usize,
) -> Option<(v1::PacketPath, v1::PacketPath)> {
    let routing_key = routing_key?;
    let (helper_hash, sharer_hash) = (
        start.helper.packet_path.as_deref()?,
        start.sharer.packet_path.as_deref()?,
    );
    let max_packet_size = u32::try_from(max_packet_size).unwrap_or(u32::MAX);
    let path = |dial: bool, peer_hash: &[u8; 32]| v1::PacketPath {
        routing_key,
        dial,
        peer_certificate_sha256: peer_hash.to_vec(),
        max_packet_size,
    };
    Some((path(false, sharer_hash), path(true, helper_hash)))
}

/// The hub lock's contention: `relay_hub_lock_acquisitions_total`,
/// `relay_hub_lock_contended_total` and `relay_hub_lock_wait_seconds` (only the waits of
/// contended acquisitions; an uncontended one costs a `try_lock`). Handles made once.
pub(super) struct LockMetrics {
    pub(super) acquisitions: metrics::Counter,
    pub(super) contended: metrics::Counter,
    pub(super) wait_seconds: metrics::Histogram,
}

impl LockMetrics {
    pub(super) fn new() -> LockMetrics {
        LockMetrics {
            acquisitions: metrics::counter!("relay_hub_lock_acquisitions_total"),
            contended: metrics::counter!("relay_hub_lock_contended_total"),
            wait_seconds: metrics::histogram!("relay_hub_lock_wait_seconds"),
        }
    }
}

impl Hub {
    /// Adds the session's packet-path route when it takes the packet path (both parties
    /// announced it, the forwarder is on, the table has room); its routing key.
    pub(super) fn route(
        &self,
        start: &PendingStart,
        helper_side: &Arc<ChannelCounters>,
        sharer_side: &Arc<ChannelCounters>,
    ) -> Option<u64> {
        let native = |link: &ConnLink| match (&link.connection, &link.packet_path) {
            (crate::server::party::Party::Native(connection), Some(_)) => Some(connection.clone()),
            _ => None,
        };
        let (helper, sharer) = (native(&start.helper), native(&start.sharer));
        let settings = self.forwarder.settings();
        let decided = crate::core::forwarding::packet_path(
            helper.is_some(),
            sharer.is_some(),
            settings.enabled,
            self.forwarder.routes(),
            settings.max_routes,
        )
        .and_then(|()| match (helper, sharer) {
            (Some(helper), Some(sharer)) => self.forwarder.insert(
                start.session.clone(),
                start.helper.principal.tenant.as_str(),
                crate::server::forwarder::RouteParty {
                    connection: helper,
                    counters: helper_side.clone(),
                },
                crate::server::forwarder::RouteParty {
                    connection: sharer,
                    counters: sharer_side.clone(),
                },
            ),
            // `packet_path` already said so; kept apart so no case is left unhandled.
            _ => Err(crate::core::forwarding::StreamPathReason::NotAnnounced),
        });
        match decided {
            Ok(key) => {
                metrics::counter!("relay_sessions_data_path_total", "path" => "packet")
                    .increment(1);
                debug!(session = %start.session, "the session takes the packet path");
                Some(key)
            }
            Err(reason) => {
                metrics::counter!("relay_sessions_data_path_total", "path" => "stream", "reason" => reason.as_str())
                    .increment(1);
                if reason == crate::core::forwarding::StreamPathReason::TableFull {
                    warn!(
                        session = %start.session,
                        max_routes = settings.max_routes,
                        "the packet forwarder's routing table is full (forwarder.max_routes); the session takes the stream path"
                    );
                }
                None
            }
        }
    }
}
