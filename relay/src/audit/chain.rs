//! Tamper evidence: the keyed line MAC, checkpoints, and verification.
//!
//! Every line carries `prev_hash` (SHA-256 of the previous line, checkable by anyone) and,
//! when the relay has a key, `mac`: HMAC-SHA256 under the relay's audit key of the line as
//! it would read without its `mac` field (the same bytes up to `,"mac":"…"` and the closing
//! brace). The MAC covers `prev_hash`, so a line edited and every later `prev_hash`
//! recomputed fails without the key, and so does an edit of the last line.
//!
//! A chain cannot show that lines are missing at its end. For that the writer writes
//! checkpoints (`checkpoints-YYYY-MM-DD.jsonl` in the audit folder, themselves hash-chained
//! and MACed): how many lines a file had and the hash of its last line, and logs each one
//! so that the log shipped off the machine holds them too.

use std::collections::BTreeMap;
use std::fs::File;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::{AuditError, AuditEvent, hex, io_error, line_hash, zero_hash};

/// The bytes that end a sealed line before the MAC's hex digits.
const MAC_FIELD: &[u8] = b",\"mac\":\"";

/// The relay's audit key: HMAC-SHA256 over every line and checkpoint.
#[derive(Clone)]
pub struct AuditKey(ring::hmac::Key);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(..)")
    }
}

impl AuditKey {
    /// Reads the key file (64 hex characters: 32 random bytes).
    pub fn load(path: &Path) -> Result<AuditKey, AuditError> {
        let mut text = String::new();
        File::open(path)
            .and_then(|mut f| f.read_to_string(&mut text))
            .map_err(|e| io_error(path, e))?;
        let text = text.trim();
        let bytes: Option<Vec<u8>> = (text.len() == 64)
            .then(|| {
                (0..32)
                    .map(|i| u8::from_str_radix(&text[2 * i..2 * i + 2], 16).ok())
                    .collect()
            })
            .flatten();
        let bytes = bytes.ok_or_else(|| {
            io_error(
                path,
                "not an audit key (expected 64 hex characters); restore it from backup",
            )
        })?;
        Ok(AuditKey(ring::hmac::Key::new(
            ring::hmac::HMAC_SHA256,
            &bytes,
        )))
    }

    /// Reads the key file, or makes a new random key there (mode 0600) if there is none.
    pub fn load_or_create(path: &Path) -> Result<AuditKey, AuditError> {
        if path.exists() {
            return AuditKey::load(path);
        }
        if let Some(parent) = path.parent() {
            std::fs::create_dir_all(parent).map_err(|e| io_error(parent, e))?;
        }
        let key: [u8; 32] = rand::random();
        let temporary = path.with_extension(format!("new-{}", hex(&rand::random::<[u8; 8]>())));
        let mut options = std::fs::OpenOptions::new();
        options.write(true).create_new(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let written = options.open(&temporary).and_then(|mut f| {
            f.write_all(format!("{}\n", hex(&key)).as_bytes())?;
            f.sync_all()
        });
        // A hard link appears whole or not at all and never replaces a key another process
        // made first: every process that starts here ends up with the same key.
        let linked = written.and_then(|()| match std::fs::hard_link(&temporary, path) {
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => Ok(()),
            other => other,
        });
        let _ = std::fs::remove_file(&temporary);
        linked.map_err(|e| io_error(path, e))?;
        if let Some(parent) = path.parent()
            && let Ok(dir) = File::open(parent)
        {
            let _ = dir.sync_all();
        }
        tracing::info!(path = %path.display(), "created the audit key; back it up off the machine");
        AuditKey::load(path)
    }

    fn mac(&self, bytes: &[u8]) -> String {
        hex(ring::hmac::sign(&self.0, bytes).as_ref())
    }
}

/// Adds the `mac` field to a serialized JSON object (which must not have one).
pub(crate) fn seal(mut line: Vec<u8>, key: Option<&AuditKey>) -> Vec<u8> {
    let Some(key) = key else { return line };
    let mac = key.mac(&line);
    // serde_json writes an object as `{…}`: the field goes before the closing brace.
    line.pop();
    line.extend_from_slice(MAC_FIELD);
    line.extend_from_slice(mac.as_bytes());
    line.extend_from_slice(b"\"}");
    line
}

/// The line without its `mac` field, and the MAC; `None` when the line has none.
fn unseal(line: &[u8]) -> Option<(Vec<u8>, &[u8])> {
    let body = line.strip_suffix(b"\"}")?;
    let (head, mac) = body.split_at(body.len().checked_sub(64)?);
    let head = head.strip_suffix(MAC_FIELD)?;
    let mut unsealed = head.to_vec();
    unsealed.push(b'}');
    Some((unsealed, mac))
}

/// Checks a line's MAC: `Ok(true)` when it has a good one, `Ok(false)` when it has none.
fn check_mac(line: &[u8], key: &AuditKey) -> Result<bool, String> {
    match unseal(line) {
        None => Ok(false),
        Some((unsealed, mac)) => {
            if key.mac(&unsealed).as_bytes() == mac {
                Ok(true)
            } else {
                Err(
                    "mac does not match: the line was edited (or the key is not this relay's)"
                        .into(),
                )
            }
        }
    }
}

/// One checkpoint: what a file held when it was written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
pub struct Checkpoint {
    /// When it was written, RFC 3339 UTC.
    pub time: String,
    /// The audit file's name (in the same folder).
    pub file: String,
    /// Complete lines in the file.
    pub lines: u64,
    /// The file's size in bytes.
    pub bytes: u64,
    /// SHA-256 (hex) of the file's last line (64 zeros for an empty file).
    pub tail: String,
    /// SHA-256 (hex) of the previous checkpoint line of this checkpoint file.
    pub prev_hash: String,
}

/// The checkpoint file for an audit file's day.
pub(crate) fn checkpoint_path(dir: &Path, day: time::Date) -> PathBuf {
    dir.join(format!("checkpoints-{day}.jsonl"))
}

/// The checkpoint files in `dir`, oldest first.
pub fn checkpoint_files(dir: &Path) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("checkpoints-") && n.ends_with(".jsonl"))
        })
        .collect();
    files.sort();
    files
}

/// Serializes a checkpoint as a sealed line (no newline).
pub(crate) fn checkpoint_line(checkpoint: &Checkpoint, key: Option<&AuditKey>) -> Vec<u8> {
    // A struct of strings and integers always serializes.
    seal(serde_json::to_vec(checkpoint).unwrap_or_default(), key)
}

/// What [`verify`] found in a file whose chain holds.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Verified {
    /// Complete events.
    pub events: usize,
    /// Lines with a good MAC (0 when no key was given or the file is unkeyed).
    pub macs_checked: usize,
    /// Lines that carry a MAC (checked only with the key).
    pub keyed: usize,
    /// Bytes after the last newline: a write the relay never finished (a crash or a full
    /// disk), which it cuts off before it next writes. Never a complete line.
    pub torn_tail: u64,
    /// SHA-256 of each complete line, in order (for checkpoints).
    pub hashes: Vec<String>,
}

/// The first place a file's hash chain breaks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokenLink {
    /// The file.
    pub file: PathBuf,
    /// 1-based line number (0: the file as a whole).
    pub line: usize,
    /// What is wrong.
    pub reason: String,
}

/// Checks one file: every line parses, its `prev_hash` links to the line before, and (with
/// `key`) its MAC is right; once a line has a MAC every later one must. An unfinished last
/// line (no newline) is reported as [`Verified::torn_tail`], not as a break.
pub fn verify(path: &Path, key: Option<&AuditKey>) -> Result<Verified, BrokenLink> {
    let broken = |line: usize, reason: String| BrokenLink {
        file: path.to_path_buf(),
        line,
        reason,
    };
    let mut bytes = Vec::new();
    File::open(path)
        .and_then(|mut f| f.read_to_end(&mut bytes))
        .map_err(|e| broken(0, e.to_string()))?;
    let complete = bytes.iter().rposition(|b| *b == b'\n').map_or(0, |i| i + 1);
    let mut found = Verified {
        torn_tail: (bytes.len() - complete) as u64,
        ..Verified::default()
    };
    let mut expected = zero_hash();
    for (n, line) in BufReader::new(&bytes[..complete]).split(b'\n').enumerate() {
        let line = line.map_err(|e| broken(n + 1, e.to_string()))?;
        if line.is_empty() {
            continue;
        }
        let event: AuditEvent = serde_json::from_slice(&line).map_err(|e| {
            broken(
                n + 1,
                format!("not an audit event (a complete line the relay did not write): {e}"),
            )
        })?;
        if event.prev_hash != expected {
            return Err(broken(
                n + 1,
                format!(
                    "prev_hash is {} but the previous line hashes to {expected}",
                    event.prev_hash
                ),
            ));
        }
        let sealed = unseal(&line).is_some();
        if sealed {
            found.keyed += 1;
        } else if found.keyed > 0 {
            return Err(broken(
                n + 1,
                "no mac after keyed lines: the line was replaced".into(),
            ));
        }
        if let Some(key) = key
            && check_mac(&line, key).map_err(|reason| broken(n + 1, reason))?
        {
            found.macs_checked += 1;
        }
        expected = line_hash(&line);
        found.hashes.push(expected.clone());
        found.events += 1;
    }
    Ok(found)
}

/// Checks the checkpoint files of `dir` (their own chain and MACs with `key`) against the
/// audit files `verified` there (by file name): every checkpoint for a file must find at
/// least as many lines, the last of them hashing to its `tail`. Checkpoints naming a file
/// of `days` that is not in `dir` report it deleted. Returns the checkpoints checked.
pub fn verify_checkpoints(
    dir: &Path,
    key: Option<&AuditKey>,
    verified: &BTreeMap<String, Verified>,
) -> Result<usize, BrokenLink> {
    let mut checked = 0;
    for path in checkpoint_files(dir) {
        let broken = |line: usize, reason: String| BrokenLink {
            file: path.clone(),
            line,
            reason,
        };
        let file = File::open(&path).map_err(|e| broken(0, e.to_string()))?;
        let mut expected = zero_hash();
        let mut keyed = false;
        for (n, line) in BufReader::new(file).split(b'\n').enumerate() {
            let line = line.map_err(|e| broken(n + 1, e.to_string()))?;
            if line.is_empty() {
                continue;
            }
            let Ok(checkpoint) = serde_json::from_slice::<Checkpoint>(&line) else {
                // Only the last line can be unfinished (a crash while writing it).
                continue;
            };
            if checkpoint.prev_hash != expected {
                return Err(broken(n + 1, "checkpoint chain broken".into()));
            }
            expected = line_hash(&line);
            keyed |= unseal(&line).is_some();
            if keyed && unseal(&line).is_none() {
                return Err(broken(n + 1, "checkpoint without mac".into()));
            }
            if let Some(key) = key {
                check_mac(&line, key).map_err(|reason| broken(n + 1, reason))?;
            }
            let Some(found) = verified.get(&checkpoint.file) else {
                if !dir.join(&checkpoint.file).exists() {
                    return Err(broken(
                        n + 1,
                        format!(
                            "{} is missing: a checkpoint at {} recorded {} lines in it",
                            checkpoint.file, checkpoint.time, checkpoint.lines
                        ),
                    ));
                }
                continue;
            };
            let tail = match checkpoint.lines {
                0 => Some(zero_hash()),
                lines => found.hashes.get(lines as usize - 1).cloned(),
            };
            if tail.as_deref() != Some(checkpoint.tail.as_str()) {
                return Err(BrokenLink {
                    file: dir.join(&checkpoint.file),
                    line: found.events.min(checkpoint.lines as usize),
                    reason: if (found.events as u64) < checkpoint.lines {
                        format!(
                            "truncated: the checkpoint at {} recorded {} lines, the file has {}",
                            checkpoint.time, checkpoint.lines, found.events
                        )
                    } else {
                        format!(
                            "line {} differs from the checkpoint at {}",
                            checkpoint.lines, checkpoint.time
                        )
                    },
                });
            }
            checked += 1;
        }
    }
    Ok(checked)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn processes_starting_together_end_up_with_one_key() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("state").join("audit-hmac.key");
        let macs: Vec<String> = std::thread::scope(|scope| {
            let workers: Vec<_> = (0..8)
                .map(|_| scope.spawn(|| AuditKey::load_or_create(&path).unwrap().mac(b"line")))
                .collect();
            workers.into_iter().map(|w| w.join().unwrap()).collect()
        });
        assert!(macs.iter().all(|m| *m == macs[0]), "{macs:?}");
        assert_eq!(AuditKey::load(&path).unwrap().mac(b"line"), macs[0]);
        let leftovers = std::fs::read_dir(path.parent().unwrap()).unwrap().count();
        assert_eq!(leftovers, 1, "no temporary files left");
    }

    #[test]
    fn a_sealed_line_unseals_to_what_was_signed() {
        let key = AuditKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"k"));
        let line = br#"{"a":1,"prev_hash":"00"}"#.to_vec();
        let sealed = seal(line.clone(), Some(&key));
        assert!(sealed.ends_with(b"\"}"));
        let (unsealed, _) = unseal(&sealed).unwrap();
        assert_eq!(unsealed, line);
        assert_eq!(check_mac(&sealed, &key), Ok(true));
        let other = AuditKey(ring::hmac::Key::new(ring::hmac::HMAC_SHA256, b"other"));
        assert!(check_mac(&sealed, &other).is_err());
        assert_eq!(check_mac(&line, &key), Ok(false));
    }
}
