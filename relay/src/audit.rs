//! Durable session audit events (schema and promises in `docs/audit.md`).
//!
//! Events are JSON lines in `<dir>/audit-YYYY-MM-DD-NNN.jsonl` (UTC day, then a counter
//! when a file reaches its size limit). One writer thread ([`writer`]) owns the files:
//! callers hand it events and, where durability matters, wait for the acknowledgement,
//! which comes only after the batch is written **and fsynced** (group commit).
//!
//! When the disk refuses a write (full, read-only), nothing already accepted is lost: a
//! `session_started` is refused (the session does not start), and every other event is
//! written into space held back for it (the reserve) or held in memory, in order, and
//! written first once the disk takes writes again. A failed write never leaves a torn line
//! to append to. The log counts as available only after a real write and fsync.
//!
//! Tamper evidence ([`chain`]): every line carries `prev_hash`, the SHA-256 of the previous
//! line, and `mac`, an HMAC-SHA256 under the relay's audit key; checkpoints record how far
//! each file went, so that lines cut off its end are noticed too.
//!
//! Crash safety: [`AuditLog::open`] first scans the existing files for sessions that
//! started and never ended (the relay was killed) and writes their `session_ended` with
//! end reason `RELAY_RESTARTED` and the last time the log was known to be written; if the
//! disk refuses, the relay comes up not ready and writes them once it can.

pub mod chain;
mod disk;
pub mod writer;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, SystemTime};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{mpsc, oneshot};
use tracing::warn;

pub use chain::{AuditKey, BrokenLink, Verified};
use writer::{Files, Reserve, Submit, Writer};

/// The schema version every event carries.
pub const SCHEMA_VERSION: u32 = 1;
/// The recipient shown and recorded for a device agent with no signed-in user.
pub const NO_USER: &str = "--";
/// Pending events the writer accepts before callers wait.
const QUEUE: usize = 4096;
/// The audit key's file name in the state folder.
pub const KEY_FILE: &str = "audit-hmac.key";
/// Reserve bytes per session that may be running: room for its `session_ended`.
pub const RESERVE_PER_SESSION: u64 = 4096;

/// What happened.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EventKind {
    /// Consent given (or unattended connect): the session started.
    SessionStarted,
    /// The session ended, for `end_reason`.
    SessionEnded,
    /// A request was refused by policy or a relay condition.
    SessionRefused,
    /// The session's mode changed.
    ModeChanged,
    /// The session's data moved to a direct path, or fell back to the relay (`path`).
    PathChanged,
}

/// Who ended a session (`session_ended.ended_by`); `end_reason` says how.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum EndedBy {
    /// The helper: it ended the session, closed its connection, lost it, or was closed for
    /// breaking the protocol.
    Helper,
    /// The sharer (or device agent), in the same ways.
    Sharer,
    /// The relay itself: shutdown, drain deadline, or a restart after a crash.
    Relay,
    /// An administrator, through the admin API (`ADMIN_ENDED`).
    Administrator,
}

impl EndedBy {
    /// The name written in the log and shown in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            EndedBy::Helper => "helper",
            EndedBy::Sharer => "sharer",
            EndedBy::Relay => "relay",
            EndedBy::Administrator => "administrator",
        }
    }

    /// The party of `role`.
    pub fn party(role: crate::core::Role) -> EndedBy {
        match role {
            crate::core::Role::Helper => EndedBy::Helper,
            crate::core::Role::Sharer => EndedBy::Sharer,
        }
    }
}

/// One audit event: one line of the log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct AuditEvent {
    /// Always [`SCHEMA_VERSION`] when written by this relay.
    pub schema: u32,
    /// Random 128-bit id, hex.
    pub event_id: String,
    /// What happened.
    pub event: Option<EventKind>,
    /// When it was written, RFC 3339 UTC.
    pub time: String,
    /// The tenant; reports never mix tenants.
    pub tenant: String,
    /// The session (empty for a refusal before a session existed).
    #[serde(default)]
    pub session_id: String,
    /// In a cluster, the id of the relay node that wrote the event.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub relay_node: Option<u8>,
    /// Helper (provider) object id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helper_id: Option<String>,
    /// Helper display name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub helper_name: Option<String>,
    /// Sharer (recipient) object id, or `--` for a device agent with no user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharer_id: Option<String>,
    /// Sharer display name, or `--`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sharer_name: Option<String>,
    /// The sharer's device id.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_id: Option<String>,
    /// The sharer's device name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_name: Option<String>,
    /// The sharer's platform.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// The mode the session started in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub control_type: Option<String>,
    /// Every mode used so far (`view_only`, `full_control`, `elevation`, `unattended`, `chat`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub modes: Vec<String>,
    /// For `mode_changed`: the new mode.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mode: Option<String>,
    /// The helper's reason or ticket reference.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// When the session started, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<String>,
    /// When it ended, RFC 3339 UTC.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_time: Option<String>,
    /// Seconds from start to end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_secs: Option<f64>,
    /// Why it ended (an error code name, e.g. `PEER_ENDED`, `RELAY_RESTARTED`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_reason: Option<String>,
    /// For `session_ended`: who ended it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended_by: Option<EndedBy>,
    /// For `session_ended` by an administrator: who, `operator` for the relay's admin token,
    /// or `tenant:<subject>` for a tenant administrator through the reports API.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub administrator: Option<String>,
    /// For `session_refused`: the role (`helper` or `sharer`) of the party whose request
    /// was refused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused_role: Option<String>,
    /// For `session_refused`: the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// Bytes the relay forwarded helper → sharer: stream data and datagrams, as in
    /// `relay_forwarded_bytes_total` (not data that went over a direct path).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_helper_to_sharer: Option<u64>,
    /// Bytes the relay forwarded sharer → helper (streams and screen datagrams).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_sharer_to_helper: Option<u64>,
    /// Which way the session's data goes (went, for `session_ended`): `relayed` or
    /// `direct` (peer to peer; the relay still carries consent, mode changes and the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// SHA-256 (hex) of the previous line of this file, its bytes without the newline that
    /// ends it; 64 zeros for the first.
    pub prev_hash: String,
}

/// Why the audit log could not be written or read.
#[derive(Debug, Clone, thiserror::Error)]
pub enum AuditError {
    /// A file operation failed.
    #[error("audit log {path}: {reason}")]
    Io {
        /// The file or folder.
        path: String,
        /// What failed.
        reason: String,
    },
    /// The writer thread is gone (the relay is stopping).
    #[error("the audit writer has stopped")]
    Stopped,
    /// The log cannot be written now, so a session start is refused (never held).
    #[error("the audit log cannot be written now")]
    Unavailable,
    /// The event could not be written now; it is held in memory and written first once
    /// the log can be written (lost only if the process stops before that).
    #[error("audit event held in memory until the log can be written ({reason})")]
    Held {
        /// Why it could not be written.
        reason: String,
    },
}

/// Where and how long events are kept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AuditConfig {
    /// The folder of the audit files.
    pub dir: PathBuf,
    /// A file is closed and the next one begun past this size.
    pub max_file_bytes: u64,
    /// Files older than this many days are deleted.
    pub retention_days: u32,
    /// Bytes held back in the folder (`audit-reserve.bin`) for the ends of running
    /// sessions; given back when the disk is full. The server sets it at start from the
    /// connections it allows ([`AuditConfig::reserve_for`]).
    pub reserve_bytes: u64,
    /// The HMAC key file; `None`: lines carry no MAC. The server sets it at start to
    /// [`KEY_FILE`] in the state folder.
    pub key_file: Option<PathBuf>,
}

impl AuditConfig {
    /// The reserve that holds the end events of `sessions` running sessions.
    pub fn reserve_for(sessions: u64) -> u64 {
        sessions.max(1) * RESERVE_PER_SESSION
    }
}

/// Now, RFC 3339 UTC with milliseconds.
pub fn rfc3339(at: SystemTime) -> String {
    let at = OffsetDateTime::from(at);
    let at = at
        .replace_nanosecond(at.millisecond() as u32 * 1_000_000)
        .unwrap_or(at);
    at.format(&Rfc3339).unwrap_or_default()
}

/// Parses an RFC 3339 time.
pub fn parse_time(text: &str) -> Option<OffsetDateTime> {
    OffsetDateTime::parse(text, &Rfc3339).ok()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The SHA-256 (hex) of a line, as the next line's `prev_hash` carries it.
pub(crate) fn line_hash_hex(line: &[u8]) -> String {
    line_hash(line)
}

fn line_hash(line: &[u8]) -> String {
    hex(ring::digest::digest(&ring::digest::SHA256, line).as_ref())
}

fn zero_hash() -> String {
    "0".repeat(64)
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> AuditError {
    AuditError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// A handle on the audit log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Submit>,
    available: Arc<AtomicBool>,
    changes: tokio::sync::watch::Receiver<bool>,
    /// Becomes true (or its sender is dropped) once the writer thread has ended: its last
    /// attempt and last checkpoint are on disk (or failed).
    finished: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("available", &self.is_available())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens the log: cuts off a torn last line, prunes old files, finds sessions a crash
    /// left open, and starts the writer thread. Their ends (`RELAY_RESTARTED`) and the
    /// reserve are written before this returns if the disk allows; if not, the log starts
    /// unavailable (the relay not ready) and the writer retries on each [`AuditLog::probe`].
    /// In a cluster, `node` is stamped on every event as `relay_node`. Returns the number of
    /// sessions found open.
    pub fn open(config: AuditConfig, node: Option<u8>) -> Result<(AuditLog, usize), AuditError> {
        AuditLog::open_on(config, node, Box::new(disk::RealDisk))
    }

    /// [`AuditLog::open`] on `disk` (a faulty one in unit tests).
    fn open_on(
        config: AuditConfig,
        node: Option<u8>,
        disk: Box<dyn disk::Disk>,
    ) -> Result<(AuditLog, usize), AuditError> {
        std::fs::create_dir_all(&config.dir).map_err(|e| io_error(&config.dir, e))?;
        let key = config
            .key_file
            .as_deref()
            .map(AuditKey::load_or_create)
            .transpose()?;
        let mut files = Files::with(config.clone(), disk, key);
        files.node = node;
        files.prune(SystemTime::now());
        let endings = recover(&config.dir);
        let recovered = endings.len();
        let mut writer = Writer::new(files, Reserve::new(&config), endings);
        metrics::gauge!("relay_audit_available").set(0.0);
        writer.recover(SystemTime::now());
        let (tx, rx) = mpsc::channel(QUEUE);
        let available = writer.available.clone();
        let changes = writer.publish.subscribe();
        let (done, finished) = tokio::sync::watch::channel(false);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || {
                writer.run(rx);
                // Dropped without a send if `run` panics: waiters return either way.
                let _ = done.send(true);
            })
            .map_err(|e| io_error(&config.dir, e))?;
        Ok((
            AuditLog {
                tx,
                available,
                changes,
                finished,
            },
            recovered,
        ))
    }

    /// Stops the writer and waits until it has ended: everything queued before this call is
    /// written (or held), held events have had a last attempt, and the last checkpoint is
    /// fsynced. The relay calls it as the last step of a stop, so that a stopped relay (or
    /// the process exiting right after) never has a writer still appending to the files;
    /// a relay started next on the same folder is then their only writer. Events recorded
    /// after it fail with [`AuditError::Stopped`]. Returns at once when already closed.
    pub async fn close(&self) {
        // A send error means the writer is already stopping (or gone): just wait for it.
        let _ = self.tx.send(Submit::Close).await;
        let mut finished = self.finished.clone();
        // Err: the thread ended without saying so (a panic); nothing is left to wait for.
        let _ = finished.wait_for(|done| *done).await;
    }

    /// Whether the log is writable with its reserve intact. While false, the relay refuses
    /// new sessions with `AUDIT_UNAVAILABLE` and `/readyz` answers 503.
    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    /// Waits until the log is writable (returns at once if it is).
    pub async fn writable(&self) {
        let mut changes = self.changes.clone();
        let _ = changes.wait_for(|available| *available).await;
    }

    /// Time passed (the relay calls this every half second): while the log is unavailable
    /// the writer retries held events and probes; while available it probes if nothing
    /// was written since the last call, and writes a checkpoint when one is due.
    pub fn probe(&self) {
        let _ = self.tx.try_send(Submit::Tick);
    }

    /// Records a session's start: `Ok` only once it is on disk (fsynced). Never held:
    /// while the log is unavailable this fails at once and the session must be refused.
    pub async fn record_start(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.send(event, true).await
    }

    /// Records an event and waits for the disk. `Ok`: fsynced. [`AuditError::Held`]: the
    /// disk refused it and it is held in memory, to be written first once the disk takes
    /// writes again; the caller goes on (an end cannot wait for a disk).
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        self.send(event, false).await
    }

    async fn send(&self, event: AuditEvent, start: bool) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Submit::Event {
                event: Box::new(event),
                ack: Some(ack),
                start,
            })
            .await
            .map_err(|_| AuditError::Stopped)?;
        done.await.map_err(|_| AuditError::Stopped)?
    }

    /// Queues `event` without waiting (for events nothing waits on, e.g. refusals).
    pub fn submit(&self, event: AuditEvent) {
        let submit = Submit::Event {
            event: Box::new(event),
            ack: None,
            start: false,
        };
        if self.tx.try_send(submit).is_err() {
            metrics::counter!("relay_audit_write_failures_total", "reason" => "queue_full")
                .increment(1);
            warn!("audit queue full; event not recorded");
        }
    }
}

/// Writes `batches` of events into the audit files of `config.dir` as the writer thread
/// would have written them at each batch's time: chained, MACed when `config.key_file` is
/// set, rotated by day and size, one fsync per batch. For generated histories (the reports
/// benchmark and tests); never point it at a running relay's folder.
pub fn write_history(
    config: AuditConfig,
    batches: impl IntoIterator<Item = (SystemTime, Vec<AuditEvent>)>,
) -> Result<(), AuditError> {
    std::fs::create_dir_all(&config.dir).map_err(|e| io_error(&config.dir, e))?;
    let key = config
        .key_file
        .as_deref()
        .map(AuditKey::load_or_create)
        .transpose()?;
    let dir = config.dir.clone();
    let mut files = Files::with(config, Box::new(disk::RealDisk), key);
    for (at, mut events) in batches {
        files
            .append(&mut events, at)
            .map_err(|e| io_error(&dir, format!("{e:?}")))?;
    }
    Ok(())
}

/// Audit files in `dir`, oldest first.
pub fn audit_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("audit-"))
                && file_day(p).is_some()
        })
        .collect();
    files.sort();
    files
}

/// The day in an audit (`audit-DAY-NNN.jsonl`) or checkpoint (`checkpoints-DAY.jsonl`)
/// file's name.
fn file_day(path: &Path) -> Option<time::Date> {
    let name = path.file_name()?.to_str()?;
    let rest = name
        .strip_prefix("audit-")
        .or_else(|| name.strip_prefix("checkpoints-"))?
        .strip_suffix(".jsonl")?;
    let day = rest.get(..10)?;
    let mut parts = day.split('-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let dom: u8 = parts.next()?.parse().ok()?;
    time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, dom).ok()
}

/// Every event in `files`, in order; unreadable lines are skipped with a warning, and an
/// unfinished last line (no newline: a write never acknowledged) is left out.
pub fn read_events(files: &[PathBuf]) -> Vec<AuditEvent> {
    let mut events = Vec::new();
    for path in files {
        let bytes = match std::fs::read(path) {
            Ok(bytes) => bytes,
            Err(e) => {
                warn!(path = %path.display(), error = %e, "audit file unreadable");
                continue;
            }
        };
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        for (n, line) in bytes[..complete].split(|b| *b == b'\n').enumerate() {
            if line.is_empty() {
                continue;
            }
            match serde_json::from_slice::<AuditEvent>(line) {
                Ok(event) => events.push(event),
                Err(_) => {
                    warn!(path = %path.display(), line = n + 1, "unreadable audit line skipped")
                }
            }
        }
    }
    events
}

/// The `session_ended` (`RELAY_RESTARTED`) for every session that started and never
/// ended, at the last time the log is known to have been written. The writer writes them
/// before anything else, once.
fn recover(dir: &Path) -> Vec<AuditEvent> {
    let paths = audit_files(dir);
    let events = read_events(&paths);
    let mut open: BTreeMap<(String, String), AuditEvent> = BTreeMap::new();
    let mut last_known = None::<OffsetDateTime>;
    for event in events {
        if let Some(t) = parse_time(&event.time) {
            last_known = last_known.max(Some(t));
        }
        let key = (event.tenant.clone(), event.session_id.clone());
        match event.event {
            Some(EventKind::SessionStarted) => {
                open.insert(key, event);
            }
            Some(EventKind::SessionEnded) => {
                open.remove(&key);
            }
            Some(EventKind::ModeChanged) => {
                if let (Some(started), Some(mode)) = (open.get_mut(&key), &event.mode)
                    && !started.modes.contains(mode)
                {
                    started.modes.push(mode.clone());
                }
            }
            _ => {}
        }
    }
    if open.is_empty() {
        return Vec::new();
    }
    // The newest file's modification time is the latest moment the log was written.
    if let Some(mtime) = paths
        .last()
        .and_then(|p| std::fs::metadata(p).ok())
        .and_then(|m| m.modified().ok())
    {
        last_known = last_known.max(Some(OffsetDateTime::from(mtime)));
    }
    let end = last_known
        .map(SystemTime::from)
        .unwrap_or_else(SystemTime::now);
    open.into_values()
        .map(|started| {
            let start = started.start_time.as_deref().and_then(parse_time);
            let duration = start.map(|s| (OffsetDateTime::from(end) - s).as_seconds_f64().max(0.0));
            AuditEvent {
                event: Some(EventKind::SessionEnded),
                end_time: Some(rfc3339(end)),
                duration_secs: duration,
                end_reason: Some("RELAY_RESTARTED".into()),
                ended_by: Some(EndedBy::Relay),
                event_id: String::new(),
                time: String::new(),
                prev_hash: String::new(),
                ..started
            }
        })
        .collect()
}

/// Checks one file's hash chain (not its MACs); returns the number of events, or the
/// first broken link. An unfinished last line is not a break (see [`chain::verify`]).
pub fn verify_file(path: &Path) -> Result<usize, BrokenLink> {
    chain::verify(path, None).map(|v| v.events)
}

/// How long ago a time was, for logs.
pub fn age(at: SystemTime) -> Duration {
    SystemTime::now().duration_since(at).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::sync::Mutex;

    use super::disk::{Fault, FaultPlan, FaultyDisk, Pause};
    use super::writer::HELD_LIMIT;
    use super::*;

    fn config(dir: &Path, max_file_bytes: u64) -> AuditConfig {
        AuditConfig {
            dir: dir.to_path_buf(),
            max_file_bytes,
            retention_days: 30,
            reserve_bytes: 64 << 10,
            key_file: None,
        }
    }

    fn started(session: &str) -> AuditEvent {
        AuditEvent {
            event: Some(EventKind::SessionStarted),
            tenant: "t".into(),
            session_id: session.into(),
            start_time: Some(rfc3339(SystemTime::now())),
            control_type: Some("view_only".into()),
            modes: vec!["view_only".into()],
            ..AuditEvent::default()
        }
    }

    fn ended(session: &str, reason: &str) -> AuditEvent {
        AuditEvent {
            event: Some(EventKind::SessionEnded),
            end_reason: Some(reason.into()),
            ..started(session)
        }
    }

    fn of_kind(event: &AuditEvent, kind: EventKind) -> bool {
        event.event == Some(kind)
    }

    #[test]
    fn lines_chain_and_an_edit_breaks_the_next_link() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Files::new(config(dir.path(), 1 << 20));
        let mut events = [started("a"), started("b"), started("c")];
        files.append(&mut events, SystemTime::now()).unwrap();
        let path = audit_files(dir.path()).pop().unwrap();
        assert_eq!(verify_file(&path), Ok(3));
        assert_eq!(events[0].prev_hash, "0".repeat(64));
        let text = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        // Removing a line breaks the chain where it was.
        std::fs::write(&path, format!("{}\n{}\n", lines[0], lines[2])).unwrap();
        assert_eq!(verify_file(&path).unwrap_err().line, 2);
    }

    #[test]
    fn files_roll_over_by_size_and_keep_each_chain_intact() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Files::new(config(dir.path(), 600));
        for i in 0..10 {
            files
                .append(&mut [started(&format!("s{i}"))], SystemTime::now())
                .unwrap();
        }
        let all = audit_files(dir.path());
        assert!(all.len() > 1, "expected several files, got {all:?}");
        for path in &all {
            verify_file(path).unwrap();
        }
        assert_eq!(read_events(&all).len(), 10);
    }

    #[test]
    fn a_restart_continues_the_chain_of_todays_file() {
        let dir = tempfile::tempdir().unwrap();
        Files::new(config(dir.path(), 1 << 20))
            .append(&mut [started("a")], SystemTime::now())
            .unwrap();
        Files::new(config(dir.path(), 1 << 20))
            .append(&mut [started("b")], SystemTime::now())
            .unwrap();
        let all = audit_files(dir.path());
        assert_eq!(all.len(), 1);
        assert_eq!(verify_file(&all[0]), Ok(2));
    }

    #[test]
    fn files_past_retention_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("audit-2020-01-01-000.jsonl");
        let old_checkpoints = dir.path().join("checkpoints-2020-01-01.jsonl");
        let recent = dir.path().join(format!(
            "audit-{}-000.jsonl",
            OffsetDateTime::now_utc().date()
        ));
        std::fs::write(&old, "").unwrap();
        std::fs::write(&old_checkpoints, "").unwrap();
        std::fs::write(&recent, "").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "").unwrap();
        Files::new(config(dir.path(), 1 << 20)).prune(SystemTime::now());
        assert!(!old.exists() && !old_checkpoints.exists());
        assert!(recent.exists());
        assert!(
            dir.path().join("notes.txt").exists(),
            "only audit files are pruned"
        );
    }

    #[test]
    fn opening_the_log_ends_sessions_left_open_with_relay_restarted_once() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Files::new(config(dir.path(), 1 << 20));
        let mut events = [
            started("open"),
            started("closed"),
            ended("closed", "PEER_ENDED"),
        ];
        files.append(&mut events, SystemTime::now()).unwrap();
        let mut endings = recover(dir.path());
        assert_eq!(endings.len(), 1);
        Files::new(config(dir.path(), 1 << 20))
            .append(&mut endings, SystemTime::now())
            .unwrap();
        let all = read_events(&audit_files(dir.path()));
        let last = all.last().unwrap();
        assert_eq!(last.event, Some(EventKind::SessionEnded));
        assert_eq!(last.session_id, "open");
        assert_eq!(last.end_reason.as_deref(), Some("RELAY_RESTARTED"));
        // A second open finds nothing left to close.
        assert!(recover(dir.path()).is_empty());
        verify_file(&audit_files(dir.path())[0]).unwrap();
    }

    #[test]
    fn a_torn_last_line_is_cut_off_before_anything_is_appended_and_recovery_happens_once() {
        let dir = tempfile::tempdir().unwrap();
        Files::new(config(dir.path(), 1 << 20))
            .append(&mut [started("s")], SystemTime::now())
            .unwrap();
        let path = audit_files(dir.path()).pop().unwrap();
        // A crash mid-write: the end event is all there but its newline is not, so it
        // was never acknowledged (and the parties were never told).
        let mut torn = serde_json::to_vec(&ended("s", "PEER_ENDED")).unwrap();
        let whole = std::fs::read(&path).unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(&path)
            .unwrap()
            .write_all(&torn)
            .unwrap();
        let found = chain::verify(&path, None).unwrap();
        assert_eq!((found.events, found.torn_tail), (1, torn.len() as u64));
        // Restart: the torn end does not count, the session is closed as restarted.
        for restart in 0..3 {
            let mut endings = recover(dir.path());
            assert_eq!(
                endings.len(),
                usize::from(restart == 0),
                "restart {restart}"
            );
            Files::new(config(dir.path(), 1 << 20))
                .append(&mut endings, SystemTime::now())
                .unwrap();
        }
        let text = std::fs::read(&path).unwrap();
        assert!(text.starts_with(&whole), "what was acknowledged is kept");
        torn.push(b'\n');
        assert_eq!(chain::verify(&path, None).unwrap().torn_tail, 0);
        let events = read_events(std::slice::from_ref(&path));
        assert_eq!(events.len(), 2);
        assert_eq!(events[1].end_reason.as_deref(), Some("RELAY_RESTARTED"));
        // A complete line that is not an event is an edit, not a crash.
        std::fs::write(&path, [&text[..], b"{\"edited\": true}\n"].concat()).unwrap();
        assert_eq!(chain::verify(&path, None).unwrap_err().line, 3);
    }

    #[test]
    fn the_key_finds_an_edit_with_a_recomputed_chain_and_checkpoints_find_lines_cut_off() {
        let dir = tempfile::tempdir().unwrap();
        let key = AuditKey::load_or_create(&dir.path().join("state").join(KEY_FILE)).unwrap();
        let audit = dir.path().join("audit");
        std::fs::create_dir_all(&audit).unwrap();
        let mut files = Files::with(
            config(&audit, 1 << 20),
            Box::new(disk::RealDisk),
            Some(key.clone()),
        );
        let mut events: Vec<AuditEvent> = (0..5).map(|i| started(&format!("s{i}"))).collect();
        files.append(&mut events, SystemTime::now()).unwrap();
        assert!(files.checkpoint(SystemTime::now()).unwrap());
        let path = audit_files(&audit).pop().unwrap();
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let check = |key: Option<&AuditKey>| -> Result<usize, BrokenLink> {
            let found = chain::verify(&path, key)?;
            chain::verify_checkpoints(&audit, key, &BTreeMap::from([(name.clone(), found)]))
        };
        assert_eq!(check(Some(&key)), Ok(1));
        assert_eq!(chain::verify(&path, Some(&key)).unwrap().macs_checked, 5);
        let original = std::fs::read_to_string(&path).unwrap();
        let lines: Vec<&str> = original.lines().collect();

        // An edit of line 3 with every later prev_hash recomputed: the chain holds, the MAC
        // does not.
        let forge = |strip_macs: bool| {
            let mut forged = Vec::new();
            let mut hash = zero_hash();
            for (i, line) in lines.iter().enumerate() {
                let mut line = line.to_string();
                if strip_macs {
                    line.truncate(line.find(",\"mac\":").unwrap());
                    line.push('}');
                }
                if i == 2 {
                    line = line.replace("\"s2\"", "\"forged\"");
                }
                let at = line.find("\"prev_hash\":\"").unwrap() + 13;
                line.replace_range(at..at + 64, &hash);
                hash = line_hash(line.as_bytes());
                forged.push(line);
            }
            std::fs::write(&path, forged.join("\n") + "\n").unwrap();
        };
        forge(false);
        assert_eq!(chain::verify(&path, None).unwrap().events, 5);
        assert_eq!(check(Some(&key)).unwrap_err().line, 3);
        // With every MAC taken off too, the file reads as an old unkeyed one; the
        // checkpoint still knows its last line.
        forge(true);
        assert_eq!(chain::verify(&path, Some(&key)).unwrap().keyed, 0);
        assert!(check(Some(&key)).is_err());

        // An edit of the last line only.
        let mut edited = lines.clone();
        let last = lines[4].replace("\"s4\"", "\"s9\"");
        edited[4] = &last;
        std::fs::write(&path, edited.join("\n") + "\n").unwrap();
        assert_eq!(check(Some(&key)).unwrap_err().line, 5);

        // The last two lines cut off: the chain that is left holds, the checkpoint does not.
        std::fs::write(&path, lines[..3].join("\n") + "\n").unwrap();
        assert_eq!(chain::verify(&path, Some(&key)).unwrap().events, 3);
        let broken = check(Some(&key)).unwrap_err();
        assert!(broken.reason.starts_with("truncated"), "{broken:?}");
        assert!(check(None).is_err(), "even without the key");

        // The file deleted.
        std::fs::remove_file(&path).unwrap();
        let broken = chain::verify_checkpoints(&audit, Some(&key), &BTreeMap::new()).unwrap_err();
        assert!(broken.reason.contains("is missing"), "{broken:?}");
    }

    /// Runs sessions through the writer while `fault` strikes at operation `at`, then
    /// clears the fault; returns whether the fault struck at all.
    fn run_with_fault(fault: Fault, at: usize) -> bool {
        let dir = tempfile::tempdir().unwrap();
        let key = AuditKey::load_or_create(&dir.path().join(KEY_FILE)).unwrap();
        let audit = dir.path().join("audit");
        std::fs::create_dir_all(&audit).unwrap();
        let config = config(&audit, 1 << 20);
        let plan = Arc::new(Mutex::new(FaultPlan::default()));
        let files = Files::with(
            config.clone(),
            Box::new(FaultyDisk(plan.clone())),
            Some(key.clone()),
        );
        let mut writer = Writer::new(files, Reserve::new(&config), Vec::new());
        let now = SystemTime::now();
        writer.recover(now);
        assert!(writer.available.load(Ordering::Relaxed));
        let at = {
            let mut plan = plan.lock().unwrap();
            plan.fail_at = Some((plan.ops + at, fault));
            plan.ops + at
        };
        let submit = |writer: &mut Writer, event: AuditEvent, start: bool| {
            let (ack, mut done) = oneshot::channel();
            writer.write(vec![(event, Some(ack), start)], now);
            done.try_recv().expect("acknowledged at once")
        };
        // What a relay does: start sessions, change modes, end them, refuse others.
        let mut running = Vec::new();
        let mut ends = Vec::new();
        let mut refused_starts = Vec::new();
        for i in 0..6 {
            let id = format!("s{i}");
            if submit(&mut writer, started(&id), true).is_ok() {
                running.push(id);
            } else {
                refused_starts.push(id);
                assert!(
                    !writer.available.load(Ordering::Relaxed),
                    "a refused start leaves the log unavailable"
                );
            }
            if i % 2 == 1 && !running.is_empty() {
                let id = running.remove(0);
                let _ = submit(&mut writer, ended(&id, "PEER_ENDED"), false);
                ends.push((id, "PEER_ENDED"));
            }
            let mut mode = started(running.last().map_or("none", |s| s));
            mode.event = Some(EventKind::ModeChanged);
            mode.mode = Some("full_control".into());
            let _ = submit(&mut writer, mode, false);
            writer.write(
                vec![(
                    AuditEvent {
                        event: Some(EventKind::SessionRefused),
                        tenant: "t".into(),
                        refusal: Some("DECLINED".into()),
                        ..AuditEvent::default()
                    },
                    None,
                    false,
                )],
                now,
            );
        }
        let struck = plan.lock().unwrap().ops > at;
        if struck && fault != Fault::ReadOnly {
            // A full disk: the ends went into the reserve, nothing waits in memory.
            assert!(
                writer.held.is_empty(),
                "{fault:?} at {at}: {:?}",
                writer.held
            );
        }
        // While the fault lasts the log stays unavailable, however often it is probed.
        // (The first tick after a successful write does not probe: that write showed
        // the disk took writes.)
        for tick in 0..3 {
            writer.tick(now);
            if struck && tick > 0 {
                assert!(
                    !writer.available.load(Ordering::Relaxed),
                    "{fault:?} at {at}"
                );
            }
        }
        let struck = plan.lock().unwrap().ops > at;
        plan.lock().unwrap().clear();
        writer.tick(now);
        assert!(
            writer.available.load(Ordering::Relaxed),
            "{fault:?} at {at}"
        );
        assert!(writer.held.is_empty());
        for id in std::mem::take(&mut running) {
            submit(&mut writer, ended(&id, "RELAY_SHUTDOWN"), false).unwrap();
            ends.push((id, "RELAY_SHUTDOWN"));
        }
        writer.files.checkpoint(now).unwrap();

        // Every session that started has exactly one end, with its true reason; no refused
        // start is in the log; the file verifies with the key, checkpoints included.
        let paths = audit_files(&audit);
        let events = read_events(&paths);
        for (id, reason) in &ends {
            let starts = events
                .iter()
                .filter(|e| &e.session_id == id && of_kind(e, EventKind::SessionStarted))
                .count();
            let found: Vec<_> = events
                .iter()
                .filter(|e| &e.session_id == id && of_kind(e, EventKind::SessionEnded))
                .map(|e| e.end_reason.clone().unwrap())
                .collect();
            assert_eq!(starts, 1, "{fault:?} at {at}: start of {id}");
            assert_eq!(
                found,
                vec![reason.to_string()],
                "{fault:?} at {at}: end of {id}"
            );
        }
        for id in &refused_starts {
            assert!(
                !events.iter().any(|e| &e.session_id == id),
                "{fault:?} at {at}: refused {id} is in the log"
            );
        }
        assert_eq!(
            events
                .iter()
                .filter(|e| of_kind(e, EventKind::SessionRefused))
                .count(),
            6,
            "{fault:?} at {at}: every refusal kept"
        );
        assert_eq!(
            events
                .iter()
                .filter(|e| of_kind(e, EventKind::ModeChanged))
                .count(),
            6,
            "{fault:?} at {at}: every mode change kept"
        );
        let mut verified = BTreeMap::new();
        for path in &paths {
            let found = chain::verify(path, Some(&key)).unwrap();
            assert_eq!(found.torn_tail, 0);
            assert_eq!(found.macs_checked, found.events);
            verified.insert(
                path.file_name().unwrap().to_string_lossy().into_owned(),
                found,
            );
        }
        chain::verify_checkpoints(&audit, Some(&key), &verified).unwrap();
        struck
    }

    #[test]
    fn enospc_erofs_and_short_writes_at_every_step_lose_nothing_and_leave_a_verifiable_log() {
        for fault in [Fault::NoSpace, Fault::ReadOnly, Fault::ShortWrite] {
            let mut at = 0;
            while run_with_fault(fault, at) {
                at += 1;
            }
            assert!(at > 10, "{fault:?} struck only {at} steps");
        }
    }

    #[test]
    fn a_start_is_never_written_from_the_reserve_and_ends_are_never_dropped() {
        let dir = tempfile::tempdir().unwrap();
        let config = config(dir.path(), 1 << 20);
        let plan = Arc::new(Mutex::new(FaultPlan::default()));
        let files = Files::with(config.clone(), Box::new(FaultyDisk(plan.clone())), None);
        let mut writer = Writer::new(files, Reserve::new(&config), Vec::new());
        let now = SystemTime::now();
        writer.recover(now);
        // The disk is read-only: nothing can be written, not even into the reserve.
        plan.lock().unwrap().read_only = true;
        let (ack, mut done) = oneshot::channel();
        writer.write(vec![(started("a"), Some(ack), true)], now);
        assert!(done.try_recv().unwrap().is_err());
        for i in 0..HELD_LIMIT + 10 {
            let refusal = AuditEvent {
                event: Some(EventKind::SessionRefused),
                session_id: format!("r{i}"),
                ..AuditEvent::default()
            };
            writer.hold(refusal);
        }
        assert_eq!(
            writer.held.len(),
            HELD_LIMIT,
            "refusals past the bound are dropped"
        );
        let (ack, mut done) = oneshot::channel();
        writer.write(vec![(ended("b", "PEER_ENDED"), Some(ack), false)], now);
        assert!(matches!(
            done.try_recv().unwrap(),
            Err(AuditError::Held { .. })
        ));
        assert_eq!(
            writer.held.len(),
            HELD_LIMIT + 1,
            "an end is held past the bound"
        );
        plan.lock().unwrap().clear();
        writer.tick(now);
        let events = read_events(&audit_files(dir.path()));
        assert_eq!(events.len(), HELD_LIMIT + 1);
        assert_eq!(events.last().unwrap().session_id, "b", "in order, end last");
        assert!(!events.iter().any(|e| e.session_id == "a"));
    }

    /// A stop waits for the writer's last checkpoint. When `close` returns, a checkpoint
    /// covers every line and the writer thread has ended, although another handle is
    /// still alive (the server's shared state outlives its stop). Before, the thread ended
    /// only when the last handle was dropped and nothing waited for it: a relay started
    /// right after a stop (or the process exiting) raced the old writer's last checkpoint,
    /// which could land after the files had changed (`line N differs from the checkpoint`).
    #[tokio::test]
    async fn close_returns_only_once_the_last_checkpoint_is_written() {
        // Only so that a broken writer fails the test rather than hanging it.
        async fn within<F: std::future::Future>(
            f: F,
        ) -> Result<F::Output, tokio::time::error::Elapsed> {
            tokio::time::timeout(Duration::from_secs(60), f).await
        }
        let dir = tempfile::tempdir().unwrap();
        let audit = dir.path().join("audit");
        let mut config = config(&audit, 1 << 20);
        config.key_file = Some(dir.path().join(KEY_FILE));
        let plan = Arc::new(Mutex::new(FaultPlan::default()));
        let disk = Box::new(FaultyDisk(plan.clone()));
        let (log, _) = AuditLog::open_on(config, None, disk).unwrap();
        let other = log.clone();
        log.record_start(started("s")).await.unwrap();
        // No tick has written a checkpoint: the last one opens the checkpoint file. Hold
        // the writer there.
        let (reached, at_checkpoint) = oneshot::channel();
        let (release, paused) = std::sync::mpsc::channel();
        plan.lock().unwrap().pause_next_open = Some(Pause {
            reached,
            release: paused,
        });
        let closing = tokio::spawn(async move { log.close().await });
        within(at_checkpoint)
            .await
            .expect("close makes the writer write its last checkpoint")
            .unwrap();
        assert!(
            !closing.is_finished(),
            "close returned while the last checkpoint was still being written"
        );
        release.send(()).unwrap();
        within(closing).await.unwrap().unwrap();

        let key = AuditKey::load(&dir.path().join(KEY_FILE)).unwrap();
        let path = audit_files(&audit).pop().unwrap();
        let found = chain::verify(&path, Some(&key)).unwrap();
        assert_eq!((found.events, found.macs_checked), (1, 1));
        let name = path.file_name().unwrap().to_string_lossy().into_owned();
        let verified = BTreeMap::from([(name, found)]);
        assert_eq!(
            chain::verify_checkpoints(&audit, Some(&key), &verified),
            Ok(1)
        );
        // The writer is gone: the handle left over writes nothing more.
        let late = within(other.record(ended("s", "PEER_ENDED")))
            .await
            .unwrap();
        assert!(matches!(late, Err(AuditError::Stopped)), "{late:?}");
        within(other.close()).await.unwrap();
        assert_eq!(read_events(&audit_files(&audit)).len(), 1);
    }
}
