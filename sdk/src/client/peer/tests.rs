//! The packet path's client side over real UDP on loopback: forwarded batches, the
//! peer connection through a forwarder and its migration, a man in the middle.

use super::*;

fn meta(addr: SocketAddr, len: usize, stride: usize) -> RecvMeta {
    RecvMeta {
        addr,
        len,
        stride,
        ..RecvMeta::default()
    }
}

fn batch(segments: &[(u64, &[u8])]) -> Vec<u8> {
    let mut batch = Vec::new();
    for (key, body) in segments {
        batch.extend_from_slice(&forwarded::header(*key));
        batch.extend_from_slice(body);
    }
    batch
}

#[test]
fn a_gro_batch_of_forwarded_datagrams_loses_its_headers_and_other_sessions() {
    let relay: SocketAddr = "192.0.2.1:443".parse().unwrap();
    // Stride 13 (9 + 4); another session's segment in the middle; the last one shorter.
    let mut data = batch(&[(7, b"aaaa"), (8, b"bbbb"), (7, b"cc")]);
    let mut m = meta(relay, data.len(), 13);
    assert!(strip_headers(&mut data, &mut m, 7));
    assert_eq!(&data[..m.len], b"aaaacc");
    assert_eq!(m.stride, 4);
    // One segment: stride is its length.
    let mut data = batch(&[(7, b"dddddd")]);
    let mut m = meta(relay, data.len(), data.len());
    assert!(strip_headers(&mut data, &mut m, 7));
    assert_eq!((&data[..m.len], m.stride), (&b"dddddd"[..], 6));
    // Nothing of this session.
    let mut data = batch(&[(8, b"aaaa"), (8, b"bbbb")]);
    let mut m = meta(relay, data.len(), 13);
    assert!(!strip_headers(&mut data, &mut m, 7));
}

async fn within<T>(
    f: impl std::future::Future<Output = T>,
) -> Result<T, tokio::time::error::Elapsed> {
    tokio::time::timeout(Duration::from_secs(20), f).await
}

/// A forwarder as small as the relay's rule: datagrams with `key` from one of the two
/// addresses go, unchanged, to the other.
async fn forward(socket: tokio::net::UdpSocket, key: u64, parties: [SocketAddr; 2]) {
    let mut buf = vec![0u8; 65_536];
    loop {
        let Ok((len, from)) = socket.recv_from(&mut buf).await else {
            return;
        };
        let to = match forwarded::parse(&buf[..len]) {
            Some((k, _)) if k == key && from == parties[0] => parties[1],
            Some((k, _)) if k == key && from == parties[1] => parties[0],
            _ => continue,
        };
        let _ = socket.send_to(&buf[..len], to).await;
    }
}

fn endpoint(
    socket: std::net::UdpSocket,
    routes: Arc<PeerRoutes>,
    server: Option<quinn::ServerConfig>,
) -> quinn::Endpoint {
    let runtime = quinn::default_runtime().unwrap();
    let socket = PeerSocket::wrap(socket, routes).unwrap();
    quinn::Endpoint::new_with_abstract_socket(
        super::super::endpoint_config(),
        server,
        socket,
        runtime,
    )
    .unwrap()
}

/// Sends `len` bytes on a fresh stream of `from` and reads them at `to`.
async fn carry(from: &quinn::Connection, to: &quinn::Connection, len: usize) {
    let data: Vec<u8> = (0..len).map(|i| (i % 251) as u8).collect();
    let mut send = from.open_uni().await.unwrap();
    let writing = async {
        send.write_all(&data).await.unwrap();
        send.finish().unwrap();
    };
    let reading = async {
        let mut recv = to.accept_uni().await.unwrap();
        recv.read_to_end(len + 1).await.unwrap()
    };
    let ((), got) = tokio::join!(writing, reading);
    assert!(got == data, "the stream arrived changed");
}

/// The client side of the packet path over real UDP on loopback: the peer connection
/// comes up through a forwarder, both ends derive the same code, data flows both ways;
/// a direct path makes the accepting side's connection migrate to the dialler's own
/// address, and giving it up migrates it back through the forwarder.
#[tokio::test]
async fn the_peer_connection_goes_through_the_forwarder_and_migrates_to_direct_and_back() {
    let forwarder = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let relay = forwarder.local_addr().unwrap();
    let (dial_socket, accept_socket) = (
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
        std::net::UdpSocket::bind("127.0.0.1:0").unwrap(),
    );
    let (dialler_addr, acceptor_addr) = (
        dial_socket.local_addr().unwrap(),
        accept_socket.local_addr().unwrap(),
    );
    const KEY: u64 = 0x5EED_0000_0000_0001;
    let forwarding = tokio::spawn(forward(forwarder, KEY, [dialler_addr, acceptor_addr]));

    let (dialler_id, acceptor_id) = (
        ServerIdentity::self_signed(vec![PEER_NAME.into()]).unwrap(),
        ServerIdentity::self_signed(vec![PEER_NAME.into()]).unwrap(),
    );
    let path = v1::PacketPath {
        routing_key: KEY,
        dial: false,
        peer_certificate_sha256: dialler_id.fingerprint().0.to_vec(),
        max_packet_size: 1472,
    };
    let transport = peer_transport(
        &crate::transport::ClientTransport::default(),
        Duration::from_millis(1),
        &path,
    );
    let mut server = quinn::ServerConfig::with_crypto(Arc::new(
        acceptor_id
            .direct_server_config(dialler_id.fingerprint())
            .unwrap(),
    ));
    server.transport_config(transport.clone());
    let dial_routes = Arc::new(PeerRoutes::new(relay, dialler_addr));
    let accept_routes = Arc::new(PeerRoutes::new(relay, acceptor_addr));
    dial_routes.set_key(Some(KEY));
    accept_routes.set_key(Some(KEY));
    let dialler = endpoint(dial_socket, dial_routes.clone(), None);
    let acceptor = endpoint(accept_socket, accept_routes.clone(), Some(server));

    let mut client = quinn::ClientConfig::new(Arc::new(
        dialler_id
            .direct_client_config(acceptor_id.fingerprint())
            .unwrap(),
    ));
    client.transport_config(transport);
    let virtual_peer = dial_routes.virtual_peer();
    let (dialled, accepted) = within(async {
        tokio::join!(
            async {
                dialler
                    .connect_with(client, virtual_peer, PEER_NAME)
                    .unwrap()
                    .await
                    .unwrap()
            },
            async { acceptor.accept().await.unwrap().await.unwrap() }
        )
    })
    .await
    .unwrap();
    assert_eq!(accepted.remote_address(), accept_routes.virtual_peer());
    let code = verification_code(&dialled, "session-1").unwrap();
    assert_eq!(code, verification_code(&accepted, "session-1").unwrap());
    assert_ne!(code, verification_code(&accepted, "session-2").unwrap());
    within(carry(&dialled, &accepted, 3 << 20)).await.unwrap();
    within(carry(&accepted, &dialled, 1 << 20)).await.unwrap();

    // Direct: the dialler sends to the acceptor's own address; the acceptor's connection
    // validates the new path and moves there.
    dial_routes.set_direct(Some(acceptor_addr));
    within(async {
        while accepted.remote_address() != dialler_addr {
            carry(&dialled, &accepted, 10_000).await;
        }
    })
    .await
    .unwrap();
    within(carry(&accepted, &dialled, 1 << 20)).await.unwrap();
    assert!(dial_routes.direct_silent_for().is_some());

    // Back through the forwarder.
    dial_routes.set_direct(None);
    within(async {
        while accepted.remote_address() != accept_routes.virtual_peer() {
            carry(&dialled, &accepted, 10_000).await;
        }
    })
    .await
    .unwrap();
    within(carry(&accepted, &dialled, 1 << 20)).await.unwrap();
    forwarding.abort();
}

/// One side's endpoint on a fresh loopback socket, routed through the forwarder at
/// `relay` under `key` (the accepting side gets `server`).
fn routed(
    relay: SocketAddr,
    key: u64,
    server: Option<quinn::ServerConfig>,
) -> (quinn::Endpoint, Arc<PeerRoutes>, SocketAddr) {
    let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let addr = socket.local_addr().unwrap();
    let routes = Arc::new(PeerRoutes::new(relay, addr));
    routes.set_key(Some(key));
    (endpoint(socket, routes.clone(), server), routes, addr)
}

/// What a relay that lies about both certificates and sits in the middle gets: two TLS
/// sessions, one with each party, each with its own exporter — so the two users' codes
/// differ, although each hop works and the middle reads everything.
#[tokio::test]
async fn a_man_in_the_middle_gives_the_two_sides_different_codes() {
    let id = || ServerIdentity::self_signed(vec![PEER_NAME.into()]).unwrap();
    let (sharer_id, helper_id, fake_helper, fake_sharer) = (id(), id(), id(), id());
    let path = v1::PacketPath {
        routing_key: 1,
        max_packet_size: 1472,
        ..Default::default()
    };
    let transport = peer_transport(
        &crate::transport::ClientTransport::default(),
        Duration::from_millis(1),
        &path,
    );
    let server = |me: &ServerIdentity, pin: &ServerIdentity| {
        let mut config = quinn::ServerConfig::with_crypto(Arc::new(
            me.direct_server_config(pin.fingerprint()).unwrap(),
        ));
        config.transport_config(transport.clone());
        config
    };
    let client = |me: &ServerIdentity, pin: &ServerIdentity| {
        let mut config = quinn::ClientConfig::new(Arc::new(
            me.direct_client_config(pin.fingerprint()).unwrap(),
        ));
        config.transport_config(transport.clone());
        config
    };
    // Sharer ⇄ forwarder 1 ⇄ the middle (as the helper) … the middle (as the sharer) ⇄
    // forwarder 2 ⇄ helper. Each party was told the middle's certificate.
    let (f1, f2) = (
        tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
        tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap(),
    );
    let (r1, r2) = (f1.local_addr().unwrap(), f2.local_addr().unwrap());
    let (sharer, sharer_routes, sharer_addr) = routed(r1, 1, None);
    let (middle_in, _, middle_in_addr) = routed(r1, 1, Some(server(&fake_helper, &sharer_id)));
    let (middle_out, middle_routes, middle_out_addr) = routed(r2, 2, None);
    let (helper, _, helper_addr) = routed(r2, 2, Some(server(&helper_id, &fake_sharer)));
    let forwarding = [
        tokio::spawn(forward(f1, 1, [sharer_addr, middle_in_addr])),
        tokio::spawn(forward(f2, 2, [middle_out_addr, helper_addr])),
    ];
    let (to_sharer, to_helper) = within(async {
        let accepting = async { middle_in.accept().await.unwrap().await.unwrap() };
        let dialling = async {
            sharer
                .connect_with(
                    client(&sharer_id, &fake_helper),
                    sharer_routes.virtual_peer(),
                    PEER_NAME,
                )
                .unwrap()
                .await
                .unwrap()
        };
        let (sharer_side, middle_side) = tokio::join!(dialling, accepting);
        let onward = async {
            middle_out
                .connect_with(
                    client(&fake_sharer, &helper_id),
                    middle_routes.virtual_peer(),
                    PEER_NAME,
                )
                .unwrap()
                .await
                .unwrap()
        };
        let accepted = async { helper.accept().await.unwrap().await.unwrap() };
        let (middle_onward, helper_side) = tokio::join!(onward, accepted);
        // Each hop carries data: the middle could read and pass everything on.
        carry(&sharer_side, &middle_side, 100_000).await;
        carry(&middle_onward, &helper_side, 100_000).await;
        (sharer_side, helper_side)
    })
    .await
    .unwrap();
    let (sharer_code, helper_code) = (
        verification_code(&to_sharer, "s").unwrap(),
        verification_code(&to_helper, "s").unwrap(),
    );
    assert_ne!(
        sharer_code, helper_code,
        "the middle must show in the codes"
    );
    for f in forwarding {
        f.abort();
    }
}

/// PROTOCOL.md §8a item 10's code vectors: exporter output in, the code shown out.
#[test]
fn the_published_code_vectors_are_what_the_code_computes() {
    let doc = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../PROTOCOL.md"));
    let start = doc
        .find("<!-- peer-code-test-vectors -->")
        .expect("PROTOCOL.md has the peer code's test vectors");
    let body = &doc[start..];
    let open = body.find("```text\n").expect("a fenced block follows") + "```text\n".len();
    let close = body[open..].find("```").expect("the block ends");
    let mut checked = 0;
    for line in body[open..open + close]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
    {
        let (exporter, code) = line.split_once(' ').expect("exporter, then code");
        let bytes: Vec<u8> = (0..8)
            .step_by(2)
            .map(|i| u8::from_str_radix(&exporter[i..i + 2], 16).unwrap())
            .collect();
        assert_eq!(
            code_from_exporter(bytes.try_into().unwrap()),
            code,
            "{line}"
        );
        checked += 1;
    }
    assert_eq!(checked, 3);
}
