//! The client's QUIC endpoint and its connection to the relay: settings (no fixed-bit
//! greasing), trust, and the packet path's routed socket.

use std::sync::Arc;

use super::{ClientError, ClientOptions, peer};

/// Opens a bare QUIC connection to the relay (no `Hello`): for tools and tests that
/// speak the protocol themselves.
pub async fn connect_quic(
    options: &ClientOptions,
) -> Result<(quinn::Endpoint, quinn::Connection), ClientError> {
    let socket = std::net::UdpSocket::bind(options.bind).map_err(ClientError::Socket)?;
    connect_quic_on(options, socket).await
}

/// The QUIC client configuration for `options`: its trust and transport settings.
pub(super) fn quic_config(options: &ClientOptions) -> Result<quinn::ClientConfig, ClientError> {
    let mut config = quinn::ClientConfig::new(Arc::new(options.trust.quic_client_config()?));
    config.transport_config(crate::transport::client(&options.transport));
    Ok(config)
}

/// Like [`connect_quic`], on a UDP socket the caller already has.
pub async fn connect_quic_on(
    options: &ClientOptions,
    socket: std::net::UdpSocket,
) -> Result<(quinn::Endpoint, quinn::Connection), ClientError> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| ClientError::Socket(std::io::Error::other("no async runtime")))?;
    let endpoint = quinn::Endpoint::new(endpoint_config(), None, socket, runtime)
        .map_err(ClientError::Socket)?;
    let connection = endpoint
        .connect_with(quic_config(options)?, options.relay, &options.server_name)?
        .await
        .map_err(ClientError::from_handshake)?;
    Ok((endpoint, connection))
}

/// A client endpoint's settings: quinn's, except that it never announces `grease_quic_bit`
/// (RFC 9287), so every QUIC packet to and from it has the fixed bit set and a forwarded
/// datagram (fixed bit clear, PROTOCOL.md §8a) cannot be mistaken for one.
pub fn endpoint_config() -> quinn::EndpointConfig {
    let mut config = quinn::EndpointConfig::default();
    config.grease_quic_bit(false);
    config
}

/// Like [`connect_quic_on`], with the endpoint on a [`peer::PeerSocket`] so that the packet
/// path can route the peer connection through the relay (and then direct).
pub(super) async fn connect_quic_routed(
    options: &ClientOptions,
    socket: std::net::UdpSocket,
) -> Result<(quinn::Endpoint, quinn::Connection, Arc<peer::PeerRoutes>), ClientError> {
    let runtime = quinn::default_runtime()
        .ok_or_else(|| ClientError::Socket(std::io::Error::other("no async runtime")))?;
    let local = socket.local_addr().map_err(ClientError::Socket)?;
    let routes = Arc::new(peer::PeerRoutes::new(options.relay, local));
    let socket = peer::PeerSocket::wrap(socket, routes.clone()).map_err(ClientError::Socket)?;
    let endpoint =
        quinn::Endpoint::new_with_abstract_socket(endpoint_config(), None, socket, runtime)
            .map_err(ClientError::Socket)?;
    let connection = endpoint
        .connect_with(quic_config(options)?, options.relay, &options.server_name)?
        .await
        .map_err(ClientError::from_handshake)?;
    // The relay's address as the socket reports it (an IPv4 relay on a dual-stack socket
    // comes back IPv4-mapped): what forwarded datagrams are recognised by.
    routes.set_relay(connection.remote_address());
    Ok((endpoint, connection, routes))
}
