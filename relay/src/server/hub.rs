//! The hub: shared state of one relay node — the session [`Registry`] and a link to every
//! authenticated connection — and the only place that turns registry outcomes into
//! [`Event`]s for connection tasks.
//!
//! One `std::sync::Mutex` guards it. It is never held across an `.await`: every method
//! locks, decides, collects what to send, unlocks, then sends with `try_send`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use remote_help_proto::ErrorCode;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use crate::auth::{Principal, Verifier};
use crate::config::Config;
use crate::core::code::SessionCode;
use crate::core::registry::{Consented, Created, Ended, Party, Registry, RegistryLimits};
use crate::core::{ConnId, Mode, Role, SessionId};

/// Events the hub delivers to a connection task about its session.
#[derive(Debug)]
pub enum Event {
    /// To the helper: a sharer joined and is being asked to consent.
    PeerJoined {
        /// The session.
        session: SessionId,
        /// The sharer.
        sharer: Arc<Principal>,
    },
    /// To the helper: the sharer consented.
    Started {
        /// The session.
        session: SessionId,
        /// The active mode.
        mode: Mode,
        /// The sharer's connection, where the helper's data streams go.
        peer: quinn::Connection,
    },
    /// The session is over.
    Ended {
        /// The session.
        session: SessionId,
        /// Why, as the party is told.
        reason: ErrorCode,
    },
}

/// Capacity of each connection's event queue. The protocol produces at most three
/// events per session and a connection has one session at a time, so a full queue
/// means the task is stuck; events to it are then dropped (its own cleanup follows).
pub const EVENT_QUEUE: usize = 8;

/// What the hub keeps about one authenticated connection.
#[derive(Debug, Clone)]
pub struct ConnLink {
    /// Where to send this connection's events.
    pub events: mpsc::Sender<Event>,
    /// The QUIC connection, so its peer can open data streams on it.
    pub connection: quinn::Connection,
    /// Who authenticated on it.
    pub principal: Arc<Principal>,
    /// Which side it speaks for.
    pub role: Role,
}

/// A successful join, as the joining sharer's task needs it.
#[derive(Debug)]
pub struct JoinOutcome {
    /// The session.
    pub session: SessionId,
    /// The helper to show in the consent prompt.
    pub helper: Arc<Principal>,
    /// The requested mode.
    pub mode: Mode,
}

/// The sharer's consent, as the sharer's task needs it.
#[derive(Debug)]
pub enum ConsentOutcome {
    /// Accepted: data may flow to the helper's connection.
    Started {
        /// The active mode.
        mode: Mode,
        /// The helper's connection.
        helper: quinn::Connection,
    },
    /// Declined: the helper has been told.
    Declined,
}

struct State {
    registry: Registry,
    links: HashMap<ConnId, ConnLink>,
}

/// Shared state of the relay node.
pub struct Hub {
    state: Mutex<State>,
    next_conn: AtomicU64,
    /// The relay's configuration.
    pub config: Config,
    /// Token verification for every tenant.
    pub verifier: Verifier,
    /// Cancelled when the relay starts draining: no new sessions.
    pub draining: CancellationToken,
    /// Cancelled when every remaining connection must close now.
    pub stopping: CancellationToken,
    open_connections: AtomicU64,
    /// Woken whenever sessions or connections come or go (for tests and admin views).
    pub changed: tokio::sync::Notify,
}

impl Hub {
    /// A hub for `config`.
    pub fn new(config: Config) -> Hub {
        let verifier = Verifier::new(
            config.audience.clone(),
            config.token_leeway,
            config.tenants.clone(),
        );
        Hub {
            state: Mutex::new(State {
                registry: Registry::new(RegistryLimits {
                    code_ttl: config.code_ttl,
                    code_memory: config.code_ttl.max(std::time::Duration::from_secs(600)),
                }),
                links: HashMap::new(),
            }),
            next_conn: AtomicU64::new(1),
            config,
            verifier,
            draining: CancellationToken::new(),
            stopping: CancellationToken::new(),
            open_connections: AtomicU64::new(0),
            changed: tokio::sync::Notify::new(),
        }
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
        // A panic while holding the lock would be a bug; the state itself stays
        // consistent per call, so keep serving rather than poisoning every connection.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// A fresh connection id.
    pub fn next_conn_id(&self) -> ConnId {
        ConnId(self.next_conn.fetch_add(1, Ordering::Relaxed))
    }

    /// Counts a connection as open; returns the guard that un-counts it.
    pub fn connection_opened(self: &Arc<Self>) -> OpenConnection {
        self.open_connections.fetch_add(1, Ordering::Relaxed);
        metrics::gauge!("relay_connections_open").increment(1.0);
        OpenConnection(self.clone())
    }

    /// Connections currently open (handshaking, authenticating or authenticated).
    pub fn open_connections(&self) -> u64 {
        self.open_connections.load(Ordering::Relaxed)
    }

    /// Registers an authenticated connection.
    pub fn register(&self, id: ConnId, link: ConnLink) {
        self.lock().links.insert(id, link);
    }

    /// Forgets a connection (its session must have been ended first).
    pub fn unregister(&self, id: ConnId) {
        self.lock().links.remove(&id);
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

    /// A helper opens a session.
    pub fn create(&self, helper: ConnId, principal: &Principal, mode: Mode) -> Created {
        let mut rng = rand::rng();
        let party = Party {
            conn: helper,
            tenant: principal.tenant.clone(),
        };
        self.lock()
            .registry
            .create(party, mode, Instant::now(), &mut rng)
    }

    /// A sharer joins by code; on success the helper is told.
    pub fn join(
        &self,
        sharer: ConnId,
        principal: &Arc<Principal>,
        code: SessionCode,
    ) -> Result<JoinOutcome, ErrorCode> {
        let party = Party {
            conn: sharer,
            tenant: principal.tenant.clone(),
        };
        let (joined, helper) = {
            let mut state = self.lock();
            let joined = state.registry.join(code, party, Instant::now())?;
            let helper = state.links.get(&joined.helper).cloned();
            (joined, helper)
        };
        let Some(helper) = helper else {
            // The helper vanished between creating and this join; its cleanup ends
            // the session too, but make sure the sharer is not left waiting.
            self.lock().registry.end(&joined.session);
            return Err(ErrorCode::PeerLost);
        };
        deliver(
            &helper,
            Event::PeerJoined {
                session: joined.session.clone(),
                sharer: principal.clone(),
            },
        );
        Ok(JoinOutcome {
            session: joined.session,
            helper: helper.principal,
            mode: joined.mode,
        })
    }

    /// The sharer answers; the helper is told either way.
    pub fn consent(
        &self,
        sharer: ConnId,
        session: &SessionId,
        accept: bool,
    ) -> Result<ConsentOutcome, ErrorCode> {
        let (outcome, helper_link, sharer_conn) = {
            let mut state = self.lock();
            let outcome = state.registry.consent(session, sharer, accept)?;
            let helper = match &outcome {
                Consented::Started { helper, .. } => *helper,
                Consented::Declined(ended) => ended.helper,
            };
            let helper_link = state.links.get(&helper).cloned();
            let sharer_conn = state.links.get(&sharer).map(|l| l.connection.clone());
            (outcome, helper_link, sharer_conn)
        };
        match outcome {
            Consented::Started { mode, .. } => {
                let (Some(helper), Some(sharer_conn)) = (helper_link, sharer_conn) else {
                    self.end(session, ErrorCode::PeerLost, None);
                    return Err(ErrorCode::PeerLost);
                };
                deliver(
                    &helper,
                    Event::Started {
                        session: session.clone(),
                        mode,
                        peer: sharer_conn,
                    },
                );
                Ok(ConsentOutcome::Started {
                    mode,
                    helper: helper.connection,
                })
            }
            Consented::Declined(_) => {
                if let Some(helper) = helper_link {
                    deliver(
                        &helper,
                        Event::Ended {
                            session: session.clone(),
                            reason: ErrorCode::Declined,
                        },
                    );
                }
                Ok(ConsentOutcome::Declined)
            }
        }
    }

    /// Ends `session`, telling every party except `except` (the one that caused the end,
    /// which tells its own client). Returns the ended session if it was still live.
    pub fn end(
        &self,
        session: &SessionId,
        reason: ErrorCode,
        except: Option<ConnId>,
    ) -> Option<Ended> {
        let (ended, links) = {
            let mut state = self.lock();
            let ended = state.registry.end(session)?;
            let links: Vec<ConnLink> = std::iter::once(ended.helper)
                .chain(ended.sharer)
                .filter(|c| Some(*c) != except)
                .filter_map(|c| state.links.get(&c).cloned())
                .collect();
            (ended, links)
        };
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

    /// Expires codes nobody used in time and tells their helpers.
    pub fn expire(&self, now: Instant) {
        let notices: Vec<(ConnLink, SessionId)> = {
            let mut state = self.lock();
            let expired = state.registry.expire(now);
            expired
                .into_iter()
                .filter_map(|e| state.links.get(&e.helper).cloned().map(|l| (l, e.session)))
                .collect()
        };
        for (link, session) in notices {
            metrics::counter!("relay_codes_expired_total").increment(1);
            deliver(
                &link,
                Event::Ended {
                    session,
                    reason: ErrorCode::CodeExpired,
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
    if let Err(e) = link.events.try_send(event) {
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
pub struct OpenConnection(Arc<Hub>);

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_waiters();
        metrics::gauge!("relay_connections_open").decrement(1.0);
    }
}
