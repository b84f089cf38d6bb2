//! The reports index: an SQLite database beside the audit log that answers report queries
//! over 30 days of a large tenant quickly. It is **never the source of truth**: everything
//! in it is derived from the audit files, and it can be deleted at any time.
//!
//! How it stays current: before each query, [`ReportIndex::catch_up`] reads the complete
//! lines the audit files gained since the last query (the position in each file is stored
//! in the index, in the same transaction as the rows those lines produced). Reading the
//! files, rather than being fed by the audit writer, keeps the writer's hot path (group
//! commit, fsync, refusal handling) untouched and makes the index answer exactly what is
//! on disk, including events written by another process (`relay sessions`-style tools) or
//! before a restart. The cost is a `stat` per file per query, and the lag is zero at query
//! time.
//!
//! When its recorded position does not match the files (a file shorter than the recorded
//! offset, or the last line read no longer where it was: a write cut back after a failed
//! fsync, an edited file), when its schema or audit folder differs, or when it cannot be
//! opened, it is deleted and rebuilt from every audit file.
//!
//! Row semantics follow [`super::sessions`] exactly (the integration tests compare the
//! two): a session's row comes from its `session_started`, `mode_changed` and
//! `session_ended` add modes in order of first use, a `path_changed` to `direct` marks it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use rusqlite::{Connection, OptionalExtension, Transaction, params};
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;

use super::SessionRow;
use crate::audit::{AuditEvent, EndedBy, EventKind, audit_files, parse_time};

/// The index's schema version; a different one is rebuilt.
const SCHEMA: i64 = 1;

/// Events read in one catch-up after which the planner's statistics are refreshed.
const ANALYZE_AFTER: u64 = 5_000;

/// The index file's name in the state folder.
pub const INDEX_FILE: &str = "reports-index.sqlite";

/// Why the index could not answer.
#[derive(Debug, thiserror::Error)]
pub enum IndexError {
    /// SQLite refused an operation.
    #[error("reports index: {0}")]
    Sqlite(#[from] rusqlite::Error),
    /// An audit file or the index file could not be read or removed.
    #[error("reports index: {path}: {reason}")]
    Io {
        /// The file.
        path: String,
        /// What failed.
        reason: String,
    },
}

fn io_error(path: &Path, e: impl std::fmt::Display) -> IndexError {
    IndexError::Io {
        path: path.display().to_string(),
        reason: e.to_string(),
    }
}

/// Which sessions a query is about. Every query names a tenant unless the operator asks.
#[derive(Debug, Clone, Default)]
pub struct SessionQuery {
    /// Only this tenant's sessions (`None`: the operator's all-tenant view).
    pub tenant: Option<String>,
    /// Sessions that started at or after this (Unix ms).
    pub since_ms: Option<i64>,
    /// Sessions that started before this (Unix ms).
    pub until_ms: Option<i64>,
    /// The helper's id or display name.
    pub helper: Option<String>,
    /// The recipient's (sharer's) id or display name (`--`: device agents with no user).
    pub recipient: Option<String>,
    /// The device's id or name.
    pub device: Option<String>,
    /// A mode the session used.
    pub mode: Option<String>,
    /// The end reason (`PEER_ENDED`, `ADMIN_ENDED`…).
    pub end_reason: Option<String>,
}

/// What sessions are sorted by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SortKey {
    /// Start time (the default).
    StartTime,
    /// Duration (sessions still running sort as shortest).
    Duration,
    /// Helper name.
    Helper,
    /// Recipient name.
    Recipient,
    /// Device name.
    Device,
}

impl SortKey {
    /// The name used in `sort=`.
    pub fn parse(text: &str) -> Option<SortKey> {
        Some(match text {
            "start_time" => SortKey::StartTime,
            "duration" => SortKey::Duration,
            "helper" => SortKey::Helper,
            "recipient" => SortKey::Recipient,
            "device" => SortKey::Device,
            _ => return None,
        })
    }

    fn column(self) -> &'static str {
        match self {
            SortKey::StartTime => "start_ms",
            SortKey::Duration => "dur_key",
            SortKey::Helper => "helper",
            SortKey::Recipient => "sharer",
            SortKey::Device => "device",
        }
    }
}

/// Where a page starts: the sort value and identity of the last row of the page before.
/// Ties on the sort value are broken by tenant, then session id, so pages never repeat or
/// skip a row.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Cursor {
    /// The sort the cursor belongs to.
    pub sort: SortKey,
    /// Descending?
    pub desc: bool,
    /// The last row's sort value.
    pub value: CursorValue,
    /// The last row's tenant.
    pub tenant: String,
    /// The last row's session id.
    pub session: String,
}

/// A sort value in a cursor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum CursorValue {
    /// Start time (ms) sorts.
    Int(i64),
    /// Duration sorts.
    Real(f64),
    /// Name sorts.
    Text(String),
}

/// One session as the reports API shows it: the `relay sessions` row and the ids and
/// bytes behind it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IndexedSession {
    /// The row `relay sessions` reports.
    #[serde(flatten)]
    pub row: SessionRow,
    /// Helper object id.
    pub helper_id: Option<String>,
    /// Recipient object id (`--` for a device agent with no user).
    pub sharer_id: Option<String>,
    /// Device id.
    pub device_id: Option<String>,
    /// Bytes the relay forwarded helper → sharer, once ended.
    pub bytes_helper_to_sharer: Option<u64>,
    /// Bytes the relay forwarded sharer → helper, once ended.
    pub bytes_sharer_to_helper: Option<u64>,
    /// For sessions ended by an administrator: who (`operator`, `tenant:<subject>`).
    pub administrator: Option<String>,
}

/// A mode or path change in a session's detail.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Change {
    /// When, RFC 3339.
    pub time: String,
    /// `mode` or `path`.
    pub kind: String,
    /// The new mode (`full_control`…) or path (`direct`, `relayed`).
    pub value: String,
}

/// Summary figures over a time range.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Summary {
    /// Sessions started in the range.
    pub sessions: u64,
    /// Sessions started per UTC day (`YYYY-MM-DD`).
    pub sessions_per_day: BTreeMap<String, u64>,
    /// Median duration of the ended ones, seconds (0 when none ended).
    pub median_duration_secs: f64,
    /// 90th percentile (nearest rank) of their durations, seconds.
    pub p90_duration_secs: f64,
    /// Sessions that used each mode.
    pub by_mode: BTreeMap<String, u64>,
    /// Sessions per sharer platform.
    pub by_platform: BTreeMap<String, u64>,
    /// Refusals in the range, per code.
    pub refusals_by_reason: BTreeMap<String, u64>,
}

/// The index, open.
pub struct ReportIndex {
    path: PathBuf,
    audit_dir: PathBuf,
    db: Connection,
}

impl std::fmt::Debug for ReportIndex {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ReportIndex")
            .field("path", &self.path)
            .field("audit_dir", &self.audit_dir)
            .finish_non_exhaustive()
    }
}

const CREATE: &str = "
CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE files (
  name TEXT PRIMARY KEY,
  offset INTEGER NOT NULL,
  last_line_start INTEGER NOT NULL,
  last_line_hash TEXT NOT NULL
);
CREATE TABLE sessions (
  tenant TEXT NOT NULL, session_id TEXT NOT NULL,
  helper TEXT NOT NULL, helper_id TEXT,
  sharer TEXT NOT NULL, sharer_id TEXT,
  device TEXT NOT NULL, device_id TEXT, platform TEXT NOT NULL,
  start_time TEXT NOT NULL, start_ms INTEGER NOT NULL,
  end_time TEXT, duration_secs REAL, dur_key REAL NOT NULL,
  control_type TEXT NOT NULL, modes TEXT NOT NULL,
  end_reason TEXT, ended_by TEXT, administrator TEXT, reason TEXT, relay_node INTEGER,
  went_direct INTEGER NOT NULL, bytes_h2s INTEGER, bytes_s2h INTEGER,
  PRIMARY KEY (tenant, session_id)
) WITHOUT ROWID;
CREATE INDEX sessions_by_start ON sessions
  (tenant, start_ms, session_id, platform, modes, duration_secs);
CREATE INDEX sessions_by_duration ON sessions (tenant, dur_key, session_id, start_ms);
CREATE INDEX sessions_by_helper ON sessions (tenant, helper, session_id);
CREATE INDEX sessions_by_sharer ON sessions (tenant, sharer, session_id);
CREATE INDEX sessions_by_device ON sessions (tenant, device, session_id);
CREATE INDEX sessions_by_helper_id ON sessions (tenant, helper_id);
CREATE INDEX sessions_by_sharer_id ON sessions (tenant, sharer_id);
CREATE INDEX sessions_by_device_id ON sessions (tenant, device_id);
CREATE TABLE changes (tenant TEXT NOT NULL, session_id TEXT NOT NULL, seq INTEGER NOT NULL,
  time TEXT NOT NULL, kind TEXT NOT NULL, value TEXT NOT NULL);
CREATE INDEX changes_by_session ON changes (tenant, session_id, seq);
CREATE TABLE refusals (tenant TEXT NOT NULL, time_ms INTEGER NOT NULL, refusal TEXT NOT NULL);
CREATE INDEX refusals_by_time ON refusals (tenant, time_ms);
";

/// The columns of a session row, in the order [`read_session`] reads them.
const COLUMNS: &str = "tenant, session_id, helper, helper_id, sharer, sharer_id, device, \
     device_id, platform, start_time, end_time, duration_secs, control_type, modes, end_reason, \
     ended_by, administrator, reason, relay_node, went_direct, bytes_h2s, bytes_s2h, start_ms, \
     dur_key";

impl ReportIndex {
    /// Opens the index at `path` for the audit files in `audit_dir`, rebuilding it when it
    /// is missing, unreadable, of another schema or of another folder, then catches up.
    pub fn open(path: &Path, audit_dir: &Path) -> Result<ReportIndex, IndexError> {
        let reusable = path.exists()
            && Connection::open(path)
                .ok()
                .and_then(|db| Self::recorded(&db).ok())
                .is_some_and(|(schema, dir)| {
                    schema == SCHEMA && dir == audit_dir.display().to_string()
                });
        let mut index = if reusable {
            ReportIndex {
                db: Self::connect(path)?,
                path: path.to_path_buf(),
                audit_dir: audit_dir.to_path_buf(),
            }
        } else {
            Self::create(path, audit_dir)?
        };
        index.catch_up()?;
        Ok(index)
    }

    fn recorded(db: &Connection) -> rusqlite::Result<(i64, String)> {
        let schema: String =
            db.query_row("SELECT value FROM meta WHERE key = 'schema'", [], |r| {
                r.get(0)
            })?;
        let dir: String =
            db.query_row("SELECT value FROM meta WHERE key = 'audit_dir'", [], |r| {
                r.get(0)
            })?;
        Ok((schema.parse().unwrap_or(-1), dir))
    }

    fn connect(path: &Path) -> Result<Connection, IndexError> {
        let db = Connection::open(path)?;
        // Losing the last transactions in a crash is harmless (they are read again from
        // the audit files); WAL keeps the file consistent, so no fsync per commit.
        db.pragma_update(None, "journal_mode", "WAL")?;
        db.pragma_update(None, "synchronous", "NORMAL")?;
        db.pragma_update(None, "cache_size", -65_536)?;
        Ok(db)
    }

    fn create(path: &Path, audit_dir: &Path) -> Result<ReportIndex, IndexError> {
        remove_database(path)?;
        metrics::counter!("relay_report_index_rebuilds_total").increment(1);
        let db = Self::connect(path)?;
        db.execute_batch(CREATE)?;
        db.execute(
            "INSERT INTO meta (key, value) VALUES ('schema', ?1), ('audit_dir', ?2)",
            params![SCHEMA.to_string(), audit_dir.display().to_string()],
        )?;
        Ok(ReportIndex {
            db,
            path: path.to_path_buf(),
            audit_dir: audit_dir.to_path_buf(),
        })
    }

    /// Deletes the index and builds it again from every audit file.
    pub fn rebuild(&mut self) -> Result<(), IndexError> {
        self.recreate()?;
        self.catch_up().map(drop)
    }

    /// Builds an empty database beside this one, then puts it in this one's place. Built
    /// first, so a failure there (a full disk, a refused folder) leaves this index as it
    /// was rather than half replaced; the caller drops an index that answered an error
    /// (`server::reports`), so the next query opens afresh either way.
    ///
    /// The old connection is closed before its files are removed, and the new one before
    /// it is renamed: SQLite removes a write-ahead log by name when its last connection
    /// closes, and a connection closing after the files were swapped would remove the
    /// other database's log.
    fn recreate(&mut self) -> Result<(), IndexError> {
        let fresh = PathBuf::from(format!("{}.new", self.path.display()));
        let built = Self::create(&fresh, &self.audit_dir)?;
        // Closing the only connection checkpoints its log into the file and removes it.
        built.db.close().map_err(|(_, e)| e)?;
        drop(std::mem::replace(
            &mut self.db,
            Connection::open_in_memory()?,
        ));
        remove_database(&self.path)?;
        std::fs::rename(&fresh, &self.path).map_err(|e| io_error(&self.path, e))?;
        self.db = Self::connect(&self.path)?;
        Ok(())
    }

    /// Reads what the audit files gained since the last call (complete lines only);
    /// rebuilds instead when the recorded position no longer matches the files. Returns
    /// the number of events read.
    pub fn catch_up(&mut self) -> Result<u64, IndexError> {
        if !self.path.exists() {
            // Deleted under a running relay (an operator's way to force a rebuild).
            tracing::warn!(index = %self.path.display(), "reports index deleted; rebuilding it");
            self.recreate()?;
        }
        match self.read_new()? {
            Some(read) => Ok(read),
            None => {
                tracing::warn!(index = %self.path.display(), "audit files changed under the reports index; rebuilding it");
                self.recreate()?;
                Ok(self.read_new()?.unwrap_or(0))
            }
        }
    }

    /// `None`: a position mismatch (rebuild).
    fn read_new(&mut self) -> Result<Option<u64>, IndexError> {
        let started = Instant::now();
        let files = audit_files(&self.audit_dir);
        let tx = self.db.transaction()?;
        let mut read = 0u64;
        for file in files {
            let Some(name) = file.file_name().and_then(|n| n.to_str()).map(str::to_owned) else {
                continue;
            };
            let size = match std::fs::metadata(&file) {
                Ok(m) => m.len(),
                // Pruned between the listing and now.
                Err(_) => continue,
            };
            let known: Option<(i64, i64, String)> = tx
                .query_row(
                    "SELECT offset, last_line_start, last_line_hash FROM files WHERE name = ?1",
                    [&name],
                    |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)),
                )
                .optional()?;
            let known = known.map(|(o, s, h)| (o.max(0) as u64, s.max(0) as u64, h));
            let (offset, _, _) = known.clone().unwrap_or((0, 0, String::new()));
            if size < offset {
                return Ok(None);
            }
            // Read only from the last line already read (to check it is still there) to
            // the end: today's file can be tens of MiB, queries come often. Also when the
            // file has not grown (one line's read): a write cut back after a failed fsync
            // and followed by another event of exactly the same length leaves the size
            // unchanged, and only the last line's hash tells.
            let base = known.as_ref().map_or(0, |k| k.1);
            let bytes = read_from(&file, base)?;
            if let Some((offset, start, hash)) = &known
                && *offset > 0
            {
                // The last line read must still be there, unchanged.
                let last = bytes.get(0..(offset - start).saturating_sub(1) as usize);
                if last.is_none_or(|line| crate::audit::line_hash_hex(line) != *hash) {
                    return Ok(None);
                }
            }
            let from = (offset - base) as usize;
            let end = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
            if end <= from {
                continue;
            }
            let mut position = from;
            let mut last_start = 0;
            for line in bytes[from..end].split_inclusive(|b| *b == b'\n') {
                let text = &line[..line.len() - 1];
                last_start = position;
                position += line.len();
                if text.is_empty() {
                    continue;
                }
                match serde_json::from_slice::<AuditEvent>(text) {
                    Ok(event) => {
                        apply(&tx, &event)?;
                        read += 1;
                    }
                    Err(_) => {
                        tracing::warn!(file = %name, offset = base + last_start as u64, "unreadable audit line left out of the reports index")
                    }
                }
            }
            let last_hash = crate::audit::line_hash_hex(&bytes[last_start..end - 1]);
            let (end, last_start) = (base + end as u64, base + last_start as u64);
            tx.execute(
                "INSERT INTO files (name, offset, last_line_start, last_line_hash) VALUES (?1, ?2, ?3, ?4)
                 ON CONFLICT (name) DO UPDATE SET offset = ?2, last_line_start = ?3, last_line_hash = ?4",
                params![name, end as i64, last_start as i64, last_hash],
            )?;
        }
        tx.commit()?;
        if read >= ANALYZE_AFTER {
            // The planner's statistics: with them it picks the helper index for a helper
            // filter and the duration index for a duration sort, instead of walking every
            // session of the tenant by start time. A sample, so this stays quick.
            self.db
                .execute_batch("PRAGMA analysis_limit = 1000; ANALYZE;")?;
        }
        if read > 0 {
            metrics::histogram!("relay_report_index_catch_up_seconds")
                .record(started.elapsed().as_secs_f64());
            metrics::counter!("relay_report_index_events_total").increment(read);
        }
        Ok(Some(read))
    }

    /// One page of sessions matching `query`, sorted by `sort` (descending when `desc`),
    /// after `cursor`; `limit` rows at most. Also returns the cursor of the next page, if
    /// there may be one.
    pub fn sessions(
        &self,
        query: &SessionQuery,
        sort: SortKey,
        desc: bool,
        cursor: Option<&Cursor>,
        limit: usize,
    ) -> Result<(Vec<IndexedSession>, Option<Cursor>), IndexError> {
        let (from, mut args) = driving_from(query);
        let (mut sql, more) = where_clause(query);
        args.extend(more);
        if let Some(cursor) = cursor {
            let op = if desc { "<" } else { ">" };
            let column = sort.column();
            sql.push_str(&format!(
                " AND ({column}, tenant, session_id) {op} (?, ?, ?)"
            ));
            args.push(match &cursor.value {
                CursorValue::Int(v) => rusqlite::types::Value::Integer(*v),
                CursorValue::Real(v) => rusqlite::types::Value::Real(*v),
                CursorValue::Text(v) => rusqlite::types::Value::Text(v.clone()),
            });
            args.push(rusqlite::types::Value::Text(cursor.tenant.clone()));
            args.push(rusqlite::types::Value::Text(cursor.session.clone()));
        }
        let dir = if desc { "DESC" } else { "ASC" };
        let column = sort.column();
        let sql = format!(
            "SELECT {COLUMNS} FROM {from} WHERE {sql} ORDER BY {column} {dir}, tenant {dir}, session_id {dir} LIMIT {}",
            limit + 1
        );
        let mut stmt = self.db.prepare_cached(&sql)?;
        let mut rows = Vec::new();
        let mut keys = Vec::new();
        let mut found = stmt.query(rusqlite::params_from_iter(args))?;
        while let Some(r) = found.next()? {
            let session = read_session(r)?;
            let value = match sort {
                SortKey::StartTime => CursorValue::Int(r.get(22)?),
                SortKey::Duration => CursorValue::Real(r.get(23)?),
                SortKey::Helper => CursorValue::Text(session.row.helper.clone()),
                SortKey::Recipient => CursorValue::Text(session.row.sharer.clone()),
                SortKey::Device => CursorValue::Text(session.row.device.clone()),
            };
            keys.push(value);
            rows.push(session);
        }
        let next = if rows.len() > limit {
            rows.truncate(limit);
            rows.last().map(|last| Cursor {
                sort,
                desc,
                value: keys[limit - 1].clone(),
                tenant: last.row.tenant.clone(),
                session: last.row.session_id.clone(),
            })
        } else {
            None
        };
        Ok((rows, next))
    }

    /// Every session matching `query`, oldest first (for CSV export).
    pub fn all_sessions(&self, query: &SessionQuery) -> Result<Vec<IndexedSession>, IndexError> {
        let (from, mut args) = driving_from(query);
        let (sql, more) = where_clause(query);
        args.extend(more);
        let sql = format!(
            "SELECT {COLUMNS} FROM {from} WHERE {sql} ORDER BY start_ms, tenant, session_id"
        );
        let mut stmt = self.db.prepare_cached(&sql)?;
        let mut found = stmt.query(rusqlite::params_from_iter(args))?;
        let mut rows = Vec::new();
        while let Some(r) = found.next()? {
            rows.push(read_session(r)?);
        }
        Ok(rows)
    }

    /// One session with its mode and path changes; `tenant` `None` for the operator.
    pub fn session(
        &self,
        tenant: Option<&str>,
        session_id: &str,
        since_ms: i64,
    ) -> Result<Option<(IndexedSession, Vec<Change>)>, IndexError> {
        // A tenant's lookup is by primary key; the operator's (no tenant) scans.
        let mut stmt = self.db.prepare_cached(&if tenant.is_some() {
            format!(
                "SELECT {COLUMNS} FROM sessions WHERE tenant = ?2 AND session_id = ?1 \
                 AND start_ms >= ?3"
            )
        } else {
            format!(
                "SELECT {COLUMNS} FROM sessions WHERE ?2 IS NULL AND session_id = ?1 \
                 AND start_ms >= ?3 ORDER BY tenant LIMIT 1"
            )
        })?;
        let Some(session) = stmt
            .query_row(params![session_id, tenant, since_ms], read_session)
            .optional()?
        else {
            return Ok(None);
        };
        let mut stmt = self.db.prepare_cached(
            "SELECT time, kind, value FROM changes WHERE tenant = ?1 AND session_id = ?2 ORDER BY seq",
        )?;
        let changes = stmt
            .query_map(params![session.row.tenant, session_id], |r| {
                Ok(Change {
                    time: r.get(0)?,
                    kind: r.get(1)?,
                    value: r.get(2)?,
                })
            })?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Some((session, changes)))
    }

    /// Summary figures for the sessions and refusals of `tenant` (all: `None`) that started
    /// in `[since_ms, until_ms)`.
    pub fn summary(
        &self,
        tenant: Option<&str>,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Summary, IndexError> {
        // Everything is aggregated inside SQLite: the groups are few (days, platforms,
        // mode combinations), and the percentiles are read at their ranks from one sort.
        let mut summary = Summary::default();
        // `tenant = ?1` only when there is one: `(?1 IS NULL OR ...)` would keep SQLite from
        // using the index.
        let range = if tenant.is_some() {
            "tenant = ?1 AND start_ms >= ?2 AND start_ms < ?3"
        } else {
            "?1 IS NULL AND start_ms >= ?2 AND start_ms < ?3"
        };
        let mut stmt = self.db.prepare_cached(&format!(
            "SELECT start_ms / 86400000, count(*) FROM sessions INDEXED BY sessions_by_start \
             WHERE {range} GROUP BY 1"
        ))?;
        let mut found = stmt.query(params![tenant, since_ms, until_ms])?;
        while let Some(r) = found.next()? {
            let day: i64 = r.get(0)?;
            let count = r.get::<_, i64>(1)? as u64;
            let date = OffsetDateTime::from_unix_timestamp(day * 86_400)
                .map(|d| d.date().to_string())
                .unwrap_or_default();
            summary.sessions += count;
            summary.sessions_per_day.insert(date, count);
        }
        let mut stmt = self.db.prepare_cached(&format!(
            "SELECT platform, modes, count(*), count(duration_secs) FROM sessions \
             INDEXED BY sessions_by_start WHERE {range} GROUP BY platform, modes"
        ))?;
        let mut ended = 0u64;
        let mut found = stmt.query(params![tenant, since_ms, until_ms])?;
        while let Some(r) = found.next()? {
            let platform: String = r.get(0)?;
            let modes: String = r.get(1)?;
            let count = r.get::<_, i64>(2)? as u64;
            ended += r.get::<_, i64>(3)? as u64;
            *summary.by_platform.entry(platform).or_default() += count;
            for mode in modes.split(',').filter(|m| !m.is_empty()) {
                *summary.by_mode.entry(mode.to_string()).or_default() += count;
            }
        }
        if ended > 0 {
            // 1-based ranks: the median's one or two, and p90's nearest rank.
            let (low, high) = (ended.div_ceil(2), ended / 2 + 1);
            let p90 = ((0.9 * ended as f64).ceil() as u64).clamp(1, ended);
            // Read at their ranks along the (tenant, duration) index: no sort. Running
            // sessions have `dur_key` -1.
            let mut stmt = self.db.prepare_cached(&format!(
                "SELECT dur_key FROM sessions INDEXED BY sessions_by_duration WHERE {range} \
                 AND dur_key >= 0 ORDER BY dur_key LIMIT 1 OFFSET ?4"
            ))?;
            let mut at = BTreeMap::new();
            for rank in [low, high, p90] {
                if let Some(d) = stmt
                    .query_row(params![tenant, since_ms, until_ms, rank as i64 - 1], |r| {
                        r.get::<_, f64>(0)
                    })
                    .optional()?
                {
                    at.insert(rank, d);
                }
            }
            let value = |rank: u64| at.get(&rank).copied().unwrap_or(0.0);
            summary.median_duration_secs = if ended % 2 == 1 {
                value(low)
            } else {
                (value(ended / 2) + value(high)) / 2.0
            };
            summary.p90_duration_secs = value(p90);
        }
        let mut stmt = self.db.prepare_cached(if tenant.is_some() {
            "SELECT refusal, count(*) FROM refusals WHERE tenant = ?1 \
                 AND time_ms >= ?2 AND time_ms < ?3 GROUP BY refusal"
        } else {
            "SELECT refusal, count(*) FROM refusals WHERE ?1 IS NULL \
                 AND time_ms >= ?2 AND time_ms < ?3 GROUP BY refusal"
        })?;
        let mut found = stmt.query(params![tenant, since_ms, until_ms])?;
        while let Some(r) = found.next()? {
            summary
                .refusals_by_reason
                .insert(r.get(0)?, r.get::<_, i64>(1)? as u64);
        }
        Ok(summary)
    }

    /// The durations of the ended sessions of `tenant` (all: `None`) that started in
    /// `[since_ms, until_ms)`, ascending: a node's raw material for a cluster-wide median
    /// and p90 (`report::merge`), which cannot be computed from each node's own.
    pub fn durations(
        &self,
        tenant: Option<&str>,
        since_ms: i64,
        until_ms: i64,
    ) -> Result<Vec<f64>, IndexError> {
        let range = if tenant.is_some() {
            "tenant = ?1 AND start_ms >= ?2 AND start_ms < ?3"
        } else {
            "?1 IS NULL AND start_ms >= ?2 AND start_ms < ?3"
        };
        // Running sessions have `dur_key` -1.
        let mut stmt = self.db.prepare_cached(&format!(
            "SELECT dur_key FROM sessions INDEXED BY sessions_by_duration WHERE {range} \
             AND dur_key >= 0 ORDER BY dur_key"
        ))?;
        let durations = stmt
            .query_map(params![tenant, since_ms, until_ms], |r| r.get::<_, f64>(0))?
            .collect::<Result<Vec<_>, _>>()?;
        Ok(durations)
    }

    /// Bytes the index takes on disk (database and write-ahead log).
    pub fn size_on_disk(&self) -> u64 {
        ["", "-wal"]
            .iter()
            .filter_map(|s| std::fs::metadata(format!("{}{s}", self.path.display())).ok())
            .map(|m| m.len())
            .sum()
    }
}

/// Removes the database at `path` and its write-ahead log and shared memory, where present.
fn remove_database(path: &Path) -> Result<(), IndexError> {
    for suffix in ["", "-wal", "-shm"] {
        let file = PathBuf::from(format!("{}{suffix}", path.display()));
        match std::fs::remove_file(&file) {
            Ok(()) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_error(&file, e)),
        }
    }
    Ok(())
}

/// The bytes of `file` from `offset` to its end.
fn read_from(file: &Path, offset: u64) -> Result<Vec<u8>, IndexError> {
    use std::io::{Read, Seek, SeekFrom};
    let mut f = std::fs::File::open(file).map_err(|e| io_error(file, e))?;
    f.seek(SeekFrom::Start(offset))
        .map_err(|e| io_error(file, e))?;
    let mut bytes = Vec::new();
    f.read_to_end(&mut bytes).map_err(|e| io_error(file, e))?;
    Ok(bytes)
}

/// The `FROM` of a session query. With a helper, recipient or device filter and a tenant,
/// the sessions matching it (by name or id, each through its own index) drive the query as
/// the outer loop (`CROSS JOIN` fixes SQLite's join order); otherwise the planner would walk
/// the whole tenant in sort order hoping to fill a page early. The filter itself is also in
/// [`where_clause`], so this only chooses the order of work, never the rows.
fn driving_from(query: &SessionQuery) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let driver = [
        (&query.helper, "helper", "helper_id"),
        (&query.recipient, "sharer", "sharer_id"),
        (&query.device, "device", "device_id"),
    ]
    .into_iter()
    .find_map(|(value, name, id)| value.as_ref().map(|v| (v, name, id)));
    match (&query.tenant, driver) {
        (Some(tenant), Some((value, name, id))) => (
            format!(
                "(SELECT tenant AS m_tenant, session_id AS m_session FROM sessions \
                 WHERE tenant = ? AND {name} = ? UNION SELECT tenant, session_id FROM sessions \
                 WHERE tenant = ? AND {id} = ?) AS m CROSS JOIN sessions \
                 ON sessions.tenant = m.m_tenant AND sessions.session_id = m.m_session"
            ),
            vec![
                Value::Text(tenant.clone()),
                Value::Text(value.clone()),
                Value::Text(tenant.clone()),
                Value::Text(value.clone()),
            ],
        ),
        _ => ("sessions".to_string(), Vec::new()),
    }
}

fn where_clause(query: &SessionQuery) -> (String, Vec<rusqlite::types::Value>) {
    use rusqlite::types::Value;
    let mut sql = String::from("1");
    let mut args: Vec<Value> = Vec::new();
    if let Some(tenant) = &query.tenant {
        sql.push_str(" AND tenant = ?");
        args.push(Value::Text(tenant.clone()));
    }
    if let Some(since) = query.since_ms {
        sql.push_str(" AND start_ms >= ?");
        args.push(Value::Integer(since));
    }
    if let Some(until) = query.until_ms {
        sql.push_str(" AND start_ms < ?");
        args.push(Value::Integer(until));
    }
    for (value, columns) in [
        (&query.helper, ["helper", "helper_id"]),
        (&query.recipient, ["sharer", "sharer_id"]),
        (&query.device, ["device", "device_id"]),
    ] {
        if let Some(value) = value {
            sql.push_str(&format!(" AND ({} = ? OR {} = ?)", columns[0], columns[1]));
            args.push(Value::Text(value.clone()));
            args.push(Value::Text(value.clone()));
        }
    }
    if let Some(mode) = &query.mode {
        sql.push_str(" AND instr(',' || modes || ',', ',' || ? || ',') > 0");
        args.push(Value::Text(mode.clone()));
    }
    if let Some(reason) = &query.end_reason {
        sql.push_str(" AND end_reason = ?");
        args.push(Value::Text(reason.clone()));
    }
    (sql, args)
}

fn read_session(r: &rusqlite::Row<'_>) -> rusqlite::Result<IndexedSession> {
    let modes: String = r.get(13)?;
    let ended_by: Option<String> = r.get(15)?;
    Ok(IndexedSession {
        row: SessionRow {
            tenant: r.get(0)?,
            session_id: r.get(1)?,
            helper: r.get(2)?,
            sharer: r.get(4)?,
            device: r.get(6)?,
            platform: r.get(8)?,
            start_time: r.get(9)?,
            end_time: r.get(10)?,
            duration_secs: r.get(11)?,
            control_type: r.get(12)?,
            modes: modes
                .split(',')
                .filter(|m| !m.is_empty())
                .map(str::to_owned)
                .collect(),
            end_reason: r.get(14)?,
            ended_by: ended_by.as_deref().and_then(|e| {
                serde_json::from_value::<EndedBy>(serde_json::Value::String(e.into())).ok()
            }),
            reason: r.get(17)?,
            relay_node: r.get(18)?,
            went_direct: r.get(19)?,
        },
        helper_id: r.get(3)?,
        sharer_id: r.get(5)?,
        device_id: r.get(7)?,
        bytes_helper_to_sharer: r.get::<_, Option<i64>>(20)?.map(|b| b.max(0) as u64),
        bytes_sharer_to_helper: r.get::<_, Option<i64>>(21)?.map(|b| b.max(0) as u64),
        administrator: r.get(16)?,
    })
}

/// Unix milliseconds of an RFC 3339 time.
pub fn unix_ms(at: OffsetDateTime) -> i64 {
    (at.unix_timestamp_nanos() / 1_000_000) as i64
}

fn modes_of(tx: &Transaction<'_>, tenant: &str, session: &str) -> rusqlite::Result<Option<String>> {
    tx.prepare_cached("SELECT modes FROM sessions WHERE tenant = ?1 AND session_id = ?2")?
        .query_row(params![tenant, session], |r| r.get(0))
        .optional()
}

/// Adds `new` modes not yet in `modes` (comma-separated), in order.
fn merge_modes(modes: &str, new: &[&str]) -> String {
    let mut list: Vec<&str> = modes.split(',').filter(|m| !m.is_empty()).collect();
    for mode in new {
        if !list.contains(mode) {
            list.push(mode);
        }
    }
    list.join(",")
}

fn apply(tx: &Transaction<'_>, e: &AuditEvent) -> rusqlite::Result<()> {
    let Some(kind) = e.event else {
        return Ok(());
    };
    let (tenant, session) = (e.tenant.as_str(), e.session_id.as_str());
    match kind {
        EventKind::SessionStarted => {
            let start_time = e.start_time.clone().unwrap_or_else(|| e.time.clone());
            let start_ms = parse_time(&start_time).map_or(0, unix_ms);
            let modes = merge_modes("", &e.modes.iter().map(String::as_str).collect::<Vec<_>>());
            // A second start of one session replaces the row, as `report::sessions` does.
            tx.prepare_cached(
                "INSERT OR REPLACE INTO sessions (tenant, session_id, helper, helper_id, sharer, \
                 sharer_id, device, device_id, platform, start_time, start_ms, dur_key, \
                 control_type, modes, reason, relay_node, went_direct) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, -1.0, ?12, ?13, ?14, ?15, 0)",
            )?
            .execute(params![
                tenant,
                session,
                e.helper_name.clone().or(e.helper_id.clone()).unwrap_or_default(),
                e.helper_id,
                e.sharer_name.clone().or(e.sharer_id.clone()).unwrap_or_default(),
                e.sharer_id,
                e.device_name.clone().unwrap_or_default(),
                e.device_id,
                e.platform.clone().unwrap_or_default(),
                start_time,
                start_ms,
                e.control_type.clone().unwrap_or_default(),
                modes,
                e.reason,
                e.relay_node,
            ])?;
            tx.prepare_cached("DELETE FROM changes WHERE tenant = ?1 AND session_id = ?2")?
                .execute(params![tenant, session])?;
        }
        EventKind::ModeChanged => {
            if let (Some(modes), Some(mode)) = (modes_of(tx, tenant, session)?, &e.mode) {
                tx.prepare_cached(
                    "UPDATE sessions SET modes = ?3 WHERE tenant = ?1 AND session_id = ?2",
                )?
                .execute(params![
                    tenant,
                    session,
                    merge_modes(&modes, &[mode])
                ])?;
                add_change(tx, e, "mode", mode)?;
            }
        }
        EventKind::PathChanged => {
            if modes_of(tx, tenant, session)?.is_some()
                && let Some(path) = &e.path
            {
                if path == "direct" {
                    tx.prepare_cached(
                        "UPDATE sessions SET went_direct = 1 WHERE tenant = ?1 AND session_id = ?2",
                    )?
                    .execute(params![tenant, session])?;
                }
                add_change(tx, e, "path", path)?;
            }
        }
        EventKind::SessionEnded => {
            if let Some(modes) = modes_of(tx, tenant, session)? {
                let modes = merge_modes(
                    &modes,
                    &e.modes.iter().map(String::as_str).collect::<Vec<_>>(),
                );
                tx.prepare_cached(
                    "UPDATE sessions SET end_time = ?3, duration_secs = ?4, dur_key = coalesce(?4, -1.0), \
                     end_reason = ?5, ended_by = ?6, administrator = ?7, modes = ?8, bytes_h2s = ?9, \
                     bytes_s2h = ?10 WHERE tenant = ?1 AND session_id = ?2",
                )?
                .execute(params![
                    tenant,
                    session,
                    e.end_time,
                    e.duration_secs,
                    e.end_reason,
                    e.ended_by.map(EndedBy::as_str),
                    e.administrator,
                    modes,
                    e.bytes_helper_to_sharer.map(sql_int),
                    e.bytes_sharer_to_helper.map(sql_int),
                ])?;
            }
        }
        EventKind::SessionRefused => {
            let at = parse_time(&e.time).map_or(0, unix_ms);
            tx.prepare_cached(
                "INSERT INTO refusals (tenant, time_ms, refusal) VALUES (?1, ?2, ?3)",
            )?
            .execute(params![tenant, at, e.refusal.clone().unwrap_or_default()])?;
        }
    }
    Ok(())
}

/// SQLite integers are signed 64-bit; byte counts never come near the limit.
fn sql_int(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

fn add_change(
    tx: &Transaction<'_>,
    e: &AuditEvent,
    kind: &str,
    value: &str,
) -> rusqlite::Result<()> {
    tx.prepare_cached(
        "INSERT INTO changes (tenant, session_id, seq, time, kind, value) VALUES (?1, ?2, \
         (SELECT count(*) FROM changes WHERE tenant = ?1 AND session_id = ?2), ?3, ?4, ?5)",
    )?
    .execute(params![e.tenant, e.session_id, e.time, kind, value])?;
    Ok(())
}

#[cfg(test)]
mod tests;
