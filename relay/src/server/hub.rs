//! The hub: shared state of one relay node — the session [`Registry`], a link to every
//! authenticated connection, and the current [`Policies`] — and the only place that turns
//! registry outcomes into [`Event`]s for connection tasks.
//!
//! One `std::sync::Mutex` guards the state. It is never held across an `.await`: every
//! method locks, decides, collects what to send, unlocks, then sends with `try_send`.
//! Policy is a snapshot behind an `RwLock<Arc<_>>`, swapped whole on reload, so a request
//! is decided by one consistent policy and active sessions are never cut; only what they
//! ask for next (a raised mode) is decided by the new one.

use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, RwLock};
use std::time::{Duration, Instant, SystemTime};

use remote_help_proto::{ErrorCode, v1};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

use super::forward::ChannelCounters;
use super::keys::TenantKeyFetchers;
use crate::audit::{AuditEvent, AuditLog, EndedBy, EventKind, NO_USER, rfc3339};
use crate::auth::{Principal, PrincipalKind, Verifier};
use crate::config::Config;
use crate::core::code::SessionCode;
use crate::core::limits::Limiter;
use crate::core::path::{Candidates, Path, PathChange, PathTracker, schedule};
use crate::core::policy::{Refusal, TenantPolicy};
use crate::core::registry::{
    Consented, Created, Ended, ModeRequest, Party, Registry, RegistryLimits,
};
use crate::core::{ConnId, Mode, Role, SessionId, TenantId};

mod packet_path;
mod records;
use packet_path::{LockMetrics, packet_paths};
pub use records::{Refused, SessionRecord};
use records::{set_helper, set_sharer};

/// Events the hub delivers to a connection task about its session.
#[derive(Debug)]
pub enum Event {
    /// To the helper: a sharer joined; with `compliance_warning` the helper must confirm.
    PeerJoined {
        /// The session.
        session: SessionId,
        /// The sharer.
        sharer: Arc<Principal>,
        /// The sharer's device is not compliant.
        compliance_warning: bool,
    },
    /// To the sharer: a consent prompt (after a compliance confirmation, or for a raised mode).
    AskConsent {
        /// The session.
        session: SessionId,
        /// The helper asking.
        helper: Arc<Principal>,
        /// The mode asked for.
        mode: Mode,
        /// Whether this raises the mode of an active session.
        mode_change: bool,
        /// When the prompt expires.
        deadline: Instant,
    },
    /// The session started: data may flow to `peer`.
    Started {
        /// The session.
        session: SessionId,
        /// The active mode.
        mode: Mode,
        /// The other party's connection, where this side's data streams go.
        peer: super::party::Party,
        /// The other party (sent to a device agent, which had no join step).
        peer_profile: Arc<Principal>,
        /// Whether the tenant allows chat.
        chat_allowed: bool,
        /// Where this side's forwarded bytes are counted.
        counters: Arc<ChannelCounters>,
        /// This side's direct-path offer, sent right after `SessionStarted`.
        direct: Option<v1::DirectPathOffer>,
        /// What this side is told about end-to-end protection.
        e2e: E2eAnnouncement,
        /// This side's packet path, when the session takes it.
        packet_path: Option<v1::PacketPath>,
    },
    /// The session's mode changed.
    ModeChanged {
        /// The session.
        session: SessionId,
        /// The new mode.
        mode: Mode,
    },
    /// A mode request did not go through (declined, timed out, or refused by a policy
    /// reloaded while the sharer was asked); the session goes on.
    ModeRefused {
        /// The session.
        session: SessionId,
        /// `MODE_DECLINED`, `CONSENT_TIMEOUT`, or the policy's code (`TENANT_DISABLED`, …).
        reason: ErrorCode,
    },
    /// The session is over.
    Ended {
        /// The session.
        session: SessionId,
        /// Why, as the party is told.
        reason: ErrorCode,
    },
}

/// Capacity of each connection's event queue. The protocol produces a handful of events
/// per session and a connection has one session at a time, so a full queue means the
/// task is stuck; events to it are then dropped (its own cleanup follows).
pub const EVENT_QUEUE: usize = 16;

/// What the hub keeps about one authenticated connection.
#[derive(Debug, Clone)]
pub struct ConnLink {
    /// Where to send this connection's events.
    pub events: mpsc::Sender<Box<Event>>,
    /// The QUIC connection, so its peer can open data streams on it.
    pub connection: super::party::Party,
    /// Who authenticated on it.
    pub principal: Arc<Principal>,
    /// What it offered for direct paths, if anything.
    pub candidates: Option<Arc<Candidates>>,
    /// The end-to-end protection suites it announced in `Hello`.
    pub e2e_suites: Arc<[u32]>,
    /// Its `Hello.peer_certificate_sha256` when it announced `Hello.packet_path` (a native
    /// client only): the packet path is possible for it.
    /// Shared, so a link stays small (it is cloned into every start).
    pub packet_path: Option<Arc<[u8; 32]>>,
}

/// What one party is told in `SessionStarted` about end-to-end protection.
#[derive(Debug, Clone)]
pub struct E2eAnnouncement {
    /// The session's suite (0: none in common).
    pub suite: u32,
    /// The suites the other party announced, in its order.
    pub peer_suites: Arc<[u32]>,
}

/// Token verification and every tenant's policy, as one consistent snapshot.
#[derive(Debug)]
pub struct Policies {
    /// Verifies tokens of every configured tenant.
    pub verifier: Verifier,
    tenants: HashMap<TenantId, TenantPolicy>,
    /// The browser sign-ins the Monitor page offers (tenants with `web_sign_in`).
    pub sign_in: Vec<super::monitor::SignInChoice>,
    /// The browser sign-ins the web helper page offers: the same tenants, for tokens of
    /// their session audience.
    pub helper_sign_in: Vec<super::monitor::SignInChoice>,
}

impl Policies {
    /// The snapshot for `config`, with the shared key sets of its tenants configured by URL
    /// from `fetchers` (which must have adopted `config`).
    pub fn from_config(config: &Config, fetchers: &TenantKeyFetchers) -> Policies {
        let trust = config.tenants.iter().map(|t| {
            let mut trust = t.trust.clone();
            if let Some(keys) = fetchers.keys_of(&trust.id) {
                trust.keys = keys;
            }
            trust
        });
        Policies {
            verifier: Verifier::new(
                config.audience.clone(),
                config.token_leeway,
                trust.collect(),
            )
            .with_admin_audience(
                config.admin_audience.clone(),
                config
                    .tenants
                    .iter()
                    .filter_map(|t| Some((t.trust.id.clone(), t.admin_audience.clone()?)))
                    .collect(),
            ),
            tenants: config
                .tenants
                .iter()
                .map(|t| (t.trust.id.clone(), t.policy.clone()))
                .collect(),
            sign_in: super::monitor::SignInChoice::from_config(config),
            helper_sign_in: super::monitor::SignInChoice::for_helpers(config),
        }
    }

    /// The policy of `tenant`; a tenant without one (removed by a reload) is disabled.
    pub fn tenant(&self, tenant: &TenantId) -> TenantPolicy {
        self.tenants.get(tenant).cloned().unwrap_or_default()
    }
}

/// A successful join, as the joining sharer's task needs it.
#[derive(Debug)]
pub enum JoinOutcome {
    /// Ask the sharer now.
    AskConsent {
        /// The session.
        session: SessionId,
        /// The helper to show in the consent prompt.
        helper: Arc<Principal>,
        /// The requested mode.
        mode: Mode,
        /// When the prompt expires.
        deadline: Instant,
    },
    /// The helper must first confirm a compliance warning; the sharer waits.
    AwaitingHelper {
        /// The session.
        session: SessionId,
    },
}

/// The sharer's consent, as the sharer's task needs it.
#[derive(Debug)]
pub enum ConsentOutcome {
    /// Accepted: call [`Hub::begin`] to record the start and tell the helper.
    Started(PendingStart),
    /// Declined: the helper has been told.
    Declined,
    /// A raised mode was accepted: the helper has been told.
    ModeChanged(Mode),
    /// A raised mode was declined: the helper has been told.
    ModeDeclined,
    /// The sharer accepted a raised mode, but the policy now in force (reloaded while the
    /// prompt was open) refuses it: the mode stays; the helper has been told the code.
    ModeWithdrawn(Refusal),
}

/// A session the registry made active, not yet recorded or announced. [`Hub::begin`]
/// writes its start event, durably, before either party is told.
#[derive(Debug)]
pub struct PendingStart {
    /// The session.
    pub session: SessionId,
    /// Its mode.
    pub mode: Mode,
    /// Whether the tenant allows chat.
    pub chat_allowed: bool,
    /// The helper's reason or ticket reference.
    pub reason: String,
    /// The helper.
    pub helper: ConnLink,
    /// The sharer (or device agent).
    pub sharer: ConnLink,
    /// Which of the two is calling `begin` (the other one is sent `Event::Started`).
    pub caller: Role,
}

impl PendingStart {
    /// The other party, from the caller's point of view.
    pub fn peer(&self) -> &ConnLink {
        match self.caller {
            Role::Helper => &self.sharer,
            Role::Sharer => &self.helper,
        }
    }
}

/// What [`Hub::begin`] gives the calling side.
#[derive(Debug)]
pub struct Begun {
    /// Where this side's forwarded bytes are counted.
    pub counters: Arc<ChannelCounters>,
    /// This side's direct-path offer, if one is made.
    pub direct: Option<v1::DirectPathOffer>,
    /// This side's end-to-end announcement.
    pub e2e: E2eAnnouncement,
    /// This side's packet path, when the session takes it (PROTOCOL.md §8a).
    pub packet_path: Option<v1::PacketPath>,
}

/// The two parties' direct-path offers (helper's, sharer's) when both offered candidates.
/// The helper dials and the sharer listens; each learns the other's addresses (observed
/// first) and certificate, and when to start (see [`crate::core::path::schedule`]).
fn direct_offers(
    session: &SessionId,
    helper: &ConnLink,
    sharer: &ConnLink,
) -> Option<(v1::DirectPathOffer, v1::DirectPathOffer)> {
    let (helper_candidates, sharer_candidates) =
        (helper.candidates.as_ref()?, sharer.candidates.as_ref()?);
    let plan = schedule(helper.connection.rtt(), sharer.connection.rtt());
    let ms = |d: Duration| u32::try_from(d.as_millis()).unwrap_or(u32::MAX);
    let offer =
        |dial: bool, start: Duration, peer: &Candidates, peer_conn: &super::party::Party| {
            v1::DirectPathOffer {
                session_id: session.to_string(),
                dial,
                peer_addresses: peer
                    .for_peer(peer_conn.remote_address())
                    .iter()
                    .map(ToString::to_string)
                    .collect(),
                peer_certificate_sha256: peer.certificate_sha256.to_vec(),
                start_in_ms: ms(start),
                attempts: plan.attempts,
                attempt_interval_ms: ms(plan.interval),
                deadline_ms: ms(plan.deadline),
                rtt_estimate_ms: ms(plan.rtt_estimate),
            }
        };
    Some((
        offer(
            true,
            plan.helper_start,
            sharer_candidates,
            &sharer.connection,
        ),
        offer(
            false,
            plan.sharer_start,
            helper_candidates,
            &helper.connection,
        ),
    ))
}

/// An active session as the admin endpoint lists it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct ActiveSession {
    /// The session id.
    pub session_id: String,
    /// The tenant.
    pub tenant: String,
    /// Helper object id and name.
    pub helper_id: String,
    /// Helper display name.
    pub helper_name: String,
    /// Sharer object id, or `--`.
    pub sharer_id: String,
    /// Sharer display name, or `--`.
    pub sharer_name: String,
    /// Device name, if known.
    pub device_name: Option<String>,
    /// Current mode.
    pub mode: String,
    /// Start, RFC 3339 UTC.
    pub start_time: String,
    /// Seconds since the start.
    pub duration_secs: f64,
    /// Bytes helper → sharer.
    pub bytes_helper_to_sharer: u64,
    /// Bytes sharer → helper.
    pub bytes_sharer_to_helper: u64,
}

/// A helper's mode request, applied.
#[derive(Debug)]
pub enum ModeOutcome {
    /// The sharer has been asked.
    AskedSharer,
    /// In effect now (lowered); the sharer has been told.
    Changed(Mode),
}

/// Token buckets for the request rates the relay limits.
struct Limiters {
    joins_by_source: Limiter<std::net::IpAddr>,
    joins_by_tenant: Limiter<TenantId>,
    setups_by_tenant: Limiter<TenantId>,
}

struct State {
    registry: Registry,
    links: HashMap<ConnId, ConnLink>,
    records: HashMap<SessionId, SessionRecord>,
    /// Sessions whose end event is being written by the task that ended them: another
    /// task that finds the session already gone waits on this before telling its party,
    /// so nobody hears of an end before it is on disk (both parties' tasks end the same
    /// session at once when the relay shuts down).
    ending: HashMap<SessionId, tokio::sync::watch::Receiver<bool>>,
}

/// Shared state of the relay node.
pub struct Hub {
    state: Mutex<State>,
    /// How contended `state` is (issue: one lock for every session's control events): every
    /// acquisition counted, and the wait of each that found it held.
    state_lock: LockMetrics,
    policies: RwLock<Arc<Policies>>,
    /// The admin API's bearer token, replaced on reload (rotating it needs no restart).
    admin_token: RwLock<Option<Arc<str>>>,
    /// Fetches the keys of tenants configured by URL; their sets are shared with `policies`.
    pub key_fetchers: TenantKeyFetchers,
    next_conn: AtomicU64,
    /// The relay's configuration as started (reloads change only `policies`).
    pub config: Config,
    /// The durable audit log.
    pub audit: AuditLog,
    /// Cancelled when the relay starts draining: no new sessions.
    pub draining: CancellationToken,
    /// Cancelled when an administrator asks for a drain (`POST /admin/drain`): the relay
    /// then shuts down as on SIGTERM.
    pub drain_requested: CancellationToken,
    /// Cancelled when every remaining connection must close now.
    pub stopping: CancellationToken,
    open_connections: AtomicU64,
    /// Live per-connection tasks (connection, tag readers, forwarders), for leak checks.
    tasks: AtomicU64,
    /// Connections not yet authenticated.
    unauthenticated: AtomicU64,
    /// Open connections per source IP address.
    per_source: Mutex<HashMap<std::net::IpAddr, u32>>,
    /// Rate limits on joins and session setups.
    limiters: Mutex<Limiters>,
    /// Woken whenever sessions or connections come or go (for tests and admin views).
    pub changed: tokio::sync::Notify,
    /// The packet path's routing table, shared with every relay socket.
    pub forwarder: Arc<super::forwarder::Forwarder>,
}

impl Hub {
    /// A hub for `config`, whose packet-path sessions go through `forwarder`.
    pub fn new(
        config: Config,
        audit: AuditLog,
        forwarder: Arc<super::forwarder::Forwarder>,
    ) -> Hub {
        let key_fetchers = TenantKeyFetchers::new(config.state_dir.clone());
        key_fetchers.adopt(&config);
        let limiters = Limiters {
            joins_by_source: Limiter::new(config.limits.join_rate_per_source()),
            joins_by_tenant: Limiter::new(config.limits.join_rate_per_tenant()),
            setups_by_tenant: Limiter::new(config.limits.setup_rate_per_tenant()),
        };
        Hub {
            state_lock: LockMetrics::new(),
            state: Mutex::new(State {
                registry: {
                    let registry = Registry::new(RegistryLimits {
                        code_ttl: config.code_ttl,
                        code_memory: config.code_ttl.max(std::time::Duration::from_secs(600)),
                        consent_timeout: config.consent_timeout,
                        wrong_attempts_per_code: config.limits.wrong_attempts_per_code,
                    });
                    match &config.cluster {
                        Some(cluster) => registry.on_node(cluster.node),
                        None => registry,
                    }
                },
                links: HashMap::new(),
                records: HashMap::new(),
                ending: HashMap::new(),
            }),
            audit,
            policies: RwLock::new(Arc::new(Policies::from_config(&config, &key_fetchers))),
            key_fetchers,
            admin_token: RwLock::new(config.admin.token.as_deref().map(Arc::from)),
            next_conn: AtomicU64::new(1),
            tasks: AtomicU64::new(0),
            config,
            draining: CancellationToken::new(),
            drain_requested: CancellationToken::new(),
            stopping: CancellationToken::new(),
            open_connections: AtomicU64::new(0),
            unauthenticated: AtomicU64::new(0),
            per_source: Mutex::new(HashMap::new()),
            limiters: Mutex::new(limiters),
            changed: tokio::sync::Notify::new(),
            forwarder,
        }
    }

    /// The current policy snapshot.
    pub fn policies(&self) -> Arc<Policies> {
        self.policies
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Replaces tenants, keys, policies and the admin token with `config`'s. New requests
    /// use them (a raise in a running session is one, asked and answered); active sessions
    /// carry on as they are.
    pub fn reload(&self, config: &Config) {
        self.key_fetchers.adopt(config);
        let fresh = Arc::new(Policies::from_config(config, &self.key_fetchers));
        *self
            .policies
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) = fresh;
        *self
            .admin_token
            .write()
            .unwrap_or_else(|poisoned| poisoned.into_inner()) =
            config.admin.token.as_deref().map(Arc::from);
    }

    /// The admin API's bearer token now; `None` when none is configured.
    pub fn admin_token(&self) -> Option<Arc<str>> {
        self.admin_token
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .clone()
    }

    /// Locks the state for a change; watchers are woken once the guard is dropped.
    fn lock(&self) -> Changing<'_> {
        Changing {
            guard: self.read(),
            changed: &self.changed,
        }
    }

    /// Locks the state to read it.
    fn read(&self) -> MutexGuard<'_, State> {
        self.state_lock.acquisitions.increment(1);
        // A panic while holding the lock would be a bug; the state itself stays
        // consistent per call, so keep serving rather than poisoning every connection.
        match self.state.try_lock() {
            Ok(guard) => guard,
            Err(std::sync::TryLockError::Poisoned(poisoned)) => poisoned.into_inner(),
            Err(std::sync::TryLockError::WouldBlock) => {
                let waiting = std::time::Instant::now();
                let guard = self
                    .state
                    .lock()
                    .unwrap_or_else(|poisoned| poisoned.into_inner());
                self.state_lock.contended.increment(1);
                self.state_lock
                    .wait_seconds
                    .record(waiting.elapsed().as_secs_f64());
                guard
            }
        }
    }

    /// Wraps a task the relay spawns so that it is counted while it lives; a count that
    /// does not return to zero after the clients leave is a leaked task.
    pub fn tracked<F: std::future::Future>(
        self: &Arc<Self>,
        task: F,
    ) -> impl std::future::Future<Output = F::Output> + use<F> {
        self.tasks.fetch_add(1, Ordering::Relaxed);
        let guard = TaskGuard(self.clone());
        async move {
            let _guard = guard;
            task.await
        }
    }

    /// Live tracked tasks.
    pub fn live_tasks(&self) -> u64 {
        self.tasks.load(Ordering::Relaxed)
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Admits a new connection from `source` against the connection limits, counting it
    /// as open and unauthenticated; the guard un-counts it. `Err` names the limit hit.
    pub fn admit_connection(
        self: &Arc<Self>,
        source: std::net::IpAddr,
    ) -> Result<OpenConnection, &'static str> {
        let limits = &self.config.limits;
        if self.open_connections() >= limits.max_connections as u64 {
            return Err("max_connections");
        }
        if self.open_connections() >= limits.connection_cap() as u64 {
            return Err("max_buffered");
        }
        if self.unauthenticated() >= limits.max_unauthenticated_connections as u64 {
            return Err("max_unauthenticated");
        }
        {
            let mut per_source = self.per_source.lock().unwrap_or_else(|p| p.into_inner());
            let count = per_source.entry(source).or_insert(0);
            if *count as usize >= limits.max_connections_per_source {
                return Err("max_per_source");
            }
            *count += 1;
        }
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        self.unauthenticated.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("relay_connections_open").increment(1.0);
        Ok(OpenConnection {
            hub: self.clone(),
            source,
            authenticated: false,
        })
    }

    /// May a sharer at `source` of `tenant` try a code now? Refused attempts are counted too,
    /// so guessing stays slow however it is spread.
    pub fn allow_join(&self, source: std::net::IpAddr, tenant: &TenantId) -> Result<(), ErrorCode> {
        let now = Instant::now();
        let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
        let by_source = limiters.joins_by_source.allow(&source, now);
        let by_tenant = limiters.joins_by_tenant.allow(tenant, now);
        if by_source && by_tenant {
            return Ok(());
        }
        let which = if by_source {
            "join_per_tenant"
        } else {
            "join_per_source"
        };
        metrics::counter!("relay_rate_limited_total", "limit" => which).increment(1);
        Err(ErrorCode::RateLimited)
    }

    /// May `tenant` set up another session now (rate and concurrent sessions)?
    pub fn allow_setup(&self, tenant: &TenantId) -> Result<(), ErrorCode> {
        if self.read().registry.tenant_sessions(tenant)
            >= self.config.limits.max_sessions_per_tenant
        {
            metrics::counter!("relay_rate_limited_total", "limit" => "sessions_per_tenant")
                .increment(1);
            return Err(ErrorCode::LimitExceeded);
        }
        let allowed = self
            .limiters
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .setups_by_tenant
            .allow(tenant, Instant::now());
        if allowed {
            Ok(())
        } else {
            metrics::counter!("relay_rate_limited_total", "limit" => "setups_per_tenant")
                .increment(1);
            Err(ErrorCode::RateLimited)
        }
    }

    /// Connections that have not authenticated yet.
    pub fn unauthenticated(&self) -> u64 {
        self.unauthenticated.load(Ordering::Relaxed)
    }

    /// Connections currently open (handshaking, authenticating or authenticated).
    pub fn open_connections(&self) -> u64 {
        self.open_connections.load(Ordering::Relaxed)
    }

    /// Registers an authenticated connection.
    pub fn register(&self, id: ConnId, link: ConnLink) {
        self.lock().links.insert(id, link);
    }

    /// Forgets a connection (its session must have been ended first), and its device
    /// registration if it had one.
    pub fn unregister(&self, id: ConnId) {
        let mut state = self.lock();
        state.links.remove(&id);
        state.registry.unregister_device(id);
    }

    /// Sessions in any state, remembered codes, and registered connections.
    pub fn counts(&self) -> (usize, usize, usize) {
        let state = self.read();
        (
            state.registry.len(),
            state.registry.remembered_codes(),
            state.links.len(),
        )
    }

    /// Active sessions on a direct path.
    pub fn direct_sessions(&self) -> usize {
        self.read()
            .records
            .values()
            .filter(|r| r.path.path() == Path::Direct)
            .count()
    }

    /// A helper opens a session.
    pub fn create(
        &self,
        helper: ConnId,
        principal: &Principal,
        mode: Mode,
        reason: &str,
    ) -> Created {
        let mut rng = rand::rng();
        let party = Party {
            conn: helper,
            tenant: principal.tenant.clone(),
        };
        let mut state = self.lock();
        let created = state.registry.create(party, mode, Instant::now(), &mut rng);
        state.registry.set_reason(&created.session, reason);
        created
    }

    /// A sharer joins by code. Policy decides before the sharer sees anything of the
    /// helper: a refusal ends the session for both.
    pub fn join(
        &self,
        sharer: ConnId,
        principal: &Arc<Principal>,
        code: SessionCode,
    ) -> Result<JoinOutcome, (ErrorCode, String)> {
        let party = Party {
            conn: sharer,
            tenant: principal.tenant.clone(),
        };
        let now = Instant::now();
        let (joined, helper) = {
            let mut state = self.lock();
            match state.registry.join(code, party, now) {
                Ok(joined) => {
                    let helper = state.links.get(&joined.helper).cloned();
                    (joined, helper)
                }
                Err(refused) => {
                    let burned_helper = refused
                        .burned
                        .as_ref()
                        .and_then(|b| state.links.get(&b.helper).cloned());
                    let owner_helper = refused
                        .owner
                        .as_ref()
                        .and_then(|o| o.helper)
                        .and_then(|c| state.links.get(&c).map(|l| l.principal.clone()));
                    drop(state);
                    if let Some(owner) = &refused.owner {
                        self.refused(Refused {
                            code: refused.error,
                            session: &SessionId::empty(),
                            refused_role: Role::Sharer,
                            helper: None,
                            sharer: Some(principal),
                        });
                        self.cross_tenant_in_owner(
                            &owner.tenant,
                            owner.session.as_ref(),
                            Role::Sharer,
                            owner_helper.as_deref(),
                            None,
                        );
                    }
                    if let Some(burned) = refused.burned {
                        self.code_burned(principal, &burned.session, burned_helper.as_ref());
                    }
                    let error = refused.error;
                    return Err((error, error.describe().to_string()));
                }
            }
        };
        let Some(helper) = helper else {
            // The helper vanished between creating and this join; its cleanup ends
            // the session too, but make sure the sharer is not left waiting.
            self.lock().registry.end(&joined.session);
            return Err((ErrorCode::PeerLost, ErrorCode::PeerLost.describe().into()));
        };
        let policy = self.policies().tenant(&principal.tenant);
        let sharer_suites = self
            .read()
            .links
            .get(&sharer)
            .map(|l| l.e2e_suites.clone())
            .unwrap_or_else(|| Arc::from([]));
        // Protection is decided with the rest of policy, before the sharer is asked.
        if let Err(refusal) = policy
            .may_help(&helper.principal, principal, joined.mode)
            .and_then(|()| policy.protection(&helper.e2e_suites, &sharer_suites))
        {
            self.refuse_joined(&joined.session, &helper, principal, &refusal);
            return Err((refusal.code(), refusal.message()));
        }
        let non_compliant = principal.device.as_ref().is_some_and(|d| !d.compliant);
        if non_compliant {
            self.lock()
                .registry
                .require_compliance(&joined.session)
                .map_err(|code| (code, code.describe().to_string()))?;
        }
        deliver(
            &helper,
            Event::PeerJoined {
                session: joined.session.clone(),
                sharer: principal.clone(),
                compliance_warning: non_compliant,
            },
        );
        if non_compliant {
            return Ok(JoinOutcome::AwaitingHelper {
                session: joined.session,
            });
        }
        Ok(JoinOutcome::AskConsent {
            session: joined.session,
            helper: helper.principal,
            mode: joined.mode,
            deadline: now + self.config.consent_timeout,
        })
    }

    /// A wrong attempt burned an open code: its session ends, its helper is told
    /// `CODE_BURNED` (and must create a new session), and the audit log records who made
    /// the attempt that burned it.
    fn code_burned(&self, burner: &Principal, session: &SessionId, helper: Option<&ConnLink>) {
        warn!(
            session = %session,
            tenant = %burner.tenant,
            subject = %burner.subject,
            "session code burned by too many wrong attempts against it"
        );
        metrics::counter!("relay_codes_burned_total").increment(1);
        self.refused_and_ended(burner, session, ErrorCode::CodeBurned, helper);
    }

    /// A session that never started ends because of the sharer `party`: the refusal is
    /// audited under `party`'s tenant (with the helper, when known), then the helper (if
    /// still connected) is told why.
    fn refused_and_ended(
        &self,
        party: &Principal,
        session: &SessionId,
        code: ErrorCode,
        helper: Option<&ConnLink>,
    ) {
        self.refused(Refused {
            code,
            session,
            refused_role: Role::Sharer,
            helper: helper.map(|h| h.principal.as_ref()),
            sharer: Some(party),
        });
        if let Some(helper) = helper {
            deliver(
                helper,
                Event::Ended {
                    session: session.clone(),
                    reason: code,
                },
            );
        }
    }

    fn refuse_joined(
        &self,
        session: &SessionId,
        helper: &ConnLink,
        sharer: &Principal,
        refusal: &Refusal,
    ) {
        self.lock().registry.end(session);
        metrics::counter!("relay_policy_refusals_total", "code" => refusal.code().as_str_name())
            .increment(1);
        self.refused_and_ended(sharer, session, refusal.code(), Some(helper));
    }

    /// The helper answers a compliance warning. On `proceed` the sharer is asked to
    /// consent; otherwise the session ends for both with `COMPLIANCE_NOT_CONFIRMED`.
    pub fn confirm_compliance(
        &self,
        helper: ConnId,
        session: &SessionId,
        proceed: bool,
    ) -> Result<bool, ErrorCode> {
        let now = Instant::now();
        let (sharer, helper_principal, mode) = {
            let mut state = self.lock();
            let mode = state.registry.get(session).map(|s| s.mode);
            let sharer_conn = state
                .registry
                .get(session)
                .and_then(|s| s.sharer.as_ref().map(|p| p.conn));
            let outcome = state
                .registry
                .confirm_compliance(session, helper, proceed, now)?;
            let sharer = sharer_conn.and_then(|c| state.links.get(&c).cloned());
            let helper_principal = state.links.get(&helper).map(|l| l.principal.clone());
            if outcome.is_none() {
                drop(state);
                if let Some(sharer) = sharer {
                    deliver(
                        &sharer,
                        Event::Ended {
                            session: session.clone(),
                            reason: ErrorCode::ComplianceNotConfirmed,
                        },
                    );
                }
                return Ok(false);
            }
            (sharer, helper_principal, mode)
        };
        if let (Some(sharer), Some(helper_principal), Some(mode)) = (sharer, helper_principal, mode)
        {
            deliver(
                &sharer,
                Event::AskConsent {
                    session: session.clone(),
                    helper: helper_principal,
                    mode,
                    mode_change: false,
                    deadline: now + self.config.consent_timeout,
                },
            );
        }
        Ok(true)
    }

    /// The sharer answers a consent prompt; the helper is told either way.
    pub fn consent(
        &self,
        sharer: ConnId,
        session: &SessionId,
        accept: bool,
    ) -> Result<ConsentOutcome, ErrorCode> {
        // A raise is decided again by the policy in force when the sharer accepts: a reload
        // that disabled the tenant (or took the permission away) while the prompt was open
        // stops it, as it would have stopped the request.
        let withdrawn = if accept {
            self.raise_withdrawn(session, sharer)
        } else {
            None
        };
        let accept = accept && withdrawn.is_none();
        let (outcome, helper_link, sharer_link) = {
            let mut state = self.lock();
            let outcome = state.registry.consent(session, sharer, accept)?;
            let helper = match &outcome {
                Consented::Started { helper, .. }
                | Consented::ModeChanged { helper, .. }
                | Consented::ModeDeclined { helper } => *helper,
                Consented::Declined(ended) => ended.helper,
            };
            let helper_link = state.links.get(&helper).cloned();
            let sharer_link = state.links.get(&sharer).cloned();
            (outcome, helper_link, sharer_link)
        };
        let Some(helper) = helper_link else {
            self.end_unstarted(session);
            return Err(ErrorCode::PeerLost);
        };
        match outcome {
            Consented::Started { mode, .. } => {
                let Some(sharer_link) = sharer_link else {
                    self.end_unstarted(session);
                    return Err(ErrorCode::PeerLost);
                };
                let chat_allowed = !self
                    .policies()
                    .tenant(&sharer_link.principal.tenant)
                    .disable_chat;
                let reason = self
                    .read()
                    .registry
                    .get(session)
                    .map(|s| s.reason.clone())
                    .unwrap_or_default();
                Ok(ConsentOutcome::Started(PendingStart {
                    session: session.clone(),
                    mode,
                    chat_allowed,
                    reason,
                    helper,
                    sharer: sharer_link,
                    caller: Role::Sharer,
                }))
            }
            Consented::Declined(_) => {
                self.refused(Refused {
                    code: ErrorCode::Declined,
                    session,
                    refused_role: Role::Sharer,
                    helper: Some(&helper.principal),
                    sharer: sharer_link.as_ref().map(|l| l.principal.as_ref()),
                });
                deliver(
                    &helper,
                    Event::Ended {
                        session: session.clone(),
                        reason: ErrorCode::Declined,
                    },
                );
                Ok(ConsentOutcome::Declined)
            }
            Consented::ModeChanged { mode, .. } => Ok(ConsentOutcome::ModeChanged(mode)),
            Consented::ModeDeclined { .. } => {
                let reason = withdrawn
                    .as_ref()
                    .map_or(ErrorCode::ModeDeclined, Refusal::code);
                if withdrawn.is_some() {
                    metrics::counter!("relay_policy_refusals_total", "code" => reason.as_str_name())
                        .increment(1);
                    info!(%session, code = reason.as_str_name(), "raised mode refused by the policy now in force");
                }
                deliver(
                    &helper,
                    Event::ModeRefused {
                        session: session.clone(),
                        reason,
                    },
                );
                Ok(match withdrawn {
                    Some(refusal) => ConsentOutcome::ModeWithdrawn(refusal),
                    None => ConsentOutcome::ModeDeclined,
                })
            }
        }
    }

    /// Whether the current policy refuses the raise `session` waits for (the sharer on
    /// connection `sharer` is answering it); `None` when there is no such raise or it is
    /// still allowed.
    fn raise_withdrawn(&self, session: &SessionId, sharer: ConnId) -> Option<Refusal> {
        let (mode, helper, sharer) = {
            let state = self.read();
            let entry = state.registry.get(session)?;
            let mode = entry.requested_mode?;
            if entry.sharer.as_ref().map(|p| p.conn) != Some(sharer) {
                return None;
            }
            let helper = state.links.get(&entry.helper.conn)?.principal.clone();
            let sharer = state.links.get(&sharer)?.principal.clone();
            (mode, helper, sharer)
        };
        self.policies()
            .tenant(&helper.tenant)
            .may_help(&helper, &sharer, mode)
            .err()
    }

    /// The helper asks for another mode. Raising it needs the permission for this sharer
    /// and the sharer's consent; lowering it takes effect at once.
    pub fn request_mode(
        &self,
        helper: ConnId,
        principal: &Principal,
        session: &SessionId,
        mode: Mode,
    ) -> Result<ModeOutcome, (ErrorCode, String)> {
        let sharer = {
            let state = self.read();
            state
                .registry
                .get(session)
                .and_then(|s| s.sharer.as_ref())
                .and_then(|p| state.links.get(&p.conn).cloned())
        };
        let Some(sharer) = sharer else {
            return Err((ErrorCode::ProtocolViolation, "no active session".into()));
        };
        let current = self.read().registry.get(session).map(|s| s.mode);
        if current.is_some_and(|c| mode > c) {
            let policy = self.policies().tenant(&principal.tenant);
            policy
                .may_help(principal, &sharer.principal, mode)
                .map_err(|r| (r.code(), r.message()))?;
        }
        let outcome = self
            .lock()
            .registry
            .request_mode(session, helper, mode, Instant::now())
            .map_err(|code| match code {
                ErrorCode::SessionBusy => (
                    code,
                    "a mode change is already waiting for the sharer's answer".to_string(),
                ),
                _ => (
                    code,
                    format!("mode change not possible now: {}", code.describe()),
                ),
            })?;
        match outcome {
            ModeRequest::NeedsConsent { deadline, .. } => {
                deliver(
                    &sharer,
                    Event::AskConsent {
                        session: session.clone(),
                        helper: Arc::new(principal.clone()),
                        mode,
                        mode_change: true,
                        deadline,
                    },
                );
                Ok(ModeOutcome::AskedSharer)
            }
            ModeRequest::Changed { .. } => Ok(ModeOutcome::Changed(mode)),
        }
    }

    /// A device agent registers to wait for unattended sessions.
    pub fn register_device(
        &self,
        agent: ConnId,
        principal: &Principal,
    ) -> Result<String, ErrorCode> {
        let device_id = principal
            .device
            .as_ref()
            .map(|d| d.device_id.clone())
            .filter(|id| !id.is_empty())
            .ok_or(ErrorCode::WrongRole)?;
        self.lock().registry.register_device(
            Party {
                conn: agent,
                tenant: principal.tenant.clone(),
            },
            &device_id,
        )?;
        Ok(device_id)
    }

    /// A helper connects to a registered device agent: no code, no consent. The session
    /// is active in the registry; [`Hub::begin`] records and announces it.
    pub fn connect_unattended(
        &self,
        helper: ConnId,
        principal: &Arc<Principal>,
        device_id: &str,
        reason: String,
    ) -> Result<PendingStart, (ErrorCode, String)> {
        let agent = {
            let state = self.read();
            state
                .registry
                .device_agent(&principal.tenant, device_id)
                .and_then(|c| state.links.get(&c).cloned())
        };
        let policy = self.policies().tenant(&principal.tenant);
        let helper_suites = self
            .read()
            .links
            .get(&helper)
            .map(|l| l.e2e_suites.clone())
            .unwrap_or_else(|| Arc::from([]));
        if let Some(agent) = &agent {
            policy
                .may_help(principal, &agent.principal, Mode::Unattended)
                .and_then(|()| policy.protection(&helper_suites, &agent.e2e_suites))
                .map_err(|r| {
                    metrics::counter!("relay_policy_refusals_total", "code" => r.code().as_str_name()).increment(1);
                    self.refused(Refused {
                        code: r.code(),
                        session: &SessionId::empty(),
                        refused_role: Role::Helper,
                        helper: Some(principal),
                        sharer: Some(&agent.principal),
                    });
                    (r.code(), r.message())
                })?;
        }
        let mut rng = rand::rng();
        let party = Party {
            conn: helper,
            tenant: principal.tenant.clone(),
        };
        let connected =
            self.lock()
                .registry
                .connect_unattended(party, device_id, Instant::now(), &mut rng);
        let (session, _) = match connected {
            Ok(connected) => connected,
            Err(ErrorCode::CrossTenant) => {
                self.refused(Refused {
                    code: ErrorCode::CrossTenant,
                    session: &SessionId::empty(),
                    refused_role: Role::Helper,
                    helper: Some(principal),
                    sharer: None,
                });
                let owner = {
                    let state = self.read();
                    state
                        .registry
                        .device_elsewhere(&principal.tenant, device_id)
                        .map(|(tenant, agent)| {
                            (tenant, state.links.get(&agent).map(|l| l.principal.clone()))
                        })
                };
                if let Some((tenant, agent)) = owner {
                    self.cross_tenant_in_owner(&tenant, None, Role::Helper, None, agent.as_deref());
                }
                let code = ErrorCode::CrossTenant;
                return Err((code, code.describe().to_string()));
            }
            Err(ErrorCode::SessionBusy) => {
                let code = ErrorCode::SessionBusy;
                return Err((code, "the device agent is already in a session".into()));
            }
            Err(code) => return Err((code, code.describe().to_string())),
        };
        let helper_link = self.read().links.get(&helper).cloned();
        let (Some(agent), Some(helper_link)) = (agent, helper_link) else {
            // Registered in the registry but a link is gone: it is disconnecting.
            self.end_unstarted(&session);
            return Err((
                ErrorCode::DeviceUnavailable,
                ErrorCode::DeviceUnavailable.describe().into(),
            ));
        };
        Ok(PendingStart {
            session,
            mode: Mode::Unattended,
            chat_allowed: !policy.disable_chat,
            reason,
            helper: helper_link,
            sharer: agent,
            caller: Role::Helper,
        })
    }

    /// Records a session's start (fsynced) and only then tells the other party; the
    /// caller activates itself when this returns `Ok`. If the audit log cannot be
    /// written, the session never started: both parties get `AUDIT_UNAVAILABLE`.
    pub async fn begin(&self, start: &PendingStart) -> Result<Begun, ErrorCode> {
        let now = SystemTime::now();
        let relay_only = self
            .policies()
            .tenant(&start.helper.principal.tenant)
            .relay_only;
        let mut offers = if relay_only {
            None
        } else {
            direct_offers(&start.session, &start.helper, &start.sharer)
        };
        let timing = self
            .read()
            .registry
            .get(&start.session)
            .map(|s| (s.created_at, s.joined_at));
        let record = SessionRecord {
            session: start.session.clone(),
            tenant: start.helper.principal.tenant.clone(),
            helper: start.helper.principal.clone(),
            sharer: start.sharer.principal.clone(),
            started_at: now,
            control_type: start.mode,
            mode: start.mode,
            modes: BTreeSet::from([start.mode.as_str()]),
            reason: start.reason.clone(),
            mode_reason: String::new(),
            counters: [
                Arc::new(ChannelCounters::default()),
                Arc::new(ChannelCounters::default()),
            ],
            path: PathTracker::new(offers.is_some()),
            routing_key: None,
        };
        if let Err(e) = self
            .audit
            .record_start(record.event(EventKind::SessionStarted))
            .await
        {
            warn!(session = %start.session, error = %e, "session start could not be recorded; refusing it");
            self.end_unstarted(&start.session);
            deliver(
                start.peer(),
                Event::Ended {
                    session: start.session.clone(),
                    reason: ErrorCode::AuditUnavailable,
                },
            );
            return Err(ErrorCode::AuditUnavailable);
        }
        let (helper_side, sharer_side) = (record.counters[0].clone(), record.counters[1].clone());
        let tenant = record.tenant.to_string();
        // The route exists before either party hears of it, and leaves with the record.
        let mut record = record;
        let routing_key = self.route(start, &helper_side, &sharer_side);
        record.routing_key = routing_key;
        // Keep the record unless the session ended while its start was being written.
        let orphan = {
            let mut state = self.lock();
            if state.registry.get(&start.session).is_some() {
                state.records.insert(start.session.clone(), record);
                None
            } else {
                Some(record)
            }
        };
        if let Some(record) = orphan {
            if let Some(key) = record.routing_key {
                self.forwarder.remove(key);
            }
            // A peer vanished meanwhile: the start is on disk, so record the end too.
            let mut ended = record.event(EventKind::SessionEnded);
            ended.end_time = Some(rfc3339(SystemTime::now()));
            ended.end_reason = Some(ErrorCode::PeerLost.as_str_name().into());
            // The caller is waiting here, so it was the other party that left.
            ended.ended_by = Some(EndedBy::party(match start.caller {
                Role::Helper => Role::Sharer,
                Role::Sharer => Role::Helper,
            }));
            let _ = self.audit.record(ended).await;
            return Err(ErrorCode::PeerLost);
        }
        metrics::gauge!("relay_sessions_active", "tenant" => tenant.clone(), "mode" => start.mode.as_str()).increment(1.0);
        if let Some((created, joined)) = timing {
            metrics::histogram!("relay_session_setup_seconds")
                .record(created.elapsed().as_secs_f64());
            if let Some(joined) = joined {
                metrics::histogram!("relay_consent_wait_seconds")
                    .record(joined.elapsed().as_secs_f64());
            }
        }
        if offers.is_some() {
            metrics::counter!("relay_direct_path_offers_total").increment(1);
        }
        let (peer, peer_counters) = match start.caller {
            Role::Sharer => (&start.sharer, helper_side.clone()),
            Role::Helper => (&start.helper, sharer_side.clone()),
        };
        let (helper_offer, sharer_offer) = offers
            .take()
            .map_or((None, None), |(h, s)| (Some(h), Some(s)));
        let (own_offer, peer_offer) = match start.caller {
            Role::Helper => (helper_offer, sharer_offer),
            Role::Sharer => (sharer_offer, helper_offer),
        };
        // Policy checked the pairing at the join (or unattended connect); this is the
        // announcement each side gets: the suite, and the other side's list.
        let suite = crate::core::choose_suite(&start.helper.e2e_suites, &start.sharer.e2e_suites)
            .unwrap_or(0);
        let to_helper = E2eAnnouncement {
            suite,
            peer_suites: start.sharer.e2e_suites.clone(),
        };
        let to_sharer = E2eAnnouncement {
            suite,
            peer_suites: start.helper.e2e_suites.clone(),
        };
        let (own_e2e, peer_e2e) = match start.caller {
            Role::Helper => (to_helper, to_sharer),
            Role::Sharer => (to_sharer, to_helper),
        };
        let (own_packet_path, peer_packet_path) = match packet_paths(
            start,
            routing_key,
            self.forwarder.settings().max_packet_bytes,
        ) {
            Some((helper, sharer)) => match start.caller {
                Role::Helper => (Some(helper), Some(sharer)),
                Role::Sharer => (Some(sharer), Some(helper)),
            },
            None => (None, None),
        };
        deliver(
            start.peer(),
            Event::Started {
                session: start.session.clone(),
                mode: start.mode,
                peer: peer.connection.clone(),
                peer_profile: peer.principal.clone(),
                chat_allowed: start.chat_allowed,
                counters: peer_counters,
                direct: peer_offer,
                e2e: peer_e2e,
                packet_path: peer_packet_path,
            },
        );
        Ok(Begun {
            counters: match start.caller {
                Role::Helper => helper_side,
                Role::Sharer => sharer_side,
            },
            direct: own_offer,
            e2e: own_e2e,
            packet_path: own_packet_path,
        })
    }

    /// Notes what a connection offered for direct paths (used when its next session starts).
    pub fn set_candidates(&self, id: ConnId, candidates: Candidates) {
        if let Some(link) = self.lock().links.get_mut(&id) {
            link.candidates = Some(Arc::new(candidates));
        }
    }

    /// Applies a party's `DirectPathResult`: when the path changes, records it (fsynced)
    /// and counts it. `Err` says why the result was not expected.
    pub async fn path_result(
        &self,
        session: &SessionId,
        role: Role,
        established: bool,
        peer_address: &str,
    ) -> Result<(), String> {
        let side = match role {
            Role::Helper => 0,
            Role::Sharer => 1,
        };
        let (change, event) = {
            let mut state = self.lock();
            let Some(record) = state.records.get_mut(session) else {
                return Err("DirectPathResult for a session that is not active".into());
            };
            let change = record.path.on_result(side, established)?;
            let mut event = record.event(EventKind::PathChanged);
            // Only a well-formed address goes into the log (the field is the client's word).
            if change == PathChange::Direct
                && let Ok(peer) = peer_address.parse::<std::net::SocketAddr>()
            {
                event.reason = Some(format!("{} reached the peer at {peer}", role.as_str()));
            }
            (change, event)
        };
        let outcome = match change {
            PathChange::None => return Ok(()),
            PathChange::Direct => {
                metrics::gauge!("relay_sessions_direct").increment(1.0);
                "direct"
            }
            PathChange::FellBack => {
                metrics::gauge!("relay_sessions_direct").decrement(1.0);
                "fell_back"
            }
            PathChange::Failed => "failed",
        };
        metrics::counter!("relay_direct_path_results_total", "outcome" => outcome).increment(1);
        info!(%session, outcome, "direct path");
        if change != PathChange::Failed
            && let Err(e) = self.audit.record(event).await
        {
            warn!(%session, error = %e, "path change could not be recorded");
        }
        Ok(())
    }

    /// Records a mode change (fsynced), then tells every party but `caller`.
    pub async fn change_mode(&self, session: &SessionId, mode: Mode, caller: ConnId) {
        let (event, old, parties) = {
            let mut state = self.lock();
            let parties: Vec<ConnLink> = state
                .registry
                .get(session)
                .map(|s| {
                    std::iter::once(s.helper.conn)
                        .chain(s.sharer.as_ref().map(|p| p.conn))
                        .collect::<Vec<_>>()
                })
                .unwrap_or_default()
                .into_iter()
                .filter(|c| *c != caller)
                .filter_map(|c| state.links.get(&c).cloned())
                .collect();
            let Some(record) = state.records.get_mut(session) else {
                return;
            };
            let old = record.mode;
            record.mode = mode;
            record.modes.insert(mode.as_str());
            let mut event = record.event(EventKind::ModeChanged);
            event.mode = Some(mode.as_str().into());
            if !record.mode_reason.is_empty() {
                event.reason = Some(std::mem::take(&mut record.mode_reason));
            }
            (event, (record.tenant.to_string(), old), parties)
        };
        metrics::gauge!("relay_sessions_active", "tenant" => old.0.clone(), "mode" => old.1.as_str()).decrement(1.0);
        metrics::gauge!("relay_sessions_active", "tenant" => old.0, "mode" => mode.as_str())
            .increment(1.0);
        if let Err(e) = self.audit.record(event).await {
            warn!(%session, error = %e, "mode change could not be recorded");
        }
        for link in parties {
            deliver(
                &link,
                Event::ModeChanged {
                    session: session.clone(),
                    mode,
                },
            );
        }
    }

    /// Keeps the reason the helper gave for a mode request (recorded with the change).
    pub fn note_mode_reason(&self, session: &SessionId, reason: &str) {
        if reason.is_empty() {
            return;
        }
        if let Some(record) = self.lock().records.get_mut(session) {
            record.mode_reason = reason.to_string();
        }
    }

    /// Notes that chat flowed in `session` (reported among its modes).
    pub fn note_chat(&self, session: &SessionId) {
        if let Some(record) = self.lock().records.get_mut(session) {
            record.modes.insert("chat");
        }
    }

    /// Records a refusal (not waited on: nothing depends on it being on disk first), in
    /// the refused party's tenant.
    pub fn refused(&self, refused: Refused<'_>) {
        self.audit.submit(refused.event());
    }

    /// Records a cross-tenant attempt in the log of the tenant that owns the code or
    /// device too: its own session, helper or device, and nothing of the other tenant
    /// (no user, device or tenant id of theirs).
    fn cross_tenant_in_owner(
        &self,
        owner: &TenantId,
        session: Option<&SessionId>,
        refused_role: Role,
        helper: Option<&Principal>,
        device: Option<&Principal>,
    ) {
        let mut event = AuditEvent {
            event: Some(EventKind::SessionRefused),
            tenant: owner.to_string(),
            session_id: session.map(ToString::to_string).unwrap_or_default(),
            refusal: Some(ErrorCode::CrossTenant.as_str_name().into()),
            refused_role: Some(refused_role.as_str().into()),
            ..AuditEvent::default()
        };
        if let Some(helper) = helper.filter(|h| &h.tenant == owner) {
            set_helper(&mut event, helper);
        }
        if let Some(agent) = device.filter(|d| &d.tenant == owner) {
            set_sharer(&mut event, agent);
        }
        self.audit.submit(event);
    }

    /// The active sessions, of one tenant or all.
    pub fn active_sessions(&self, tenant: Option<&str>) -> Vec<ActiveSession> {
        let state = self.read();
        let mut list: Vec<ActiveSession> = state
            .records
            .values()
            .filter(|r| tenant.is_none_or(|t| r.tenant.as_str() == t))
            .map(|r| {
                let event = r.event(EventKind::SessionStarted);
                ActiveSession {
                    session_id: r.session.to_string(),
                    tenant: r.tenant.to_string(),
                    helper_id: event.helper_id.unwrap_or_default(),
                    helper_name: event.helper_name.unwrap_or_default(),
                    sharer_id: event.sharer_id.unwrap_or_default(),
                    sharer_name: event.sharer_name.unwrap_or_default(),
                    device_name: event.device_name,
                    mode: r.mode.as_str().into(),
                    start_time: rfc3339(r.started_at),
                    duration_secs: crate::audit::age(r.started_at).as_secs_f64(),
                    bytes_helper_to_sharer: r.bytes(0),
                    bytes_sharer_to_helper: r.bytes(1),
                }
            })
            .collect();
        list.sort_by(|a, b| a.start_time.cmp(&b.start_time));
        list
    }

    /// Ends a session that never started (no audit end event is due).
    fn end_unstarted(&self, session: &SessionId) {
        self.lock().registry.end(session);
    }

    /// Ends `session`, telling every party except `except` (the one that caused the end,
    /// which tells its own client). An active session's end event is written (fsynced)
    /// before anyone is told. Returns the ended session if it was still live.
    pub async fn end(
        &self,
        session: &SessionId,
        reason: ErrorCode,
        except: Option<ConnId>,
        ended_by: EndedBy,
    ) -> Option<Ended> {
        self.end_recording(session, reason, except, ended_by, None)
            .await
    }

    /// Ends `session` with `ADMIN_ENDED` for `administrator` (`operator`, or
    /// `tenant:<subject>`), who is named in the audited end. Both parties are told.
    pub async fn end_by_administrator(
        &self,
        session: &SessionId,
        administrator: String,
    ) -> Option<Ended> {
        self.end_recording(
            session,
            ErrorCode::AdminEnded,
            None,
            EndedBy::Administrator,
            Some(administrator),
        )
        .await
    }

    async fn end_recording(
        &self,
        session: &SessionId,
        reason: ErrorCode,
        except: Option<ConnId>,
        ended_by: EndedBy,
        administrator: Option<String>,
    ) -> Option<Ended> {
        let taken = {
            let mut state = self.lock();
            match state.registry.end(session) {
                None => Err(state.ending.get(session).cloned()),
                Some(ended) => {
                    let links: Vec<ConnLink> = std::iter::once(ended.helper)
                        .chain(ended.sharer)
                        .filter(|c| Some(*c) != except)
                        .filter_map(|c| state.links.get(&c).cloned())
                        .collect();
                    let record = state.records.remove(session);
                    // No datagram of the session is forwarded from here on; its counts
                    // are final for the end event below.
                    if let Some(key) = record.as_ref().and_then(|r| r.routing_key) {
                        self.forwarder.remove(key);
                    }
                    let (written, ending) = tokio::sync::watch::channel(false);
                    if record.is_some() {
                        state.ending.insert(session.clone(), ending);
                    }
                    Ok((ended, links, record, written))
                }
            }
        };
        let (ended, links, record, written) = match taken {
            Ok(taken) => taken,
            Err(ending) => {
                // Another task is ending it: wait until its end is written (or held).
                if let Some(mut ending) = ending {
                    let _ = ending.wait_for(|written| *written).await;
                }
                return None;
            }
        };
        if let Some(record) = record {
            let now = SystemTime::now();
            let mut event = record.event(EventKind::SessionEnded);
            event.end_time = Some(rfc3339(now));
            event.duration_secs = Some(
                now.duration_since(record.started_at)
                    .unwrap_or_default()
                    .as_secs_f64(),
            );
            event.end_reason = Some(reason.as_str_name().into());
            event.ended_by = Some(ended_by);
            event.administrator = administrator;
            event.bytes_helper_to_sharer = Some(record.bytes(0));
            event.bytes_sharer_to_helper = Some(record.bytes(1));
            if record.path.path() == Path::Direct {
                metrics::gauge!("relay_sessions_direct").decrement(1.0);
            }
            metrics::gauge!("relay_sessions_active", "tenant" => record.tenant.to_string(), "mode" => record.mode.as_str())
                .decrement(1.0);
            metrics::counter!("relay_sessions_ended_total", "reason" => reason.as_str_name())
                .increment(1);
            // An end cannot wait for a disk: when the log refuses it, it is held in memory
            // (in order) and written first once the log takes writes again.
            if let Err(e) = self.audit.record(event).await {
                error!(%session, error = %e, "session end not yet on disk; the parties are told it ended");
            }
            self.lock().ending.remove(session);
            let _ = written.send(true);
        }
        for link in links {
            deliver(
                &link,
                Event::Ended {
                    session: session.clone(),
                    reason,
                },
            );
        }
        Some(ended)
    }

    /// Applies every passed deadline: expired codes, unanswered consent prompts and
    /// compliance warnings end their sessions; unanswered mode requests lapse.
    pub fn expire(&self, now: Instant) {
        {
            let mut limiters = self.limiters.lock().unwrap_or_else(|p| p.into_inner());
            limiters.joins_by_source.prune(now);
            limiters.joins_by_tenant.prune(now);
            limiters.setups_by_tenant.prune(now);
        }
        let (ended, lapsed) = {
            let mut state = self.lock();
            let expired = state.registry.expire(now);
            let ended: Vec<(ConnLink, SessionId, ErrorCode)> = expired
                .ended
                .into_iter()
                .flat_map(|(e, reason)| {
                    std::iter::once(e.helper)
                        .chain(e.sharer)
                        .filter_map(|c| state.links.get(&c).cloned())
                        .map(|l| (l, e.session.clone(), reason))
                        .collect::<Vec<_>>()
                })
                .collect();
            let lapsed: Vec<(ConnLink, SessionId)> = expired
                .mode_requests
                .into_iter()
                .flat_map(|(session, helper)| {
                    let sharer = state
                        .registry
                        .get(&session)
                        .and_then(|s| s.sharer.as_ref().map(|p| p.conn));
                    std::iter::once(helper)
                        .chain(sharer)
                        .filter_map(|c| state.links.get(&c).cloned())
                        .map(|l| (l, session.clone()))
                        .collect::<Vec<_>>()
                })
                .collect();
            (ended, lapsed)
        };
        // One entry per connected party: count each session once.
        let mut counted = std::collections::HashSet::new();
        for (link, session, reason) in ended {
            if counted.insert(session.clone()) {
                metrics::counter!("relay_deadlines_expired_total", "reason" => reason.as_str_name())
                    .increment(1);
            }
            deliver(&link, Event::Ended { session, reason });
        }
        for (link, session) in lapsed {
            deliver(
                &link,
                Event::ModeRefused {
                    session,
                    reason: ErrorCode::ConsentTimeout,
                },
            );
        }
    }
}

/// A locked state that wakes watchers after the change, when dropped.
struct Changing<'a> {
    guard: MutexGuard<'a, State>,
    changed: &'a tokio::sync::Notify,
}

impl std::ops::Deref for Changing<'_> {
    type Target = State;
    fn deref(&self) -> &State {
        &self.guard
    }
}

impl std::ops::DerefMut for Changing<'_> {
    fn deref_mut(&mut self) -> &mut State {
        &mut self.guard
    }
}

impl Drop for Changing<'_> {
    fn drop(&mut self) {
        // Runs before the guard field is dropped, i.e. before the unlock; a woken
        // watcher then waits on the mutex and sees the finished change.
        self.changed.notify_waiters();
    }
}

fn deliver(link: &ConnLink, event: Event) {
    // Boxed: the queue's slots are allocated up front for every connection (a block of 32),
    // so an 8-byte pointer per slot instead of the 48-byte event (memory per idle session).
    if let Err(e) = link.events.try_send(Box::new(event)) {
        // Full: the task is wedged; closed: it is already cleaning up. Either way its
        // own cleanup ends its session; nothing else can be done from here.
        match e {
            mpsc::error::TrySendError::Full(ev) => {
                warn!(?ev, "connection event queue full; dropping event")
            }
            mpsc::error::TrySendError::Closed(ev) => debug!(?ev, "connection already gone"),
        }
    }
}

/// Un-counts an open connection when dropped.
pub struct OpenConnection {
    hub: Arc<Hub>,
    source: std::net::IpAddr,
    authenticated: bool,
}

impl OpenConnection {
    /// The connection authenticated: it no longer counts against the unauthenticated limit.
    pub fn authenticated(&mut self) {
        if !std::mem::replace(&mut self.authenticated, true) {
            self.hub.unauthenticated.fetch_sub(1, Ordering::Relaxed);
        }
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.authenticated();
        {
            let mut per_source = self
                .hub
                .per_source
                .lock()
                .unwrap_or_else(|p| p.into_inner());
            if let Some(count) = per_source.get_mut(&self.source) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    per_source.remove(&self.source);
                }
            }
        }
        self.hub.open_connections.fetch_sub(1, Ordering::Relaxed);
        self.hub.changed.notify_waiters();
        metrics::gauge!("relay_connections_open").decrement(1.0);
    }
}

/// Un-counts a tracked task when it ends, however it ends (finished, aborted, panicked).
struct TaskGuard(Arc<Hub>);

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.0.tasks.fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_waiters();
    }
}
