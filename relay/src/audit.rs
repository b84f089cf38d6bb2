//! Durable session audit events (schema in `docs/audit.md`).
//!
//! Events are JSON lines in `<dir>/audit-YYYY-MM-DD-NNN.jsonl` (UTC day, then a counter
//! when a file reaches its size limit). One writer thread owns the files: callers hand it
//! events and, where durability matters, wait for the acknowledgement, which comes only
//! after the batch is written **and fsynced** (group commit: one fsync per batch).
//!
//! Tamper evidence: every line carries `prev_hash`, the SHA-256 of the previous line of
//! the same file (64 zeros for the first), so editing or removing a line breaks the chain
//! at that point; [`verify_file`] finds the first broken link.
//!
//! Crash safety: [`AuditLog::open`] first scans the existing files for sessions that
//! started and never ended (the relay was killed) and writes their `session_ended` with
//! end reason `RELAY_RESTARTED` and the last time the log was known to be written.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

/// The schema version every event carries.
pub const SCHEMA_VERSION: u32 = 1;
/// The recipient shown and recorded for a device agent with no signed-in user.
pub const NO_USER: &str = "--";
/// Most events written with one fsync.
const MAX_BATCH: usize = 512;
/// Pending events the writer accepts before callers wait.
const QUEUE: usize = 4096;

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
    /// For `session_refused`: the code.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refusal: Option<String>,
    /// Bytes forwarded helper → sharer.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_helper_to_sharer: Option<u64>,
    /// Bytes forwarded sharer → helper.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bytes_sharer_to_helper: Option<u64>,
    /// Which way the session's data goes (went, for `session_ended`): `relayed` or
    /// `direct` (peer to peer; the relay still carries consent, mode changes and the end).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    /// SHA-256 (hex) of the previous line of this file; 64 zeros for the first.
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

struct Submit {
    /// `None`: a probe (reopen and fsync, no event) to learn whether writing works again.
    event: Option<AuditEvent>,
    ack: Option<oneshot::Sender<Result<(), AuditError>>>,
}

/// A handle on the audit log; cheap to clone.
#[derive(Clone)]
pub struct AuditLog {
    tx: mpsc::Sender<Submit>,
    available: Arc<AtomicBool>,
    changes: tokio::sync::watch::Receiver<bool>,
}

impl std::fmt::Debug for AuditLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AuditLog")
            .field("available", &self.is_available())
            .finish_non_exhaustive()
    }
}

impl AuditLog {
    /// Opens the log: closes sessions a crash left open, prunes old files, and starts the
    /// writer thread. In a cluster, `node` is stamped on every event as `relay_node`.
    /// Returns the number of sessions recovered.
    pub fn open(config: AuditConfig, node: Option<u8>) -> Result<(AuditLog, usize), AuditError> {
        std::fs::create_dir_all(&config.dir).map_err(|e| io_error(&config.dir, e))?;
        let mut files = Files::new(config.clone());
        files.node = node;
        files.prune(SystemTime::now());
        let recovered = recover(&config.dir, &mut files)?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let available = Arc::new(AtomicBool::new(true));
        let flag = available.clone();
        let (publish, changes) = tokio::sync::watch::channel(true);
        std::thread::Builder::new()
            .name("audit-writer".into())
            .spawn(move || writer(rx, files, flag, publish))
            .map_err(|e| io_error(&config.dir, e))?;
        Ok((
            AuditLog {
                tx,
                available,
                changes,
            },
            recovered,
        ))
    }

    /// Whether the last write succeeded. While false, the relay refuses new sessions
    /// with `AUDIT_UNAVAILABLE`; the next write tries again.
    pub fn is_available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    /// Waits until the log is writable (returns at once if it is).
    pub async fn writable(&self) {
        let mut changes = self.changes.clone();
        let _ = changes.wait_for(|available| *available).await;
    }

    /// While the log is unavailable, asks the writer to try again (reopen and fsync).
    pub fn probe(&self) {
        if !self.is_available() {
            let _ = self.tx.try_send(Submit {
                event: None,
                ack: None,
            });
        }
    }

    /// Writes `event` and waits until it is on disk (fsynced).
    pub async fn record(&self, event: AuditEvent) -> Result<(), AuditError> {
        let (ack, done) = oneshot::channel();
        self.tx
            .send(Submit {
                event: Some(event),
                ack: Some(ack),
            })
            .await
            .map_err(|_| AuditError::Stopped)?;
        done.await.map_err(|_| AuditError::Stopped)?
    }

    /// Queues `event` without waiting (for events nothing waits on, e.g. refusals).
    pub fn submit(&self, event: AuditEvent) {
        if self
            .tx
            .try_send(Submit {
                event: Some(event),
                ack: None,
            })
            .is_err()
        {
            metrics::counter!("relay_audit_write_failures_total", "reason" => "queue_full")
                .increment(1);
            warn!("audit queue full; event not recorded");
        }
    }
}

/// The writer thread: batches, writes, fsyncs once per batch, acknowledges.
fn writer(
    mut rx: mpsc::Receiver<Submit>,
    mut files: Files,
    available: Arc<AtomicBool>,
    publish: tokio::sync::watch::Sender<bool>,
) {
    while let Some(first) = rx.blocking_recv() {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(more) => batch.push(more),
                Err(_) => break,
            }
        }
        let started = Instant::now();
        let result = files.append(
            batch.iter_mut().filter_map(|s| s.event.as_mut()),
            SystemTime::now(),
        );
        metrics::histogram!("relay_audit_write_seconds").record(started.elapsed().as_secs_f64());
        match &result {
            Ok(()) => {
                if !available.swap(true, Ordering::Relaxed) {
                    info!("audit log writable again");
                }
            }
            Err(e) => {
                metrics::counter!("relay_audit_write_failures_total", "reason" => "io")
                    .increment(1);
                if available.swap(false, Ordering::Relaxed) {
                    error!(error = %e, "audit log cannot be written; new sessions are refused");
                }
            }
        }
        metrics::gauge!("relay_audit_available").set(if result.is_ok() { 1.0 } else { 0.0 });
        publish.send_if_modified(|current| {
            let now = result.is_ok();
            std::mem::replace(current, now) != now
        });
        for submit in batch {
            if let Some(ack) = submit.ack {
                let _ = ack.send(result.clone());
            }
        }
    }
}

/// The open audit file and the rules for the next one.
struct Files {
    config: AuditConfig,
    /// Stamped on every event as `relay_node` (cluster nodes).
    node: Option<u8>,
    current: Option<Current>,
}

struct Current {
    file: File,
    path: PathBuf,
    day: time::Date,
    index: u32,
    size: u64,
    last_hash: String,
}

impl Files {
    fn new(config: AuditConfig) -> Files {
        Files {
            config,
            node: None,
            current: None,
        }
    }

    fn path_for(&self, day: time::Date, index: u32) -> PathBuf {
        self.config
            .dir
            .join(format!("audit-{day}-{index:03}.jsonl"))
    }

    /// Makes sure the current file is today's and below the size limit.
    fn roll(&mut self, now: SystemTime) -> Result<&mut Current, AuditError> {
        let today = OffsetDateTime::from(now).date();
        let needs_new = match &self.current {
            None => true,
            Some(c) => c.day != today || c.size >= self.config.max_file_bytes,
        };
        if needs_new {
            let mut index = match &self.current {
                Some(c) if c.day == today => c.index + 1,
                _ => 0,
            };
            // Continue today's newest file after a restart, if it has room.
            while self.path_for(today, index + 1).exists() {
                index += 1;
            }
            let mut path = self.path_for(today, index);
            let existing = std::fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
            if existing >= self.config.max_file_bytes {
                index += 1;
                path = self.path_for(today, index);
            }
            let last_hash = last_line_hash(&path)?;
            let file = OpenOptions::new()
                .create(true)
                .append(true)
                .open(&path)
                .map_err(|e| io_error(&path, e))?;
            let size = file.metadata().map(|m| m.len()).unwrap_or(0);
            // Make the new directory entry durable too.
            if let Ok(dir) = File::open(&self.config.dir) {
                let _ = dir.sync_all();
            }
            if self.current.as_ref().is_some_and(|c| c.day != today) {
                self.prune(now);
            }
            self.current = Some(Current {
                file,
                path,
                day: today,
                index,
                size,
                last_hash,
            });
        }
        // Just set when it was None.
        self.current
            .as_mut()
            .ok_or_else(|| io_error(&self.config.dir, "no audit file"))
    }

    /// Appends events (filling in id, time and hash chain), then fsyncs once.
    fn append<'a>(
        &mut self,
        events: impl Iterator<Item = &'a mut AuditEvent>,
        now: SystemTime,
    ) -> Result<(), AuditError> {
        let node = self.node;
        let current = self.roll(now)?;
        let mut buffer = Vec::new();
        let mut hash = current.last_hash.clone();
        for event in events {
            event.schema = SCHEMA_VERSION;
            event.relay_node = node;
            if event.event_id.is_empty() {
                event.event_id = hex(&rand::random::<[u8; 16]>());
            }
            if event.time.is_empty() {
                event.time = rfc3339(now);
            }
            event.prev_hash = hash;
            let line = serde_json::to_vec(event).map_err(|e| io_error(&current.path, e))?;
            hash = line_hash(&line);
            buffer.extend_from_slice(&line);
            buffer.push(b'\n');
        }
        let result = current
            .file
            .write_all(&buffer)
            .and_then(|()| current.file.sync_data());
        match result {
            Ok(()) => {
                current.size += buffer.len() as u64;
                current.last_hash = hash;
                Ok(())
            }
            Err(e) => {
                let err = io_error(&current.path, e);
                // Reopen next time: the file may be in an unknown state.
                self.current = None;
                Err(err)
            }
        }
    }

    /// Deletes audit files older than the retention time.
    fn prune(&self, now: SystemTime) {
        let horizon = OffsetDateTime::from(now).date()
            - time::Duration::days(i64::from(self.config.retention_days));
        for path in audit_files(&self.config.dir) {
            let Some(day) = file_day(&path) else { continue };
            if day < horizon {
                match std::fs::remove_file(&path) {
                    Ok(()) => info!(path = %path.display(), "audit file past retention deleted"),
                    Err(e) => {
                        warn!(path = %path.display(), error = %e, "cannot delete old audit file")
                    }
                }
            }
        }
    }
}

/// The hash of the last line of `path`, or zeros for a new or empty file.
fn last_line_hash(path: &Path) -> Result<String, AuditError> {
    let Ok(file) = File::open(path) else {
        return Ok(zero_hash());
    };
    let mut last = None;
    for line in BufReader::new(file).split(b'\n') {
        let line = line.map_err(|e| io_error(path, e))?;
        if !line.is_empty() {
            last = Some(line);
        }
    }
    Ok(last.map(|l| line_hash(&l)).unwrap_or_else(zero_hash))
}

/// Audit files in `dir`, oldest first.
pub fn audit_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| file_day(p).is_some())
        .collect();
    files.sort();
    files
}

fn file_day(path: &Path) -> Option<time::Date> {
    let name = path.file_name()?.to_str()?;
    let rest = name.strip_prefix("audit-")?.strip_suffix(".jsonl")?;
    let day = rest.get(..10)?;
    let mut parts = day.split('-');
    let year: i32 = parts.next()?.parse().ok()?;
    let month: u8 = parts.next()?.parse().ok()?;
    let dom: u8 = parts.next()?.parse().ok()?;
    time::Date::from_calendar_date(year, time::Month::try_from(month).ok()?, dom).ok()
}

/// Every event in `files`, in order; unreadable lines are skipped with a warning.
pub fn read_events(files: &[PathBuf]) -> Vec<AuditEvent> {
    let mut events = Vec::new();
    for path in files {
        let Ok(file) = File::open(path) else { continue };
        for (n, line) in BufReader::new(file).lines().enumerate() {
            let Ok(line) = line else {
                // A read error repeats forever (a folder, a bad disk): stop reading this file.
                warn!(path = %path.display(), line = n + 1, "audit file unreadable from here on");
                break;
            };
            match serde_json::from_str::<AuditEvent>(&line) {
                Ok(event) => events.push(event),
                Err(_) => {
                    warn!(path = %path.display(), line = n + 1, "unreadable audit line skipped")
                }
            }
        }
    }
    events
}

/// Writes `session_ended` (`RELAY_RESTARTED`) for every session that started and never
/// ended, at the last time the log is known to have been written.
fn recover(dir: &Path, files: &mut Files) -> Result<usize, AuditError> {
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
        return Ok(0);
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
    let mut endings: Vec<AuditEvent> = open
        .into_values()
        .map(|started| {
            let start = started.start_time.as_deref().and_then(parse_time);
            let duration = start.map(|s| (OffsetDateTime::from(end) - s).as_seconds_f64().max(0.0));
            AuditEvent {
                event: Some(EventKind::SessionEnded),
                end_time: Some(rfc3339(end)),
                duration_secs: duration,
                end_reason: Some("RELAY_RESTARTED".into()),
                event_id: String::new(),
                time: String::new(),
                prev_hash: String::new(),
                ..started
            }
        })
        .collect();
    let count = endings.len();
    files.append(endings.iter_mut(), SystemTime::now())?;
    warn!(
        sessions = count,
        "closed sessions left open by an unclean stop (RELAY_RESTARTED)"
    );
    metrics::counter!("relay_audit_recovered_sessions_total").increment(count as u64);
    Ok(count)
}

/// The first place a file's hash chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The file.
    pub file: PathBuf,
    /// 1-based line number.
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Checks one file's hash chain; returns the number of events, or the first broken link.
pub fn verify_file(path: &Path) -> Result<usize, BrokenLink> {
    let broken = |line: usize, reason: String| BrokenLink {
        file: path.to_path_buf(),
        line,
        reason,
    };
    let file = File::open(path).map_err(|e| broken(0, e.to_string()))?;
    let mut expected = zero_hash();
    let mut count = 0;
    for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
        let line = line.map_err(|e| broken(n + 1, e.to_string()))?;
        if line.is_empty() {
            continue;
        }
        let event: AuditEvent = serde_json::from_slice(&line)
            .map_err(|e| broken(n + 1, format!("not an audit event: {e}")))?;
        if event.prev_hash != expected {
            return Err(broken(
                n + 1,
                format!(
                    "prev_hash is {} but the previous line hashes to {expected}",
                    event.prev_hash
                ),
            ));
        }
        expected = line_hash(&line);
        count += 1;
    }
    Ok(count)
}

/// How long ago a time was, for logs.
pub fn age(at: SystemTime) -> Duration {
    SystemTime::now().duration_since(at).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(dir: &Path, max_file_bytes: u64) -> AuditConfig {
        AuditConfig {
            dir: dir.to_path_buf(),
            max_file_bytes,
            retention_days: 30,
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

    #[test]
    fn lines_chain_and_an_edit_breaks_the_next_link() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Files::new(config(dir.path(), 1 << 20));
        let mut events = [started("a"), started("b"), started("c")];
        files.append(events.iter_mut(), SystemTime::now()).unwrap();
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
                .append([started(&format!("s{i}"))].iter_mut(), SystemTime::now())
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
            .append([started("a")].iter_mut(), SystemTime::now())
            .unwrap();
        Files::new(config(dir.path(), 1 << 20))
            .append([started("b")].iter_mut(), SystemTime::now())
            .unwrap();
        let all = audit_files(dir.path());
        assert_eq!(all.len(), 1);
        assert_eq!(verify_file(&all[0]), Ok(2));
    }

    #[test]
    fn files_past_retention_are_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let old = dir.path().join("audit-2020-01-01-000.jsonl");
        let recent = dir.path().join(format!(
            "audit-{}-000.jsonl",
            OffsetDateTime::now_utc().date()
        ));
        std::fs::write(&old, "").unwrap();
        std::fs::write(&recent, "").unwrap();
        std::fs::write(dir.path().join("notes.txt"), "").unwrap();
        Files::new(config(dir.path(), 1 << 20)).prune(SystemTime::now());
        assert!(!old.exists());
        assert!(recent.exists());
        assert!(
            dir.path().join("notes.txt").exists(),
            "only audit files are pruned"
        );
    }

    #[test]
    fn opening_the_log_ends_sessions_left_open_with_relay_restarted() {
        let dir = tempfile::tempdir().unwrap();
        let mut files = Files::new(config(dir.path(), 1 << 20));
        let mut ended = started("closed");
        ended.event = Some(EventKind::SessionEnded);
        let mut events = [started("open"), started("closed"), ended];
        files.append(events.iter_mut(), SystemTime::now()).unwrap();
        let recovered = recover(dir.path(), &mut Files::new(config(dir.path(), 1 << 20))).unwrap();
        assert_eq!(recovered, 1);
        let all = read_events(&audit_files(dir.path()));
        let last = all.last().unwrap();
        assert_eq!(last.event, Some(EventKind::SessionEnded));
        assert_eq!(last.session_id, "open");
        assert_eq!(last.end_reason.as_deref(), Some("RELAY_RESTARTED"));
        // A second open finds nothing left to close.
        assert_eq!(
            recover(dir.path(), &mut Files::new(config(dir.path(), 1 << 20))).unwrap(),
            0
        );
        verify_file(&audit_files(dir.path())[0]).unwrap();
    }
}
