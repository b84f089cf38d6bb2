//! NAT traversal through real Linux NATs: network namespaces joined by veth pairs, a
//! "public" namespace holding the relay, and two private networks each behind a NAT
//! namespace doing iptables masquerading (with the router firewall's usual rule: new
//! connections from outside are dropped).
//!
//! ```text
//!  helper 10.0.1.2 ── 10.0.1.1 [nat-a] 192.0.2.2 ──┐
//!                                                   192.0.2.1 / 198.51.100.1 [public: relay]
//!  sharer 10.0.2.2 ── 10.0.2.1 [nat-b] 198.51.100.2 ┘
//! ```
//!
//! Cases, 20 trials each: both NATs endpoint-independent (plain masquerade, which keeps
//! the source port): the direct path comes up (trials one after another, so that the times
//! measured are not shared with other trials); nat-b symmetric (`--random-fully`, a new
//! port per destination): the session stays on the relay and works (trials at once: each
//! waits out the attempt's deadline); a `relay_only` tenant: no direct attempt. Each case prints its success rate and the time from consent to the
//! direct path (run with `--nocapture`; the figures are recorded in BENCHMARKS.md).
//!
//! Needs root, iproute2 and iptables (`./test` installs both). Where the machine cannot
//! have them the tests print one `SKIPPED` line each (counted by `./test`) and return; under
//! CI (`CI` set) that is a failure. As root with the tools, a harness that cannot be built
//! fails the test.

mod common;

use std::net::{SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use common::{TestRelay, join_and_consent, skip, within};
use futures_util::StreamExt;
use remote_help_relay::client::secure;
use remote_help_relay::client::{Client, ClientOptions, DirectOutcome};
use remote_help_relay::core::path::Path;
use remote_help_relay::core::{Channel, Mode, Role};
use remote_help_relay::dev::Persona;
use remote_help_relay::tls::RelayTrust;

const TRIALS: usize = 20;

/// How nat-b maps ports.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NatKind {
    /// Plain masquerade: one mapping per source, whatever the destination.
    EndpointIndependent,
    /// `--random-fully`: a fresh random port per destination.
    Symmetric,
}

/// Namespaces that are removed (with their veth links) when dropped.
struct Topology {
    namespaces: Vec<String>,
}

impl Topology {
    fn ns(&self, role: &str) -> String {
        let base = &self.namespaces[0];
        format!("{}-{role}", base.trim_end_matches("-pub"))
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        for ns in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

fn run(args: &[&str]) -> Result<(), String> {
    let output = Command::new(args[0])
        .args(&args[1..])
        .output()
        .map_err(|e| format!("{}: {e}", args.join(" ")))?;
    if output.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        ))
    }
}

fn in_ns(ns: &str, args: &[&str]) -> Result<(), String> {
    let mut full = vec!["ip", "netns", "exec", ns];
    full.extend_from_slice(args);
    run(&full)
}

/// Whether this machine can build the harness: root, `ip` and `iptables`, and a kernel
/// that lets us make network namespaces. If not, the test is skipped (a failure under CI).
fn harness_available(test: &str, case: &str) -> bool {
    if !skip::require_root(test, "building NATs from network namespaces and iptables")
        || !skip::require_tools(test, &[("ip", "iproute2"), ("iptables", "iptables")])
    {
        return false;
    }
    // One probe name per case: the cases run at once.
    let probe = format!("rh{}{case}-probe", std::process::id());
    match run(&["ip", "netns", "add", &probe]) {
        Ok(()) => {
            let _ = run(&["ip", "netns", "del", &probe]);
            true
        }
        // A container without CAP_SYS_ADMIN: the machine cannot have namespaces.
        Err(e) if e.contains("Operation not permitted") || e.contains("Permission denied") => {
            skip::skip(
                test,
                &format!("network namespaces are not permitted here ({e})"),
                "run on a host or a privileged container",
            );
            false
        }
        Err(e) => panic!("running as root, but a network namespace cannot be made: {e}"),
    }
}

/// Builds the two private networks, their NATs and the public network. `None` when this
/// machine cannot (the test is skipped, see [`harness_available`]).
fn build(test: &str, case: &str, nat_b: NatKind) -> Option<Topology> {
    if !harness_available(test, case) {
        return None;
    }
    let base = format!("rh{}{case}", std::process::id());
    let names = ["pub", "nata", "hosta", "natb", "hostb"].map(|r| format!("{base}-{r}"));
    let mut topology = Topology {
        namespaces: Vec::new(),
    };
    let result = (|| -> Result<(), String> {
        for ns in &names {
            run(&["ip", "netns", "add", ns])?;
            topology.namespaces.push(ns.clone());
            in_ns(ns, &["ip", "link", "set", "dev", "lo", "up"])?;
        }
        let [public, nat_a, host_a, nat_b_ns, host_b] = &names;
        for (nat, host, pub_if, pub_net, lan_net) in [
            (nat_a, host_a, "to-a", "192.0.2", "10.0.1"),
            (nat_b_ns, host_b, "to-b", "198.51.100", "10.0.2"),
        ] {
            run(&[
                "ip", "link", "add", "wan", "netns", nat, "type", "veth", "peer", "name", pub_if,
                "netns", public,
            ])?;
            run(&[
                "ip", "link", "add", "lan", "netns", nat, "type", "veth", "peer", "name", "eth0",
                "netns", host,
            ])?;
            in_ns(
                public,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{pub_net}.1/24"),
                    "dev",
                    pub_if,
                ],
            )?;
            in_ns(public, &["ip", "link", "set", "dev", pub_if, "up"])?;
            in_ns(
                nat,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{pub_net}.2/24"),
                    "dev",
                    "wan",
                ],
            )?;
            in_ns(
                nat,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{lan_net}.1/24"),
                    "dev",
                    "lan",
                ],
            )?;
            in_ns(nat, &["ip", "link", "set", "dev", "wan", "up"])?;
            in_ns(nat, &["ip", "link", "set", "dev", "lan", "up"])?;
            in_ns(
                nat,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("{pub_net}.1"),
                ],
            )?;
            in_ns(
                host,
                &[
                    "ip",
                    "addr",
                    "add",
                    &format!("{lan_net}.2/24"),
                    "dev",
                    "eth0",
                ],
            )?;
            in_ns(host, &["ip", "link", "set", "dev", "eth0", "up"])?;
            in_ns(
                host,
                &[
                    "ip",
                    "route",
                    "add",
                    "default",
                    "via",
                    &format!("{lan_net}.1"),
                ],
            )?;
            in_ns(nat, &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"])?;
            let mut masquerade = vec![
                "iptables",
                "-w",
                "-t",
                "nat",
                "-A",
                "POSTROUTING",
                "-o",
                "wan",
                "-j",
                "MASQUERADE",
            ];
            if nat == nat_b_ns && nat_b == NatKind::Symmetric {
                masquerade.push("--random-fully");
            }
            in_ns(nat, &masquerade)?;
            // The router's firewall: nothing new from outside, to it or through it.
            for chain in ["INPUT", "FORWARD"] {
                in_ns(
                    nat,
                    &[
                        "iptables",
                        "-w",
                        "-A",
                        chain,
                        "-i",
                        "wan",
                        "-m",
                        "conntrack",
                        "--ctstate",
                        "NEW",
                        "-j",
                        "DROP",
                    ],
                )?;
            }
        }
        in_ns(
            public,
            &["sh", "-c", "echo 1 > /proc/sys/net/ipv4/ip_forward"],
        )?;
        Ok(())
    })();
    if let Err(e) = result {
        panic!("running as root, but the NAT harness cannot be built: {e}");
    }
    Some(topology)
}

/// Runs `f` on a fresh thread that has entered network namespace `ns`: sockets made there
/// belong to that namespace for their whole life.
fn in_namespace<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/var/run/netns/{ns}");
    std::thread::spawn(move || {
        let file = std::fs::File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        use std::os::fd::AsRawFd;
        // SAFETY: a valid namespace fd; setns changes only this (short-lived) thread.
        let rc = unsafe { libc::setns(file.as_raw_fd(), libc::CLONE_NEWNET) };
        assert_eq!(rc, 0, "setns {path}: {}", std::io::Error::last_os_error());
        f()
    })
    .join()
    .expect("namespace thread")
}

fn socket_in(ns: &str, addr: &str) -> UdpSocket {
    let addr: SocketAddr = addr.parse().unwrap();
    in_namespace(ns, move || UdpSocket::bind(addr).unwrap())
}

/// What one case saw over its trials.
#[derive(Default)]
struct Tally {
    direct: usize,
    relayed: usize,
    not_offered: usize,
    took: Vec<Duration>,
}

impl Tally {
    fn report(&self, case: &str) {
        let mut took = self.took.clone();
        took.sort();
        let ms = |d: Duration| d.as_secs_f64() * 1000.0;
        let (median, max) = match (took.get(took.len() / 2), took.last()) {
            (Some(m), Some(x)) => (format!("{:.1} ms", ms(*m)), format!("{:.1} ms", ms(*x))),
            _ => ("-".into(), "-".into()),
        };
        println!(
            "NAT case {case}: {} trials, direct {} / relayed {} / not offered {}; consent to direct path median {median}, max {max}",
            self.direct + self.relayed + self.not_offered,
            self.direct,
            self.relayed,
            self.not_offered,
        );
    }
}

/// One session from hosta to hostb: both sides' view of the direct attempt must agree,
/// and input must arrive in order whatever the path.
async fn trial(
    topology: &Topology,
    options: &impl Fn(&str, Persona, Role) -> ClientOptions,
    packet: bool,
) -> (DirectOutcome, Option<Duration>) {
    let mut helper = within(Client::connect_on(
        options("192.0.2.1", Persona::Helper, Role::Helper),
        socket_in(&topology.ns("hosta"), "10.0.1.2:0"),
    ))
    .await
    .unwrap();
    let mut sharer = within(Client::connect_on(
        options("198.51.100.1", Persona::Sharer, Role::Sharer),
        socket_in(&topology.ns("hostb"), "10.0.2.2:0"),
    ))
    .await
    .unwrap();
    // Both are seen from their NAT's public address, never their private one.
    assert!(
        helper.observed_addr().starts_with("192.0.2.2:"),
        "{}",
        helper.observed_addr()
    );
    assert!(
        sharer.observed_addr().starts_with("198.51.100.2:"),
        "{}",
        sharer.observed_addr()
    );
    let created = within(helper.create_session(Mode::FullControl))
        .await
        .unwrap();
    let (helper_start, sharer_start) =
        join_and_consent(&mut helper, &mut sharer, &created.code).await;
    assert_eq!(helper_start.packet_path, packet);
    // On the packet path the peer connection comes up through the forwarder first.
    let peer_channels = if packet {
        let (h, s) = within(async {
            tokio::join!(
                secure::channels(&helper, &helper_start, Role::Helper),
                secure::channels(&sharer, &sharer_start, Role::Sharer)
            )
        })
        .await;
        Some((h.unwrap(), s.unwrap()))
    } else {
        None
    };
    let (helper_outcome, sharer_outcome) =
        within(async { tokio::join!(helper.direct_outcome(), sharer.direct_outcome()) }).await;
    let took = match (&helper_outcome, &sharer_outcome) {
        (DirectOutcome::Direct { took, peer }, DirectOutcome::Direct { .. }) => {
            // The helper reached the sharer at its NAT's public address.
            assert!(peer.to_string().starts_with("198.51.100.2:"), "{peer}");
            Some(*took)
        }
        (DirectOutcome::NotOffered, DirectOutcome::NotOffered)
        | (DirectOutcome::Relayed(_), DirectOutcome::Relayed(_)) => None,
        other => panic!("the two sides disagree: {other:?}"),
    };
    let expected = match helper_outcome {
        DirectOutcome::Direct { .. } => Path::Direct,
        _ => Path::Relayed,
    };
    if let Some((h, mut s)) = peer_channels {
        assert_eq!(h.verification_code(), s.verification_code());
        // Whatever the path, input arrives, in order; on a direct path the helper's peer
        // connection migrates to the sharer's address as soon as the sharer's packets come
        // from there (its acknowledgements of this input).
        let mut input = within(h.open_channel(Channel::Input)).await.unwrap();
        let receiving = async {
            let (_, mut input_in) = s.accept_channel().await.unwrap();
            let mut next = 0u32;
            while let Some(frame) = input_in.recv().await.unwrap() {
                assert_eq!(frame[..4], next.to_be_bytes(), "input lost or reordered");
                next += 1;
            }
            next
        };
        let sending = async {
            let mut sent = 0u32;
            while sent < 20 || helper.path() != expected || sharer.path() != expected {
                input.send(&sent.to_be_bytes()).await.unwrap();
                sent += 1;
            }
            input.finish().await.unwrap();
            sent
        };
        let (sent, received) = within(async { tokio::join!(sending, receiving) }).await;
        assert_eq!(sent, received);
        if expected == Path::Direct {
            // The sharer sends to the helper's NAT's public address.
            assert!(matches!(sharer_outcome, DirectOutcome::Direct { .. }));
        }
        within(helper.end_session()).await.unwrap();
        within(sharer.wait_for_end()).await;
        helper.close().await;
        sharer.close().await;
        return (helper_outcome, took);
    }
    // Whatever the path, input arrives, in order.
    let mut input = within(helper.open_unsealed_channel(Channel::Input))
        .await
        .unwrap();
    for i in 0..20u8 {
        within(input.send(Bytes::from(vec![i; 32]))).await.unwrap();
    }
    let (_, mut input_in) = within(sharer.accept_unsealed_channel()).await.unwrap();
    for i in 0..20u8 {
        let frame = within(input_in.recv()).await.unwrap().unwrap();
        assert_eq!(frame[0], i);
    }
    assert_eq!(helper.path(), expected);
    within(helper.end_session()).await.unwrap();
    within(sharer.wait_for_end()).await;
    helper.close().await;
    sharer.close().await;
    (helper_outcome, took)
}

async fn trials(
    test: &str,
    case: &str,
    nat_b: NatKind,
    relay_only: bool,
    concurrency: usize,
    packet: bool,
) -> Option<Tally> {
    let topology = build(test, case, nat_b)?;
    let public = topology.namespaces[0].clone();
    let relay = {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let handle = tokio::runtime::Handle::current();
        in_namespace(&public, move || {
            let relay = handle.block_on(async move {
                let mut builder = TestRelay::builder().plaintext_clients().config(|c| {
                    c.listen = "0.0.0.0:0".parse().unwrap();
                    // Every sharer joins from nat-b's one public address.
                    c.limits.joins_per_source_per_minute = 1000;
                });
                if relay_only {
                    builder = builder.policy("contoso", |p| p.relay_only = true);
                }
                builder.start().await
            });
            let _ = tx.send(relay);
        });
        rx.await.unwrap()
    };
    let port = relay.addr().port();
    let options = |relay_ip: &str, persona: Persona, role: Role| {
        let mut options = ClientOptions::new(
            format!("{relay_ip}:{port}").parse().unwrap(),
            RelayTrust::Pin(relay.handle.fingerprint()),
            relay.tenant("contoso").token(persona),
            role,
        );
        options.direct_path = true;
        options.packet_path = packet;
        if packet {
            // The peer connection's own TLS protects; nothing to opt out of.
            return options;
        }
        // The trial reads its input frames as sent (the relay's tenant allows it).
        options.insecure_plaintext_for_measurement()
    };
    let outcomes: Vec<(DirectOutcome, Option<Duration>)> = futures_util::stream::iter(0..TRIALS)
        .map(|_| trial(&topology, &options, packet))
        .buffer_unordered(concurrency)
        .collect()
        .await;
    let mut tally = Tally::default();
    for (outcome, took) in outcomes {
        match outcome {
            DirectOutcome::Direct { .. } => {
                tally.direct += 1;
                tally.took.extend(took);
            }
            DirectOutcome::NotOffered => tally.not_offered += 1,
            DirectOutcome::Relayed(_) => tally.relayed += 1,
        }
    }
    relay.wait_until_empty().await;
    relay.stop().await;
    drop(topology);
    tally.report(case);
    Some(tally)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_behind_endpoint_independent_nats_go_direct() {
    let Some(tally) = trials(
        "nat::both_behind_endpoint_independent_nats_go_direct",
        "eim",
        NatKind::EndpointIndependent,
        false,
        1,
        false,
    )
    .await
    else {
        return;
    };
    assert_eq!(tally.direct, TRIALS, "every trial must go direct");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_symmetric_nat_falls_back_to_the_relay() {
    let Some(tally) = trials(
        "nat::a_symmetric_nat_falls_back_to_the_relay",
        "sym",
        NatKind::Symmetric,
        false,
        TRIALS,
        false,
    )
    .await
    else {
        return;
    };
    assert_eq!(
        tally.relayed, TRIALS,
        "every trial must stay relayed (and work)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_only_makes_no_direct_attempt() {
    let Some(tally) = trials(
        "nat::relay_only_makes_no_direct_attempt",
        "ro",
        NatKind::EndpointIndependent,
        true,
        5,
        false,
    )
    .await
    else {
        return;
    };
    assert_eq!(
        tally.not_offered, TRIALS,
        "no trial may be offered a direct path"
    );
}

/// The packet path between two endpoint-independent NATs: the peer connection comes up
/// through the relay's forwarder, then migrates to the direct path in every trial, with no
/// input lost or reordered across the migration.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packet_path_migrates_to_direct_between_endpoint_independent_nats() {
    let Some(tally) = trials(
        "nat::the_packet_path_migrates_to_direct_between_endpoint_independent_nats",
        "peim",
        NatKind::EndpointIndependent,
        false,
        1,
        true,
    )
    .await
    else {
        return;
    };
    assert_eq!(
        tally.direct, TRIALS,
        "every trial must migrate to the direct path"
    );
}

/// The packet path behind a symmetric NAT: no direct path, so the relay forwards the peer
/// connection's packets for the whole session, and input arrives complete and in order.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_packet_path_is_relayed_behind_a_symmetric_nat() {
    let Some(tally) = trials(
        "nat::the_packet_path_is_relayed_behind_a_symmetric_nat",
        "psym",
        NatKind::Symmetric,
        false,
        TRIALS,
        true,
    )
    .await
    else {
        return;
    };
    assert_eq!(
        tally.relayed, TRIALS,
        "every trial must stay relayed (and work)"
    );
}
