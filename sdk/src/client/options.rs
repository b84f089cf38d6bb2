//! What a client is told before it connects: the relay, trust, token, role, transport,
//! paths and protection.

use std::net::SocketAddr;

use crate::session::Role;
use crate::tls::RelayTrust;
use crate::transport::ClientTransport;

/// Everything needed to reach and authenticate with a relay.
#[derive(Debug, Clone)]
pub struct ClientOptions {
    /// The relay's UDP address.
    pub relay: SocketAddr,
    /// The name the relay's certificate must carry (ignored when pinning).
    pub server_name: String,
    /// How the relay is verified.
    pub trust: RelayTrust,
    /// The tenant-issued token.
    pub token: String,
    /// Helper or sharer.
    pub role: Role,
    /// Free text for the relay's logs.
    pub client_name: String,
    /// Local address to bind (port 0 for any).
    pub bind: SocketAddr,
    /// Windows and timeouts.
    pub transport: ClientTransport,
    /// Offer the relay candidates and take a direct peer-to-peer path when the peer does
    /// too and the tenant allows it (off by default). Needs the client's own socket
    /// ([`Client::connect`](super::Client::connect) or [`Client::connect_on`](super::Client::connect_on)), not a shared endpoint.
    pub direct_path: bool,
    /// Carry sessions on the packet path (PROTOCOL.md §8a) when the peer and the relay can:
    /// the session's data as this client's own QUIC connection to the peer, through the
    /// relay's forwarder and then direct, protected by that connection's TLS (on by
    /// default). Off: the stream path, where the relay forwards the channels' streams and
    /// the SDK seals them ([`secure`](super::secure)). Needs the client's own socket, like `direct_path`.
    pub packet_path: bool,
    /// End-to-end protection: on by default ([`Protection::default`]).
    pub protection: Protection,
}

/// Whether this client protects session content end to end (PROTOCOL.md §8.7).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Protection {
    /// Announce these suites, most preferred first, and seal every channel
    /// ([`secure::establish`](super::secure::establish)). The default announces every suite this SDK supports.
    EndToEnd(Vec<crate::e2e::Suite>),
    /// Announce no suite: the peer and the relay see content in the clear. For
    /// measurements only (what protection costs); tenants that require protection (the
    /// default) refuse such a client with `E2E_REQUIRED`.
    PlaintextForMeasurement,
}

impl Default for Protection {
    fn default() -> Protection {
        Protection::EndToEnd(crate::e2e::Suite::ALL.to_vec())
    }
}

impl Protection {
    /// The suite ids this announces in `Hello.e2e_suites`.
    pub fn announced(&self) -> Vec<u32> {
        match self {
            Protection::EndToEnd(suites) => suites.iter().map(|s| s.id()).collect(),
            Protection::PlaintextForMeasurement => Vec::new(),
        }
    }
}

impl ClientOptions {
    /// Options with defaults for everything but the essentials.
    pub fn new(relay: SocketAddr, trust: RelayTrust, token: String, role: Role) -> ClientOptions {
        let bind = if relay.is_ipv6() {
            SocketAddr::from(([0u16; 8], 0))
        } else {
            SocketAddr::from(([0u8; 4], 0))
        };
        ClientOptions {
            relay,
            server_name: "localhost".into(),
            trust,
            token,
            role,
            client_name: format!("remote-help-sdk/{}", env!("CARGO_PKG_VERSION")),
            bind,
            transport: ClientTransport::default(),
            direct_path: false,
            packet_path: true,
            protection: Protection::default(),
        }
    }

    /// The same options without end-to-end protection: for measuring what protection
    /// costs, against tenants that do not require it.
    pub fn insecure_plaintext_for_measurement(mut self) -> ClientOptions {
        self.protection = Protection::PlaintextForMeasurement;
        self
    }
}
