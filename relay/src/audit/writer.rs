//! The writer thread and the files it owns: the audit files, the reserve, the checkpoints,
//! and the events held in memory while the disk refuses them.
//!
//! Rules, in the order the code keeps them:
//! - a `session_started` is written durably or not at all (the session is then refused);
//!   it is never written while the log is unavailable, so it never uses the reserve;
//! - every other event is written, or held in memory in order and written first once the
//!   log can be written again; a `session_ended` is never dropped;
//! - a failed write never leaves a torn line: the file is cut back to its last durable
//!   length before anything else is appended;
//! - the log is *available* only after a real write and fsync beyond the full reserve.

use std::collections::VecDeque;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant, SystemTime};

use time::OffsetDateTime;
use tokio::sync::{mpsc, oneshot};
use tracing::{error, info, warn};

use super::chain::{self, AuditKey, Checkpoint};
use super::disk::{self, Disk, DiskFile};
use super::{
    AuditConfig, AuditError, AuditEvent, EventKind, SCHEMA_VERSION, audit_files, hex, line_hash,
    rfc3339, zero_hash,
};

/// Most events written with one fsync.
const MAX_BATCH: usize = 512;
/// Events held in memory (while the disk refuses them) past which refusals and path changes
/// are dropped (counted). Ends and mode changes are always held: ends are bounded by the
/// sessions running when the log failed (no session starts while it is down), and each mode
/// change waits for a person's consent.
pub(crate) const HELD_LIMIT: usize = 100_000;
/// The reserve given back at a time when the disk is full.
const RELEASE_STEP: u64 = 64 << 10;
/// The size of the probe write past the end of the reserve.
const PROBE_BYTES: usize = 4096;
/// Checkpoints are written at most this often (and at a clean stop).
pub(crate) const CHECKPOINT_INTERVAL: Duration = Duration::from_secs(5);

/// A request to the writer thread.
pub(super) enum Submit {
    /// An event; `start` for a `session_started`, which is written durably or refused.
    Event {
        event: Box<AuditEvent>,
        ack: Option<oneshot::Sender<Result<(), AuditError>>>,
        start: bool,
    },
    /// Time passed: probe the disk, retry held events, write a checkpoint if one is due.
    Tick,
    /// The relay is stopping: write what is queued, make a last attempt at held events,
    /// write the last checkpoint, and end the thread, even though handles remain (the
    /// server's shared state outlives its stop). Events sent after it are refused
    /// ([`AuditError::Stopped`]).
    Close,
}

/// An I/O failure with the file it happened on.
#[derive(Debug)]
pub(crate) struct Failure {
    path: PathBuf,
    error: io::Error,
}

impl Failure {
    fn new(path: &Path, error: io::Error) -> Failure {
        Failure {
            path: path.to_path_buf(),
            error,
        }
    }

    fn no_space(&self) -> bool {
        disk::is_no_space(&self.error)
    }

    fn to_audit(&self) -> AuditError {
        super::io_error(&self.path, &self.error)
    }
}

/// The open audit file and the rules for the next one.
pub(crate) struct Files {
    config: AuditConfig,
    /// Stamped on every event as `relay_node` (cluster nodes).
    pub(crate) node: Option<u8>,
    key: Option<AuditKey>,
    disk: Box<dyn Disk>,
    current: Option<Current>,
    checkpoints: Option<Chained>,
    /// Lines of the current file covered by the last checkpoint.
    checkpointed: Option<(PathBuf, u64)>,
}

/// An open, hash-chained file.
struct Chained {
    file: Box<dyn DiskFile>,
    path: PathBuf,
    day: time::Date,
    /// Bytes known durable; anything past it is a failed write to cut off.
    size: u64,
    /// Complete lines.
    lines: u64,
    last_hash: String,
    /// A write failed and its bytes may still be in the file.
    dirty: bool,
}

type Current = (Chained, u32);

impl Chained {
    /// Opens `path` for appending, first cutting off an unfinished last line (a crash or a
    /// failed write the relay could not undo), and learns the chain's last hash.
    fn open(disk: &mut dyn Disk, path: &Path, day: time::Date) -> Result<Chained, Failure> {
        let mut file = disk.open_append(path).map_err(|e| Failure::new(path, e))?;
        let bytes = std::fs::read(path).map_err(|e| Failure::new(path, e))?;
        let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
        if complete < bytes.len() {
            let torn = bytes.len() - complete;
            file.set_len(complete as u64)
                .and_then(|()| file.sync())
                .map_err(|e| Failure::new(path, e))?;
            metrics::counter!("relay_audit_torn_tails_total").increment(1);
            warn!(
                path = %path.display(),
                bytes = torn,
                "cut off an unfinished last line (a write interrupted by a crash or a full disk; it was never acknowledged)"
            );
        }
        let lines = bytes[..complete]
            .split(|b| *b == b'\n')
            .filter(|l| !l.is_empty());
        let (count, last) = lines.fold((0u64, None), |(n, _), l| (n + 1, Some(l)));
        Ok(Chained {
            file,
            path: path.to_path_buf(),
            day,
            size: complete as u64,
            lines: count,
            last_hash: last.map(line_hash).unwrap_or_else(zero_hash),
            dirty: false,
        })
    }

    /// Cuts off what a failed write may have left, so the next line starts clean.
    fn repair(&mut self) -> Result<(), Failure> {
        if self.dirty {
            self.file
                .set_len(self.size)
                .and_then(|()| self.file.sync())
                .map_err(|e| Failure::new(&self.path, e))?;
            self.dirty = false;
        }
        Ok(())
    }

    /// Appends whole lines and fsyncs; on failure cuts them off again (or marks the file
    /// to be cut before the next write).
    fn append(&mut self, buffer: &[u8], lines: u64, last_hash: String) -> Result<(), Failure> {
        self.repair()?;
        self.dirty = true;
        let written = disk::write_all(&mut *self.file, buffer).and_then(|()| self.file.sync());
        match written {
            Ok(()) => {
                self.size += buffer.len() as u64;
                self.lines += lines;
                self.last_hash = last_hash;
                self.dirty = false;
                Ok(())
            }
            Err(e) => {
                // Best effort now; `repair` tries again before the next write.
                let _ = self.repair();
                Err(Failure::new(&self.path, e))
            }
        }
    }
}

impl Files {
    /// Files on the real disk, unkeyed.
    #[cfg(test)]
    pub(crate) fn new(config: AuditConfig) -> Files {
        Files::with(config, Box::new(disk::RealDisk), None)
    }

    /// Files on `disk`, lines MACed with `key`.
    pub(crate) fn with(config: AuditConfig, disk: Box<dyn Disk>, key: Option<AuditKey>) -> Files {
        Files {
            config,
            node: None,
            key,
            disk,
            current: None,
            checkpoints: None,
            checkpointed: None,
        }
    }

    fn path_for(&self, day: time::Date, index: u32) -> PathBuf {
        self.config
            .dir
            .join(format!("audit-{day}-{index:03}.jsonl"))
    }

    /// Makes sure the current file is today's, below the size limit, and ends cleanly.
    fn roll(&mut self, now: SystemTime) -> Result<&mut Chained, Failure> {
        if let Some((current, _)) = &mut self.current {
            current.repair()?;
        }
        let today = OffsetDateTime::from(now).date();
        let needs_new = match &self.current {
            None => true,
            Some((c, _)) => c.day != today || c.size >= self.config.max_file_bytes,
        };
        if needs_new {
            if self.current.is_some() {
                // Cover the file being closed; a failure leaves it to the next checkpoint.
                let _ = self.checkpoint(now);
            }
            let mut index = match &self.current {
                Some((c, index)) if c.day == today => index + 1,
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
            let chained = Chained::open(&mut *self.disk, &path, today)?;
            // Make the new directory entry durable too.
            self.disk
                .sync_dir(&self.config.dir)
                .map_err(|e| Failure::new(&self.config.dir, e))?;
            if self.current.as_ref().is_some_and(|(c, _)| c.day != today) {
                self.prune(now);
            }
            self.current = Some((chained, index));
        }
        // Just set when it was None.
        self.current
            .as_mut()
            .map(|(c, _)| c)
            .ok_or_else(|| Failure::new(&self.config.dir, io::Error::other("no audit file")))
    }

    /// Appends events (filling in the chain and MAC), then fsyncs once. All or nothing: on
    /// failure none of them is in the file.
    pub(crate) fn append(
        &mut self,
        events: &mut [AuditEvent],
        now: SystemTime,
    ) -> Result<(), Failure> {
        let node = self.node;
        let key = self.key.clone();
        let current = self.roll(now)?;
        let mut buffer = Vec::new();
        let mut hash = current.last_hash.clone();
        for event in events.iter_mut() {
            stamp(event, now);
            event.schema = SCHEMA_VERSION;
            event.relay_node = node;
            event.prev_hash = hash;
            let line = serde_json::to_vec(event)
                .map_err(|e| Failure::new(&current.path, io::Error::other(e)))?;
            let line = chain::seal(line, key.as_ref());
            hash = line_hash(&line);
            buffer.extend_from_slice(&line);
            buffer.push(b'\n');
        }
        current.append(&buffer, events.len() as u64, hash)
    }

    /// Writes a checkpoint of the current file if it grew since the last one.
    pub(crate) fn checkpoint(&mut self, now: SystemTime) -> Result<bool, Failure> {
        let Some((current, _)) = &self.current else {
            return Ok(false);
        };
        let covered = (current.path.clone(), current.lines);
        if self.checkpointed.as_ref() == Some(&covered) || current.dirty {
            return Ok(false);
        }
        let mut checkpoint = Checkpoint {
            time: rfc3339(now),
            file: current
                .path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            lines: current.lines,
            bytes: current.size,
            tail: current.last_hash.clone(),
            prev_hash: String::new(),
        };
        let day = current.day;
        if self.checkpoints.as_ref().is_none_or(|c| c.day != day) {
            let path = chain::checkpoint_path(&self.config.dir, day);
            self.checkpoints = Some(Chained::open(&mut *self.disk, &path, day)?);
        }
        let Some(file) = self.checkpoints.as_mut() else {
            return Ok(false);
        };
        checkpoint.prev_hash = file.last_hash.clone();
        let line = chain::checkpoint_line(&checkpoint, self.key.as_ref());
        let hash = line_hash(&line);
        let mut buffer = line.clone();
        buffer.push(b'\n');
        file.append(&buffer, 1, hash)?;
        self.checkpointed = Some(covered);
        // The same line in the relay's log, for an operator to keep off this machine.
        info!(
            checkpoint = %String::from_utf8_lossy(&line),
            "audit checkpoint"
        );
        Ok(true)
    }

    /// Deletes audit and checkpoint files older than the retention time.
    pub(crate) fn prune(&self, now: SystemTime) {
        let horizon = OffsetDateTime::from(now).date()
            - time::Duration::days(i64::from(self.config.retention_days));
        let checkpoints = chain::checkpoint_files(&self.config.dir);
        for path in audit_files(&self.config.dir).into_iter().chain(checkpoints) {
            let Some(day) = super::file_day(&path) else {
                continue;
            };
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

/// Gives an event its id and time when the relay first sees it (not when a full disk
/// finally lets it be written).
pub(super) fn stamp(event: &mut AuditEvent, now: SystemTime) {
    if event.event_id.is_empty() {
        event.event_id = hex(&rand::random::<[u8; 16]>());
    }
    if event.time.is_empty() {
        event.time = rfc3339(now);
    }
}

/// Space held back in the audit folder for the ends of running sessions: a file of
/// `target` bytes, given back piece by piece when the disk is full.
pub(crate) struct Reserve {
    path: PathBuf,
    target: u64,
    file: Option<Box<dyn DiskFile>>,
}

impl Reserve {
    /// The reserve file of `config` (not opened yet).
    pub(crate) fn new(config: &AuditConfig) -> Reserve {
        Reserve {
            path: config.dir.join(RESERVE_FILE),
            target: config.reserve_bytes,
            file: None,
        }
    }

    fn file(&mut self, disk: &mut dyn Disk) -> Result<&mut Box<dyn DiskFile>, Failure> {
        if self.file.is_none() {
            self.file = Some(disk.open_rw(&self.path).map_err(|e| self.fail(e))?);
        }
        self.file
            .as_mut()
            .ok_or_else(|| Failure::new(&self.path, io::Error::other("no reserve file")))
    }

    fn fail(&self, e: io::Error) -> Failure {
        Failure::new(&self.path, e)
    }

    /// Bytes held now.
    fn len(&mut self, disk: &mut dyn Disk) -> u64 {
        self.file(disk).ok().and_then(|f| f.len().ok()).unwrap_or(0)
    }

    /// Grows the reserve back to its full size with real writes, fsynced; shrinks it if the
    /// target is smaller.
    fn restore(&mut self, disk: &mut dyn Disk) -> Result<(), Failure> {
        let target = self.target;
        let path = self.path.clone();
        let fail = |e| Failure::new(&path, e);
        let file = self.file(disk)?;
        let mut len = file.len().map_err(fail)?;
        if len > target {
            file.set_len(target)
                .and_then(|()| file.sync())
                .map_err(fail)?;
            return Ok(());
        }
        if len == target {
            return Ok(());
        }
        match file.allocate(target) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::Unsupported => {
                // Random bytes: a compressing or deduplicating file system must store them.
                let chunk: Vec<u8> = (0..64 << 10).map(|_| rand::random::<u8>()).collect();
                len = file.seek_end().map_err(fail)?;
                while len < target {
                    let n = ((target - len) as usize).min(chunk.len());
                    disk::write_all(&mut **file, &chunk[..n]).map_err(fail)?;
                    len += n as u64;
                }
            }
            Err(e) => return Err(fail(e)),
        }
        file.sync().map_err(fail)
    }

    /// Gives back up to `bytes` (at least [`RELEASE_STEP`]); false when nothing is left.
    fn release(&mut self, disk: &mut dyn Disk, bytes: u64) -> Result<bool, Failure> {
        let path = self.path.clone();
        let file = self.file(disk)?;
        let len = file.len().map_err(|e| Failure::new(&path, e))?;
        if len == 0 {
            return Ok(false);
        }
        let left = len.saturating_sub(bytes.max(RELEASE_STEP));
        file.set_len(left)
            .and_then(|()| file.sync())
            .map_err(|e| Failure::new(&path, e))?;
        metrics::gauge!("relay_audit_reserve_bytes").set(left as f64);
        warn!(
            released = len - left,
            left, "disk full: audit reserve given back for the ends of running sessions"
        );
        Ok(true)
    }

    /// A real write and fsync past the end of the full reserve, then cut back: succeeds
    /// only when an event written now would be durable.
    fn probe(&mut self, disk: &mut dyn Disk) -> Result<(), Failure> {
        let path = self.path.clone();
        let fail = |e| Failure::new(&path, e);
        let file = self.file(disk)?;
        let len = file.seek_end().map_err(fail)?;
        let written = disk::write_all(&mut **file, &[b'.'; PROBE_BYTES]).and_then(|()| file.sync());
        // Cut back whether or not the write worked (a full disk may have taken part of it).
        let cut = file.set_len(len).and_then(|()| file.sync());
        written.and(cut).map_err(fail)
    }
}

fn count_probe(ok: bool) {
    metrics::counter!("relay_audit_probes_total", "result" => if ok { "ok" } else { "failed" })
        .increment(1);
}

/// The reserve file's name in the audit folder.
pub const RESERVE_FILE: &str = "audit-reserve.bin";

/// One waiting caller.
type Ack = oneshot::Sender<Result<(), AuditError>>;

/// The writer thread's state.
pub(super) struct Writer {
    pub(super) files: Files,
    pub(super) reserve: Reserve,
    /// Events the disk refused, oldest first; written before anything newer.
    pub(super) held: VecDeque<AuditEvent>,
    pub(super) available: Arc<AtomicBool>,
    pub(super) publish: tokio::sync::watch::Sender<bool>,
    /// Whether anything was written since the last tick (which then needs no probe).
    wrote: bool,
    last_checkpoint: Instant,
    /// Sessions recovered at start, counted once their ends are written.
    pub(super) recovering: usize,
}

impl Writer {
    pub(super) fn new(files: Files, reserve: Reserve, mut held: Vec<AuditEvent>) -> Writer {
        let now = SystemTime::now();
        for event in &mut held {
            stamp(event, now);
        }
        let (publish, _) = tokio::sync::watch::channel(false);
        Writer {
            files,
            reserve,
            recovering: held.len(),
            held: held.into(),
            available: Arc::new(AtomicBool::new(false)),
            publish,
            wrote: false,
            last_checkpoint: Instant::now(),
        }
    }

    fn is_available(&self) -> bool {
        self.available.load(Ordering::Relaxed)
    }

    fn set_available(&mut self, now: bool, why: Option<&AuditError>) {
        let was = self.available.swap(now, Ordering::Relaxed);
        metrics::gauge!("relay_audit_available").set(if now { 1.0 } else { 0.0 });
        match (was, now, why) {
            (true, false, Some(e)) => {
                error!(error = %e, "audit log cannot be written; new sessions are refused")
            }
            (false, true, _) => info!("audit log writable (reserve in place, probe written)"),
            _ => {}
        }
        self.publish.send_if_modified(|current| {
            let changed = *current != now;
            *current = now;
            changed
        });
    }

    fn publish_held(&self) {
        metrics::gauge!("relay_audit_held_events").set(self.held.len() as f64);
    }

    /// The thread's loop: batches, writes, acknowledges; on each tick probes and
    /// checkpoints. On [`Submit::Close`], or when every handle is gone, writes what is still
    /// queued, makes a last attempt at held events and writes a last checkpoint. The caller
    /// learns that all of it is done when this returns (`AuditLog::close` waits for it).
    pub(super) fn run(mut self, mut rx: mpsc::Receiver<Submit>) {
        while let Some(first) = rx.blocking_recv() {
            let mut batch = vec![first];
            while batch.len() < MAX_BATCH {
                match rx.try_recv() {
                    Ok(more) => batch.push(more),
                    Err(_) => break,
                }
            }
            let mut events = Vec::with_capacity(batch.len());
            let mut tick = false;
            for submit in batch {
                match submit {
                    Submit::Event { event, ack, start } => events.push((*event, ack, start)),
                    Submit::Tick => tick = true,
                    // No new submissions; those already queued are still received (in
                    // order) before `blocking_recv` says the channel is done.
                    Submit::Close => rx.close(),
                }
            }
            if !events.is_empty() {
                self.write(events, SystemTime::now());
            }
            if tick {
                self.tick(SystemTime::now());
            }
        }
        if !self.held.is_empty() {
            self.recover(SystemTime::now());
        }
        if !self.held.is_empty() {
            error!(
                events = self.held.len(),
                "stopping with audit events that could not be written; the next start records their sessions as RELAY_RESTARTED"
            );
        }
        let _ = self.files.checkpoint(SystemTime::now());
    }

    /// Writes a batch: held events first, then these, in order.
    pub(super) fn write(&mut self, batch: Vec<(AuditEvent, Option<Ack>, bool)>, now: SystemTime) {
        let started = Instant::now();
        let mut events = Vec::with_capacity(self.held.len() + batch.len());
        events.extend(self.held.drain(..));
        let held = events.len();
        let mut acks = Vec::with_capacity(batch.len());
        for (mut event, ack, start) in batch {
            stamp(&mut event, now);
            if start && !self.is_available() {
                // Never written from the reserve: the session is refused instead.
                if let Some(ack) = ack {
                    let _ = ack.send(Err(AuditError::Unavailable));
                }
                continue;
            }
            events.push(event);
            acks.push((ack, start));
        }
        let result = if self.is_available() {
            self.files.append(&mut events, now)
        } else {
            Err(Failure::new(
                &self.files.config.dir,
                io::Error::other("unavailable"),
            ))
        };
        metrics::histogram!("relay_audit_write_seconds").record(started.elapsed().as_secs_f64());
        let failure = match result {
            Ok(()) => {
                self.wrote = true;
                for (ack, _) in acks {
                    if let Some(ack) = ack {
                        let _ = ack.send(Ok(()));
                    }
                }
                self.publish_held();
                return;
            }
            Err(failure) => failure,
        };
        if self.is_available() {
            metrics::counter!("relay_audit_write_failures_total", "reason" => "io").increment(1);
            self.set_available(false, Some(&failure.to_audit()));
        }
        // The starts are refused; everything else goes on into the reserve.
        let mut keep = Vec::with_capacity(events.len());
        let mut kept_acks = Vec::with_capacity(acks.len());
        let mut events = events.into_iter();
        keep.extend(events.by_ref().take(held));
        for (event, (ack, start)) in events.zip(acks) {
            if start {
                if let Some(ack) = ack {
                    let _ = ack.send(Err(failure.to_audit()));
                }
            } else {
                keep.push(event);
                kept_acks.push(ack);
            }
        }
        let outcome = if keep.is_empty() {
            Ok(())
        } else {
            self.append_from_reserve(&mut keep, now)
        };
        let reply = match outcome {
            Ok(()) => Ok(()),
            Err(failure) => {
                for event in keep {
                    self.hold(event);
                }
                Err(AuditError::Held {
                    reason: failure.to_audit().to_string(),
                })
            }
        };
        self.publish_held();
        for ack in kept_acks.into_iter().flatten() {
            let _ = ack.send(reply.clone());
        }
    }

    /// Appends, giving back reserve space each time the disk is full.
    fn append_from_reserve(
        &mut self,
        events: &mut [AuditEvent],
        now: SystemTime,
    ) -> Result<(), Failure> {
        loop {
            match self.files.append(events, now) {
                Ok(()) => return Ok(()),
                Err(failure) if failure.no_space() => {
                    let need: u64 = events
                        .iter()
                        .map(|e| serde_json::to_vec(e).map_or(1024, |l| l.len() as u64 + 100))
                        .sum();
                    match self.reserve.release(&mut *self.files.disk, need) {
                        Ok(true) => continue,
                        _ => return Err(failure),
                    }
                }
                Err(failure) => return Err(failure),
            }
        }
    }

    /// Keeps an event for later; past [`HELD_LIMIT`], drops refusals and path changes.
    pub(super) fn hold(&mut self, event: AuditEvent) {
        let droppable = matches!(
            event.event,
            Some(EventKind::SessionRefused | EventKind::PathChanged)
        );
        if droppable && self.held.len() >= HELD_LIMIT {
            let kind = event.event.map_or("unknown", |k| match k {
                EventKind::SessionRefused => "session_refused",
                _ => "path_changed",
            });
            metrics::counter!("relay_audit_events_dropped_total", "event" => kind).increment(1);
            warn!(
                event = kind,
                held = self.held.len(),
                "audit memory queue full while the disk is down: event dropped"
            );
            return;
        }
        self.held.push_back(event);
    }

    /// Time passed: while unavailable, try to recover; otherwise probe if nothing was
    /// written lately, and checkpoint when one is due.
    pub(super) fn tick(&mut self, now: SystemTime) {
        if !self.is_available() {
            self.recover(now);
        } else if !std::mem::take(&mut self.wrote) {
            let probed = self.reserve.probe(&mut *self.files.disk);
            count_probe(probed.is_ok());
            if let Err(failure) = probed {
                metrics::counter!("relay_audit_write_failures_total", "reason" => "probe")
                    .increment(1);
                self.set_available(false, Some(&failure.to_audit()));
            }
        }
        if self.is_available() && self.last_checkpoint.elapsed() >= CHECKPOINT_INTERVAL {
            self.last_checkpoint = Instant::now();
            if let Err(failure) = self.files.checkpoint(now) {
                warn!(error = %failure.to_audit(), "audit checkpoint could not be written");
            }
        }
    }

    /// Writes the held events, restores the reserve, and probes past it; the log is
    /// available again only when all three worked.
    pub(super) fn recover(&mut self, now: SystemTime) {
        let result = (|| {
            if !self.held.is_empty() {
                let mut events: Vec<AuditEvent> = self.held.iter().cloned().collect();
                self.append_from_reserve(&mut events, now)?;
                self.held.clear();
                self.publish_held();
                if self.recovering > 0 {
                    warn!(
                        sessions = self.recovering,
                        "closed sessions left open by an unclean stop (RELAY_RESTARTED)"
                    );
                    metrics::counter!("relay_audit_recovered_sessions_total")
                        .increment(self.recovering as u64);
                    self.recovering = 0;
                }
            }
            if let Some((current, _)) = &mut self.files.current {
                current.repair()?;
            }
            self.reserve.restore(&mut *self.files.disk)?;
            metrics::gauge!("relay_audit_reserve_bytes").set(self.reserve.target as f64);
            self.reserve.probe(&mut *self.files.disk)
        })();
        count_probe(result.is_ok());
        self.publish_held();
        match result {
            Ok(()) => self.set_available(true, None),
            Err(failure) => {
                let len = self.reserve.len(&mut *self.files.disk);
                metrics::gauge!("relay_audit_reserve_bytes").set(len as f64);
                tracing::debug!(error = %failure.to_audit(), "audit log still cannot be written");
            }
        }
    }
}
