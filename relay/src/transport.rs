//! QUIC transport settings of the relay, derived from the configured limits.
//!
//! quinn's defaults suit a general-purpose endpoint with generous (for the connection-level
//! receive window: unbounded) buffers. A relay must bound what one peer can make it hold,
//! so every window is set explicitly here; `Limits::session_memory_bound` adds them up.

use std::sync::Arc;
use std::time::Duration;

use quinn::{IdleTimeout, TransportConfig, VarInt};

use crate::config::Limits;
use crate::core::cluster::{
    CID_LEN, MAX_SOCKETS, NodeId, STEERING_OCTET, SocketSteering, node_of_cid, routable_cid,
};

/// The client's side (its windows, the stream counts both ends agree on) lives in the
/// client SDK; re-exported so `transport::ClientTransport` names the same type everywhere.
pub use remote_help_sdk::transport::{BIDI_STREAMS, ClientTransport, UNI_STREAMS, client, direct};

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

/// quinn's connection id source for the relay: every id routes to `node` (QUIC-LB
/// format, [`crate::core::cluster`]) and, within the node, to one UDP socket.
#[derive(Debug, Clone, Copy)]
pub struct RoutableCids {
    node: NodeId,
    socket: SocketSteering,
}

impl RoutableCids {
    /// Ids for `node`, steered to `socket`.
    pub fn new(node: NodeId, socket: SocketSteering) -> RoutableCids {
        RoutableCids { node, socket }
    }
}

impl quinn_proto::ConnectionIdGenerator for RoutableCids {
    fn generate_cid(&mut self) -> quinn_proto::ConnectionId {
        quinn_proto::ConnectionId::new(&routable_cid(self.node, self.socket, &mut rand::rng()))
    }

    fn validate(&self, cid: &quinn_proto::ConnectionId) -> Result<(), quinn_proto::InvalidCid> {
        // Ids of other nodes (or other formats) cannot be ours: quinn may then skip the
        // lookup, and a stateless reset is never sent for another node's connection. Nor
        // for another socket's: a packet the kernel misdelivered is dropped, not answered
        // with a reset that would kill a live connection.
        match node_of_cid(cid) {
            Some(node) if node == self.node && self.socket.owns(cid) => Ok(()),
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

/// The relay's UDP sockets: one, or several bound to the same address with `SO_REUSEPORT`
/// among which the kernel steers every packet by its destination connection id.
#[derive(Debug)]
pub struct SocketGroup {
    /// The sockets; socket `i` must serve the connection ids of `SocketSteering::new(i, n)`.
    pub sockets: Vec<std::net::UdpSocket>,
    /// Receive buffer the kernel granted each socket, bytes.
    pub granted_buffer: usize,
    /// Why the group has fewer sockets than asked, if it has.
    pub fallback: Option<String>,
}

/// `count` UDP sockets (1..=[`MAX_SOCKETS`]) bound to `addr` (the first one's port where
/// `addr` has port 0), each with kernel buffers of `buffer_bytes` each way. With more than
/// one, they share the address with `SO_REUSEPORT` and a classic-BPF program that steers
/// each packet to socket `dcid[STEERING_OCTET] % count` ([`SocketSteering`]). Where the
/// kernel cannot do that (not Linux, or the program is refused), the group falls back to
/// one socket and says why: spreading by the kernel's default 4-tuple hash would deliver a
/// migrated connection's packets to an endpoint that does not know it.
pub fn udp_sockets(
    addr: std::net::SocketAddr,
    buffer_bytes: usize,
    count: usize,
) -> std::io::Result<SocketGroup> {
    let count = count.clamp(1, MAX_SOCKETS);
    if count == 1 {
        return single_socket(addr, buffer_bytes, None);
    }
    // SO_REUSEPORT would let the group join sockets another process of the same user holds
    // (a second relay started by mistake would bind silently and share the traffic), so
    // first claim the address the ordinary way: this fails as a single socket's bind does.
    let claimed = std::net::UdpSocket::bind(addr)?.local_addr()?;
    let (first, granted) = bind_udp_socket(claimed, buffer_bytes, true)?;
    if let Err(e) = steer_by_connection_id(&first, count) {
        drop(first);
        let why = format!("connection-id steering unavailable: {e}");
        return single_socket(claimed, buffer_bytes, Some(why));
    }
    let mut sockets = vec![first];
    for _ in 1..count {
        sockets.push(bind_udp_socket(claimed, buffer_bytes, true)?.0);
    }
    // A kernel (or sandbox) could accept the program and not run it: the kernel's address
    // hash would then strand every client that moves. Trust what was seen, not what was said.
    if let Err(e) = verify_steering(&sockets) {
        drop(sockets);
        let why = format!("connection-id steering did not work: {e}");
        return single_socket(claimed, buffer_bytes, Some(why));
    }
    Ok(SocketGroup {
        sockets,
        granted_buffer: granted,
        fallback: None,
    })
}

/// A group of one plain socket: what was asked, or (with the reason) what the kernel allows.
fn single_socket(
    addr: std::net::SocketAddr,
    buffer_bytes: usize,
    fallback: Option<String>,
) -> std::io::Result<SocketGroup> {
    let (socket, granted) = bind_udp_socket(addr, buffer_bytes, false)?;
    Ok(SocketGroup {
        sockets: vec![socket],
        granted_buffer: granted,
        fallback,
    })
}

/// How long the start-up check of the steering waits for its own datagrams, in all.
const STEERING_CHECK_TIME: Duration = Duration::from_secs(2);

/// Sends, from one local socket, a datagram shaped like a QUIC short header for each socket
/// of the group, and checks that each arrives at the socket its connection id names. The
/// probes carry a random tag; anything else a socket receives meanwhile (clients of a
/// relay restarting under traffic) is dropped, as it would be by a relay not yet up.
fn verify_steering(sockets: &[std::net::UdpSocket]) -> std::io::Result<()> {
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
    let bound = sockets[0].local_addr()?;
    let target_ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    let target = SocketAddr::new(target_ip, bound.port());
    let from: SocketAddr = match target_ip {
        IpAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
        IpAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
    };
    let probe = std::net::UdpSocket::bind(from)?;
    let tag: [u8; 8] = rand::random();
    let deadline = std::time::Instant::now() + STEERING_CHECK_TIME;
    let mut buf = [0u8; 2048];
    for (index, socket) in sockets.iter().enumerate() {
        let mut datagram = vec![0x40, 0x07, 0x00, index as u8, 0, 0, 0, 0, 0];
        datagram.extend_from_slice(&tag);
        probe.send_to(&datagram, target)?;
        let arrived = loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            if left.is_zero() {
                break false;
            }
            socket.set_read_timeout(Some(left))?;
            match socket.recv_from(&mut buf) {
                Ok((n, _)) if buf[..n] == datagram[..] => break true,
                Ok(_) => continue,
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    break false;
                }
                Err(e) => return Err(e),
            }
        };
        socket.set_read_timeout(None)?;
        if !arrived {
            return Err(std::io::Error::other(format!(
                "a datagram for socket {index} of {} did not arrive there",
                sockets.len()
            )));
        }
    }
    Ok(())
}

/// A UDP socket bound to `addr` with kernel buffers of `buffer_bytes` each way (or as much
/// as the kernel allows: Linux caps them at `net.core.rmem_max` / `wmem_max`). Returns the
/// socket and the receive buffer actually granted.
pub fn udp_socket(
    addr: std::net::SocketAddr,
    buffer_bytes: usize,
) -> std::io::Result<(std::net::UdpSocket, usize)> {
    bind_udp_socket(addr, buffer_bytes, false)
}

/// [`udp_socket`], sharing the address with others of the same user where `reuse_port`.
fn bind_udp_socket(
    addr: std::net::SocketAddr,
    buffer_bytes: usize,
    reuse_port: bool,
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
    #[cfg(target_os = "linux")]
    if reuse_port {
        socket.set_reuse_port(true)?;
    }
    #[cfg(not(target_os = "linux"))]
    let _ = reuse_port;
    socket.bind(&addr.into())?;
    let granted = socket.recv_buffer_size().unwrap_or(0);
    Ok((socket.into(), granted))
}

/// Attaches to `socket`'s `SO_REUSEPORT` group the classic-BPF program that picks socket
/// `dcid[STEERING_OCTET] % count` for every datagram. The program sees the UDP payload: a
/// QUIC long header (first bit set) has its destination connection id at offset 6 (flags,
/// 4-octet version, length), a short header at offset 1. A datagram too short to read
/// makes the program return 0 (socket 0, which drops what it does not know).
#[cfg(target_os = "linux")]
fn steer_by_connection_id(socket: &std::net::UdpSocket, count: usize) -> std::io::Result<()> {
    const LONG_HEADER_DCID: u32 = 6;
    const SHORT_HEADER_DCID: u32 = 1;
    let insn = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    let octet = STEERING_OCTET as u32;
    let mut program = [
        // A = first octet of the payload (the QUIC header form bit).
        insn(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 0),
        // Long header? Next instruction; short header: skip two.
        insn(libc::BPF_JMP | libc::BPF_JSET | libc::BPF_K, 0, 2, 0x80),
        insn(
            libc::BPF_LD | libc::BPF_B | libc::BPF_ABS,
            0,
            0,
            LONG_HEADER_DCID + octet,
        ),
        insn(libc::BPF_JMP | libc::BPF_JA, 0, 0, 1),
        insn(
            libc::BPF_LD | libc::BPF_B | libc::BPF_ABS,
            0,
            0,
            SHORT_HEADER_DCID + octet,
        ),
        insn(
            libc::BPF_ALU | libc::BPF_MOD | libc::BPF_K,
            0,
            0,
            count as u32,
        ),
        insn(libc::BPF_RET | libc::BPF_A, 0, 0, 0),
    ];
    let fprog = libc::sock_fprog {
        len: program.len() as u16,
        filter: program.as_mut_ptr(),
    };
    // SAFETY: SO_ATTACH_REUSEPORT_CBPF takes a `sock_fprog`, whose `filter` points at
    // `program` (alive until after the call; the kernel copies it).
    unsafe {
        set_socket_option(
            socket,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_REUSEPORT_CBPF,
            &fprog,
        )
    }
}

/// `setsockopt(socket, level, name, value)`.
///
/// # Safety
/// `T` must be the type the kernel expects for `level`/`name`, and any pointer inside
/// `value` must be valid for the kernel to read during the call.
#[cfg(target_os = "linux")]
unsafe fn set_socket_option<T>(
    socket: &std::net::UdpSocket,
    level: libc::c_int,
    name: libc::c_int,
    value: &T,
) -> std::io::Result<()> {
    use std::os::fd::AsRawFd as _;
    // SAFETY: `value` is a live `T` of `size_of::<T>()` octets; the caller vouches for
    // the option's type and for what `T` points at.
    let rc = unsafe {
        libc::setsockopt(
            socket.as_raw_fd(),
            level,
            name,
            std::ptr::from_ref(value).cast(),
            std::mem::size_of::<T>() as libc::socklen_t,
        )
    };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Turns UDP generic receive offload off on `socket` (which quinn turns on): with it, the
/// kernel may deliver a batch of one client address's datagrams to the socket the first
/// one's connection id picks, though the rest belong to connections of another socket.
#[cfg(target_os = "linux")]
pub fn turn_off_receive_offload(socket: &std::net::UdpSocket) -> std::io::Result<()> {
    let off: libc::c_int = 0;
    // SAFETY: UDP_GRO takes a plain `c_int`.
    unsafe { set_socket_option(socket, libc::SOL_UDP, libc::UDP_GRO, &off) }
}

/// Receive offload is Linux's; elsewhere there is nothing to turn off.
#[cfg(not(target_os = "linux"))]
pub fn turn_off_receive_offload(_socket: &std::net::UdpSocket) -> std::io::Result<()> {
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn steer_by_connection_id(_socket: &std::net::UdpSocket, _count: usize) -> std::io::Result<()> {
    Err(std::io::Error::other("SO_REUSEPORT steering needs Linux"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use quinn_proto::ConnectionIdGenerator;

    #[test]
    fn the_quinn_generator_only_accepts_its_own_node() {
        let mut mine = RoutableCids::new(NodeId::new(2).unwrap(), SocketSteering::SINGLE);
        let cid = mine.generate_cid();
        assert_eq!(cid.len(), CID_LEN);
        assert!(mine.validate(&cid).is_ok());
        let theirs =
            RoutableCids::new(NodeId::new(3).unwrap(), SocketSteering::SINGLE).generate_cid();
        assert!(mine.validate(&theirs).is_err());
    }

    #[test]
    fn the_quinn_generator_only_accepts_its_own_socket() {
        let sockets = [0, 1, 2].map(|i| SocketSteering::new(i, 3).unwrap());
        let mut first = RoutableCids::new(NodeId::FIRST, sockets[0]);
        for _ in 0..50 {
            let cid = first.generate_cid();
            assert!(first.validate(&cid).is_ok());
            for other in &sockets[1..] {
                assert!(
                    RoutableCids::new(NodeId::FIRST, *other)
                        .validate(&cid)
                        .is_err()
                );
            }
        }
    }

    /// quinn turns receive offload on for its sockets; a group socket's is turned off again.
    #[cfg(target_os = "linux")]
    #[tokio::test]
    async fn receive_offload_is_off_on_a_quinn_socket_after_turning_it_off() {
        use std::os::fd::AsRawFd as _;
        fn gro(socket: &std::net::UdpSocket) -> libc::c_int {
            let mut value: libc::c_int = -1;
            let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
            // SAFETY: `value` and `len` outlive the call and describe a c_int.
            let rc = unsafe {
                libc::getsockopt(
                    socket.as_raw_fd(),
                    libc::SOL_UDP,
                    libc::UDP_GRO,
                    std::ptr::from_mut(&mut value).cast(),
                    &mut len,
                )
            };
            assert_eq!(rc, 0, "{}", std::io::Error::last_os_error());
            value
        }
        let socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let handle = socket.try_clone().unwrap();
        let endpoint = quinn::Endpoint::new(
            quinn::EndpointConfig::default(),
            None,
            socket,
            quinn::default_runtime().unwrap(),
        )
        .unwrap();
        assert_eq!(gro(&handle), 1, "quinn turned it on");
        turn_off_receive_offload(&handle).unwrap();
        assert_eq!(gro(&handle), 0);
        endpoint.close(0u32.into(), b"");
    }

    /// The start-up check sees through a group whose steering does not work: sockets that
    /// share the port with `SO_REUSEPORT` alone get one client address's datagrams on one
    /// socket (the kernel's address hash), so the datagrams for the others never arrive.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_steering_check_fails_without_the_program_and_passes_with_it() {
        let first = bind_udp_socket("127.0.0.1:0".parse().unwrap(), 1 << 16, true).unwrap();
        let port = first.0.local_addr().unwrap();
        let mut unsteered = vec![first.0];
        for _ in 1..4 {
            unsteered.push(bind_udp_socket(port, 1 << 16, true).unwrap().0);
        }
        let err = verify_steering(&unsteered).unwrap_err();
        assert!(err.to_string().contains("did not arrive"), "{err}");
        let steered = udp_sockets("127.0.0.1:0".parse().unwrap(), 1 << 16, 4).unwrap();
        assert_eq!(steered.fallback, None);
        verify_steering(&steered.sockets).unwrap();
    }

    /// A taken address stays taken, also for a group: neither a plain socket's address nor
    /// another group's (another relay of the same user) can be joined.
    #[test]
    fn a_group_does_not_bind_where_another_socket_listens() {
        let plain = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let taken = plain.local_addr().unwrap();
        let err = udp_sockets(taken, 1 << 16, 4).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        let group = udp_sockets("127.0.0.1:0".parse().unwrap(), 1 << 16, 2).unwrap();
        let theirs = group.sockets[0].local_addr().unwrap();
        let err = udp_sockets(theirs, 1 << 16, 2).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
        let err = udp_sockets(theirs, 1 << 16, 1).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::AddrInUse);
    }

    /// The kernel, not our arithmetic: datagrams shaped like QUIC long and short headers
    /// reach the socket their destination connection id names, over real loopback UDP.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_kernel_steers_datagrams_by_connection_id() {
        const COUNT: usize = 4;
        let group = udp_sockets("127.0.0.1:0".parse().unwrap(), 1 << 20, COUNT).unwrap();
        assert_eq!(group.fallback, None);
        assert_eq!(group.sockets.len(), COUNT);
        let addr = group.sockets[0].local_addr().unwrap();
        for socket in &group.sockets {
            assert_eq!(
                socket.local_addr().unwrap(),
                addr,
                "one address for the group"
            );
            // A guard against a hang only: a misdelivered datagram fails the test below.
            socket
                .set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
        }
        let sender = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let mut buf = [0u8; 64];
        for octet in 0..=255u8 {
            let cid = [0x07, 0, octet, 1, 2, 3, 4, 5];
            let mut long = vec![0xc0, 0, 0, 0, 1, CID_LEN as u8];
            long.extend_from_slice(&cid);
            long.extend_from_slice(&[0xee; 20]);
            let mut short = vec![0x40];
            short.extend_from_slice(&cid);
            short.extend_from_slice(&[0xdd; 20]);
            for datagram in [long, short] {
                sender.send_to(&datagram, addr).unwrap();
                let expected = &group.sockets[usize::from(octet) % COUNT];
                let (n, _) = expected.recv_from(&mut buf).unwrap_or_else(|e| {
                    panic!(
                        "octet {octet}: not on socket {}: {e}",
                        usize::from(octet) % COUNT
                    )
                });
                assert_eq!(&buf[..n], &datagram[..]);
            }
        }
        // Too short to carry a connection id: socket 0, which drops it as unknown.
        sender.send_to(&[0x40], addr).unwrap();
        let (n, _) = group.sockets[0].recv_from(&mut buf).unwrap();
        assert_eq!(&buf[..n], &[0x40]);
        for socket in &group.sockets {
            socket.set_nonblocking(true).unwrap();
            let left = socket.recv_from(&mut buf).map(|(n, _)| n);
            assert_eq!(
                left.map_err(|e| e.kind()),
                Err(std::io::ErrorKind::WouldBlock),
                "nothing else was delivered anywhere"
            );
        }
    }
}
