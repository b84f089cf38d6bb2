//! Direct paths: checking a client's candidates, timing the synchronised hole punch, and
//! tracking whether a session's data goes direct or through the relay.
//!
//! The approach is the one of libp2p's DCUtR (Direct Connection Upgrade through Relay) and
//! Tailscale's disco: the relay, which both peers already reach, measures its round-trip
//! time to each and tells each when to start, so that both peers' first packets leave at
//! about the same moment and each NAT has a mapping towards the other before the other's
//! packet arrives. Retries follow a schedule fixed in the one offer, so neither peer needs
//! another message from the relay to retry.

use std::net::SocketAddr;
use std::time::Duration;

/// Most addresses one client may offer.
pub const MAX_CANDIDATES: usize = 8;
/// Attempts in one offer.
pub const ATTEMPTS: u32 = 3;
/// Shortest time between attempts: a loss-recovery round of the direct handshake on a
/// near path, so that a retry does not land on top of the previous attempt's retransmission.
pub const MIN_ATTEMPT_INTERVAL: Duration = Duration::from_millis(100);
/// Longest time between attempts.
pub const MAX_ATTEMPT_INTERVAL: Duration = Duration::from_secs(1);
/// Shortest time a party keeps trying: the session runs on the relay meanwhile, so waiting
/// costs nothing, while giving up early loses paths whose handshakes needed a retransmission
/// or a busy peer's moment.
pub const MIN_DEADLINE: Duration = Duration::from_secs(2);

/// What a client offered for direct paths, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Candidates {
    /// Its local addresses.
    pub addresses: Vec<SocketAddr>,
    /// SHA-256 of its direct endpoint's certificate.
    pub certificate_sha256: [u8; 32],
}

impl Candidates {
    /// Checks an `OfferCandidates` message; the error says which field is wrong.
    pub fn parse(addresses: &[String], certificate_sha256: &[u8]) -> Result<Candidates, String> {
        if addresses.len() > MAX_CANDIDATES {
            return Err(format!(
                "{} candidate addresses offered; at most {MAX_CANDIDATES} are accepted",
                addresses.len()
            ));
        }
        let certificate_sha256: [u8; 32] = certificate_sha256.try_into().map_err(|_| {
            format!(
                "certificate_sha256 must be 32 bytes (SHA-256), not {}",
                certificate_sha256.len()
            )
        })?;
        let mut parsed = Vec::with_capacity(addresses.len());
        for (i, text) in addresses.iter().enumerate() {
            let address: SocketAddr = text.parse().map_err(|_| {
                // The text is the client's: echo a bounded piece of it (logs, the Error).
                let shown: String = text.chars().take(64).collect();
                format!("addresses[{i}] {shown:?} is not an ip:port literal")
            })?;
            if !dialable(address) {
                return Err(format!(
                    "addresses[{i}] {address} cannot be offered (port 0, unspecified, loopback, link-local, multicast or broadcast)"
                ));
            }
            if !parsed.contains(&address) {
                parsed.push(address);
            }
        }
        Ok(Candidates {
            addresses: parsed,
            certificate_sha256,
        })
    }

    /// The addresses to give the peer: the observed one first (the one that crosses NATs),
    /// then the client's own, without repeats.
    pub fn for_peer(&self, observed: SocketAddr) -> Vec<SocketAddr> {
        let observed = canonical(observed);
        std::iter::once(observed)
            .chain(self.addresses.iter().copied().filter(|a| *a != observed))
            .collect()
    }
}

/// Whether a peer may be told to send to `address`: never port 0, the unspecified address,
/// the peer's own machine (loopback), link-local, multicast or broadcast addresses, which
/// would turn the peer's punch packets and handshakes on its own or its LAN's services.
pub fn dialable(address: SocketAddr) -> bool {
    let ip = address.ip().to_canonical();
    let special = match ip {
        std::net::IpAddr::V4(v4) => v4.is_link_local() || v4.is_broadcast(),
        std::net::IpAddr::V6(v6) => (v6.segments()[0] & 0xffc0) == 0xfe80,
    };
    address.port() != 0
        && !ip.is_unspecified()
        && !ip.is_loopback()
        && !ip.is_multicast()
        && !special
}

/// An address as one family sees it: IPv4 clients of a dual-stack socket appear as
/// IPv4-mapped IPv6 (`[::ffff:a.b.c.d]`); peers and logs get plain IPv4.
pub fn canonical(address: SocketAddr) -> SocketAddr {
    SocketAddr::new(address.ip().to_canonical(), address.port())
}

/// When each party starts, and how often it retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PunchSchedule {
    /// The helper's wait before its first attempt.
    pub helper_start: Duration,
    /// The sharer's wait before its first attempt.
    pub sharer_start: Duration,
    /// Attempts in all.
    pub attempts: u32,
    /// Time between attempts.
    pub interval: Duration,
    /// Give up this long after receipt (the same for both: the later start plus every
    /// attempt plus one more interval for the last handshake, and at least [`MIN_DEADLINE`]).
    pub deadline: Duration,
    /// The direct path's round trip as the relay estimates it (the two round trips added).
    pub rtt_estimate: Duration,
}

/// Plans the punch from the relay's round-trip times to the two parties. The offers leave
/// together and reach each party after half its round trip; the nearer party waits the
/// difference, so both start at the moment the farther one receives its offer.
pub fn schedule(helper_rtt: Duration, sharer_rtt: Duration) -> PunchSchedule {
    let helper_oneway = helper_rtt / 2;
    let sharer_oneway = sharer_rtt / 2;
    let later = helper_oneway.max(sharer_oneway);
    let rtt_estimate = helper_rtt + sharer_rtt;
    let interval = (rtt_estimate * 2).clamp(MIN_ATTEMPT_INTERVAL, MAX_ATTEMPT_INTERVAL);
    let helper_start = later - helper_oneway;
    let sharer_start = later - sharer_oneway;
    PunchSchedule {
        helper_start,
        sharer_start,
        attempts: ATTEMPTS,
        interval,
        deadline: (helper_start.max(sharer_start) + interval * (ATTEMPTS + 1)).max(MIN_DEADLINE),
        rtt_estimate,
    }
}

/// Which way a session's data goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Path {
    /// Through the relay.
    Relayed,
    /// Peer to peer.
    Direct,
}

impl Path {
    /// The name used in metrics and audit events.
    pub fn as_str(self) -> &'static str {
        match self {
            Path::Relayed => "relayed",
            Path::Direct => "direct",
        }
    }
}

/// What a party's result did to the session's path.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PathChange {
    /// Nothing the relay reports (one side up, the other not yet; a repeat).
    None,
    /// Both parties reported the direct path up.
    Direct,
    /// The attempt failed before the path came up: the session stays relayed.
    Failed,
    /// An established direct path was lost: the session fell back to the relay.
    FellBack,
}

/// The path of one session, from the parties' `DirectPathResult`s. The direct path
/// counts as up only once both parties say so (each has then finished the pinned
/// handshake and the path check with the other).
#[derive(Debug, Clone, Default)]
pub struct PathTracker {
    offered: bool,
    up: [bool; 2],
    failed: bool,
    direct: bool,
}

impl PathTracker {
    /// A session whose parties were (or were not) offered a direct path.
    pub fn new(offered: bool) -> PathTracker {
        PathTracker {
            offered,
            ..PathTracker::default()
        }
    }

    /// The current path.
    pub fn path(&self) -> Path {
        if self.direct {
            Path::Direct
        } else {
            Path::Relayed
        }
    }

    /// Whether the parties were offered a direct path (a result is expected).
    pub fn offered(&self) -> bool {
        self.offered
    }

    /// Applies one party's result (`side` 0 = helper, 1 = sharer). `Err` when no offer
    /// was made (the result is a protocol violation).
    pub fn on_result(&mut self, side: usize, established: bool) -> Result<PathChange, String> {
        if !self.offered {
            return Err("DirectPathResult without a DirectPathOffer".into());
        }
        let side = side.min(1);
        if established {
            if self.failed {
                // Too late: the attempt already counted as failed (the other side gave up).
                return Ok(PathChange::None);
            }
            self.up[side] = true;
            if self.up == [true, true] && !self.direct {
                self.direct = true;
                return Ok(PathChange::Direct);
            }
            return Ok(PathChange::None);
        }
        self.up[side] = false;
        if self.direct {
            self.direct = false;
            self.failed = true;
            return Ok(PathChange::FellBack);
        }
        if self.failed {
            return Ok(PathChange::None);
        }
        self.failed = true;
        Ok(PathChange::Failed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fp() -> Vec<u8> {
        vec![7; 32]
    }

    #[test]
    fn candidates_are_checked_field_by_field() {
        let ok =
            Candidates::parse(&["10.0.0.2:5000".into(), "[fd00::2]:5000".into()], &fp()).unwrap();
        assert_eq!(ok.addresses.len(), 2);
        let repeated =
            Candidates::parse(&["10.0.0.2:5000".into(), "10.0.0.2:5000".into()], &fp()).unwrap();
        assert_eq!(repeated.addresses.len(), 1);
        for (addresses, certificate, needle) in [
            (vec!["10.0.0.2".to_string()], fp(), "addresses[0]"),
            (vec!["x".repeat(60_000)], fp(), "not an ip:port"),
            (vec!["0.0.0.0:5000".to_string()], fp(), "unspecified"),
            (vec!["10.0.0.2:0".to_string()], fp(), "port 0"),
            (vec!["224.0.0.1:5000".to_string()], fp(), "multicast"),
            (vec!["127.0.0.1:5000".to_string()], fp(), "loopback"),
            (vec!["[::1]:5000".to_string()], fp(), "loopback"),
            (
                vec!["[::ffff:127.0.0.1]:5000".to_string()],
                fp(),
                "loopback",
            ),
            (vec!["169.254.1.1:5000".to_string()], fp(), "link-local"),
            (vec!["[fe80::1]:5000".to_string()], fp(), "link-local"),
            (vec!["255.255.255.255:5000".to_string()], fp(), "broadcast"),
            (vec!["10.0.0.2:5000".to_string()], vec![1; 31], "32 bytes"),
            (vec!["10.0.0.2:5000".to_string(); 9], fp(), "at most 8"),
        ] {
            let e = Candidates::parse(&addresses, &certificate).unwrap_err();
            assert!(e.contains(needle), "{e} lacks {needle}");
            assert!(
                e.len() < 200,
                "an error echoes at most a bounded piece of the input"
            );
        }
    }

    #[test]
    fn the_observed_address_goes_first_and_only_once() {
        let c =
            Candidates::parse(&["10.0.0.2:5000".into(), "192.0.2.7:6000".into()], &fp()).unwrap();
        let observed: SocketAddr = "192.0.2.7:6000".parse().unwrap();
        assert_eq!(
            c.for_peer(observed),
            vec![observed, "10.0.0.2:5000".parse().unwrap()]
        );
        // A dual-stack relay sees the same client as a mapped address.
        let mapped: SocketAddr = "[::ffff:192.0.2.7]:6000".parse().unwrap();
        assert_eq!(c.for_peer(mapped)[0], observed);
        assert_eq!(c.for_peer(mapped).len(), 2);
    }

    #[test]
    fn the_nearer_party_waits_so_both_start_together() {
        let s = schedule(Duration::from_millis(80), Duration::from_millis(20));
        // Offers arrive after 40 ms and 10 ms: the sharer waits 30 ms more.
        assert_eq!(s.helper_start, Duration::ZERO);
        assert_eq!(s.sharer_start, Duration::from_millis(30));
        assert_eq!(s.rtt_estimate, Duration::from_millis(100));
        assert_eq!(s.interval, Duration::from_millis(200));
        assert_eq!(s.deadline, MIN_DEADLINE);
        let far = schedule(Duration::from_millis(800), Duration::from_millis(600));
        assert_eq!(far.interval, MAX_ATTEMPT_INTERVAL);
        assert_eq!(far.deadline, Duration::from_millis(100 + 1000 * 4));
        // Near peers still leave room for a handshake retransmission between attempts;
        // far ones do not wait for ever.
        assert_eq!(
            schedule(Duration::ZERO, Duration::ZERO).interval,
            MIN_ATTEMPT_INTERVAL
        );
        assert_eq!(
            schedule(Duration::from_secs(2), Duration::from_secs(2)).interval,
            MAX_ATTEMPT_INTERVAL
        );
    }

    #[test]
    fn direct_needs_both_parties_and_falls_back_once_lost() {
        let mut t = PathTracker::new(true);
        assert_eq!(t.on_result(0, true).unwrap(), PathChange::None);
        assert_eq!(t.path(), Path::Relayed);
        assert_eq!(t.on_result(1, true).unwrap(), PathChange::Direct);
        assert_eq!(t.path(), Path::Direct);
        assert_eq!(t.on_result(1, true).unwrap(), PathChange::None);
        assert_eq!(t.on_result(0, false).unwrap(), PathChange::FellBack);
        assert_eq!(t.path(), Path::Relayed);
        // The other side's report of the same loss changes nothing more.
        assert_eq!(t.on_result(1, false).unwrap(), PathChange::None);
        assert_eq!(t.path(), Path::Relayed);
    }

    #[test]
    fn one_failure_fails_the_attempt() {
        let mut t = PathTracker::new(true);
        assert_eq!(t.on_result(1, false).unwrap(), PathChange::Failed);
        assert_eq!(t.on_result(0, false).unwrap(), PathChange::None);
        // A late success after the other side gave up does not make the path direct.
        assert_eq!(t.on_result(0, true).unwrap(), PathChange::None);
        assert_eq!(t.path(), Path::Relayed);
    }

    #[test]
    fn a_result_without_an_offer_is_refused() {
        let mut t = PathTracker::new(false);
        assert!(t.on_result(0, true).is_err());
    }
}
