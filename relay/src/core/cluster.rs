//! What a relay node needs to know to be one of several: its [`NodeId`], where a session
//! or a device agent lives, and QUIC connection ids a stateless load balancer can route.
//!
//! Pairing needs no shared database: a session code carries the id of the node that holds
//! the session ([`super::code::SessionCode::node`]), and a device agent's home node is a
//! hash of its device id ([`device_home`]), so every node can tell where any
//! request belongs from the request alone and redirect the client there.
//!
//! Connection ids follow the *unencrypted* format of QUIC-LB
//! (draft-ietf-quic-load-balancers-21, §3 and §5): the first octet carries the config
//! rotation bits (`0b000`) and the id's length minus one, then one octet of server id (our
//! node id), then six random nonce octets, the first of which also picks one of the node's
//! UDP sockets ([`SocketSteering`]). A load balancer configured with "server id
//! length 1, no key" reads the node from any connection id the relay issued, so packets of
//! a migrated or re-bound connection reach the node that holds it. (quinn's generator, which
//! draws from the OS RNG, lives in the shell: [`crate::transport::RoutableCids`].)

use rand::Rng;

/// Most nodes one deployment can have: a code's first symbol (5 bits) names its node.
pub const MAX_NODES: usize = 32;

/// Length of the connection ids the relay issues, bytes.
pub const CID_LEN: usize = 8;

/// QUIC-LB config rotation codepoint the relay uses (the three high bits of octet 0).
pub const CONFIG_ROTATION: u8 = 0;

/// One relay node's id within its deployment, 0 to 31.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct NodeId(u8);

impl NodeId {
    /// Node 0 (the id of a relay that is not part of a cluster).
    pub const FIRST: NodeId = NodeId(0);

    /// `id` as a node id, if it is below [`MAX_NODES`].
    pub fn new(id: u8) -> Option<NodeId> {
        (usize::from(id) < MAX_NODES).then_some(NodeId(id))
    }

    /// The id as a number.
    pub fn get(self) -> u8 {
        self.0
    }
}

impl std::fmt::Display for NodeId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.0.fmt(f)
    }
}

/// The node id in a Kubernetes StatefulSet pod's host name: its ordinal suffix
/// (`relay-2`, or `relay-2.relay.example.com`, is node 2).
pub fn node_from_hostname(hostname: &str) -> Option<NodeId> {
    let short = hostname.trim().split('.').next()?;
    let (_, ordinal) = short.rsplit_once('-')?;
    if ordinal.is_empty() || !ordinal.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    ordinal.parse::<u8>().ok().and_then(NodeId::new)
}

/// The node that hosts a device agent's registration among `nodes` nodes: a stable hash
/// of its device id (SHA-256, so every node and every build agrees). The tenant is left
/// out on purpose: a helper of another tenant naming the same device id lands on the same
/// node, which refuses it `CROSS_TENANT` as a single relay would.
pub fn device_home(device_id: &str, nodes: usize) -> NodeId {
    let nodes = nodes.clamp(1, MAX_NODES);
    let digest = ring::digest::digest(&ring::digest::SHA256, device_id.as_bytes());
    let mut first = [0u8; 8];
    first.copy_from_slice(&digest.as_ref()[..8]);
    NodeId((u64::from_be_bytes(first) % nodes as u64) as u8)
}

/// Offset in a connection id of the octet that picks the node's UDP socket: the first
/// nonce octet. It is ≡ socket index (mod socket count), [`SocketSteering`].
pub const STEERING_OCTET: usize = 2;

/// Most UDP sockets one node spreads its connections over (`limits.udp_sockets`).
pub const MAX_SOCKETS: usize = 64;

/// Which of a node's UDP sockets (all bound to the listen port with `SO_REUSEPORT`) a
/// connection id belongs to: the kernel delivers every packet to socket
/// `cid[STEERING_OCTET] % count` (a classic-BPF program reads that octet of the packet's
/// destination connection id), so a connection stays on the socket, and the quinn endpoint,
/// that accepted it, even when the client's address changes. The first client Initial
/// carries a random id the client chose: wherever it lands, that socket's ids name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SocketSteering {
    index: u8,
    count: u8,
}

impl SocketSteering {
    /// A node with one socket: no steering.
    pub const SINGLE: SocketSteering = SocketSteering { index: 0, count: 1 };

    /// Socket `index` of `count` (1..=[`MAX_SOCKETS`]); `None` when out of range.
    pub fn new(index: usize, count: usize) -> Option<SocketSteering> {
        ((1..=MAX_SOCKETS).contains(&count) && index < count).then_some(SocketSteering {
            index: index as u8,
            count: count as u8,
        })
    }

    /// A steering octet for this socket, drawn uniformly from the octets that map to it.
    pub fn octet<R: Rng + ?Sized>(self, rng: &mut R) -> u8 {
        let choices = 256 / u16::from(self.count);
        let k = rng.random_range(0..choices);
        // k * count + index <= (256 / count - 1) * count + count - 1 <= 255.
        (k * u16::from(self.count) + u16::from(self.index)) as u8
    }

    /// Whether `cid` is steered to this socket.
    pub fn owns(self, cid: &[u8]) -> bool {
        cid.get(STEERING_OCTET)
            .is_some_and(|&octet| octet % self.count == self.index)
    }
}

/// A fresh QUIC-LB connection id for `node` (unencrypted mode, [`CID_LEN`] octets), whose
/// first nonce octet steers it to `socket`.
pub fn routable_cid<R: Rng + ?Sized>(
    node: NodeId,
    socket: SocketSteering,
    rng: &mut R,
) -> [u8; CID_LEN] {
    let mut cid = [0u8; CID_LEN];
    cid[0] = (CONFIG_ROTATION << 5) | (CID_LEN as u8 - 1);
    cid[1] = node.0;
    rng.fill_bytes(&mut cid[2..]);
    cid[STEERING_OCTET] = socket.octet(rng);
    cid
}

/// The node a load balancer routes `cid` to, if it is a connection id this format made:
/// what a QUIC-LB load balancer does with the destination connection id of each packet.
pub fn node_of_cid(cid: &[u8]) -> Option<NodeId> {
    let first = *cid.first()?;
    if first >> 5 != CONFIG_ROTATION || usize::from(first & 0x1f) + 1 != cid.len() {
        return None;
    }
    cid.get(1).copied().and_then(NodeId::new)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    #[test]
    fn node_ids_stop_at_thirty_one() {
        assert_eq!(NodeId::new(31).map(NodeId::get), Some(31));
        assert_eq!(NodeId::new(32), None);
    }

    #[test]
    fn statefulset_host_names_give_their_ordinal() {
        assert_eq!(node_from_hostname("relay-0"), NodeId::new(0));
        assert_eq!(
            node_from_hostname("remote-help-relay-12\n"),
            NodeId::new(12)
        );
        assert_eq!(
            node_from_hostname("relay-3.relay-nodes.ns.svc"),
            NodeId::new(3)
        );
        assert_eq!(node_from_hostname("relay-32"), None);
        assert_eq!(node_from_hostname("relay"), None);
        assert_eq!(node_from_hostname("relay-"), None);
        assert_eq!(node_from_hostname("relay-x1"), None);
        assert_eq!(node_from_hostname("relay-+1"), None);
    }

    #[test]
    fn connection_ids_carry_the_node_and_self_encode_their_length() {
        let mut rng = StdRng::seed_from_u64(9);
        for id in [0u8, 1, 17, 31] {
            let node = NodeId::new(id).unwrap();
            let cid = routable_cid(node, SocketSteering::SINGLE, &mut rng);
            assert_eq!(cid[0], 0b000_00111, "config rotation 0, length 8 - 1");
            assert_eq!(node_of_cid(&cid), Some(node));
        }
        // Two ids of one node differ (the nonce), so a migrated connection is not linkable
        // by its connection id beyond the node it lives on.
        let a = routable_cid(NodeId::FIRST, SocketSteering::SINGLE, &mut rng);
        let b = routable_cid(NodeId::FIRST, SocketSteering::SINGLE, &mut rng);
        assert_ne!(a, b);
    }

    #[test]
    fn connection_ids_steer_to_their_socket_and_only_there() {
        let mut rng = StdRng::seed_from_u64(11);
        for count in [1usize, 2, 3, 7, 16, 64] {
            let sockets: Vec<_> = (0..count)
                .map(|i| SocketSteering::new(i, count).unwrap())
                .collect();
            let mut octets = std::collections::HashSet::new();
            for (index, socket) in sockets.iter().enumerate() {
                for _ in 0..200 {
                    let cid = routable_cid(NodeId::FIRST, *socket, &mut rng);
                    // What the kernel's BPF program computes.
                    assert_eq!(usize::from(cid[STEERING_OCTET]) % count, index);
                    assert_eq!(node_of_cid(&cid), Some(NodeId::FIRST));
                    let owners: Vec<_> = sockets.iter().filter(|s| s.owns(&cid)).collect();
                    assert_eq!(owners, [socket], "exactly one socket owns an id");
                    octets.insert(cid[STEERING_OCTET]);
                }
            }
            // The octet stays mostly random: ids remain unlinkable beyond node and socket.
            assert!(octets.len() > 100, "{count}: {octets:?}");
        }
        assert_eq!(SocketSteering::new(0, 0), None);
        assert_eq!(SocketSteering::new(2, 2), None);
        assert_eq!(SocketSteering::new(0, MAX_SOCKETS + 1), None);
        assert!(
            !SocketSteering::SINGLE.owns(&[0x07, 0]),
            "too short to carry the octet"
        );
    }

    #[test]
    fn foreign_connection_ids_route_nowhere() {
        assert_eq!(node_of_cid(&[]), None);
        assert_eq!(node_of_cid(&[0x07]), None, "claims 8 octets, has 1");
        assert_eq!(
            node_of_cid(&[0x27, 1, 0, 0, 0, 0, 0, 0]),
            None,
            "rotation 1"
        );
        assert_eq!(node_of_cid(&[0x07, 40, 0, 0, 0, 0, 0, 0]), None, "node 40");
    }

    #[test]
    fn device_homes_are_stable_and_spread() {
        assert_eq!(device_home("d", 1), NodeId::FIRST);
        let home = device_home("device-1", 3);
        assert_eq!(device_home("device-1", 3), home);
        let mut counts = [0usize; 3];
        for i in 0..300 {
            counts[usize::from(device_home(&format!("d{i}"), 3).get())] += 1;
        }
        assert!(counts.iter().all(|&c| c > 50), "skewed: {counts:?}");
    }
}
