//! The audit log under real disk faults: a small tmpfs, mounted by the test (as root),
//! filled up while sessions run, and a restart on a full disk after a crash left a session
//! open and a torn last line. After each: every session that started has exactly one end
//! with its true reason, nothing an honest run wrote is lost, and the files verify with
//! the relay's key.
//!
//! Without root (or without `mount`), each test prints one `SKIPPED` line, counted by
//! `./test`; with `CI` set it fails instead, so CI cannot pass without running them.

mod common;

use std::collections::HashMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use common::{TestRelay, http, skip, within};
use remote_help_proto::ErrorCode;
use remote_help_relay::audit::{
    AuditEvent, AuditKey, EventKind, KEY_FILE, audit_files, chain, read_events,
};
use remote_help_relay::core::{Channel, Mode};

/// The relays here watch process-wide metrics (`relay_audit_available`): one at a time.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A tmpfs of a few MiB mounted on a temporary folder for the test's lifetime.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    /// Mounts one for `test`, or says why not: `None` after one `SKIPPED` line (counted by
    /// `./test`), a failure when `CI` is set (`common::skip`).
    fn mount(test: &str, bytes: u64) -> Option<Tmpfs> {
        if !skip::require_root(test, "mounting a tmpfs to fill it up")
            || !skip::require_tools(test, &[("mount", "mount")])
        {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={bytes}"), "tmpfs"])
            .arg(dir.path())
            .output()
            .expect("mount runs");
        if out.status.success() {
            return Some(Tmpfs { dir });
        }
        let why = String::from_utf8_lossy(&out.stderr)
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ");
        // Root that may not mount: a container without CAP_SYS_ADMIN.
        skip::skip(
            test,
            &format!("a tmpfs cannot be mounted here ({why})"),
            "run on a host or a privileged container",
        );
        None
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Fills the file system to the last byte; returns the file that holds it.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut file = std::fs::File::create(&path).unwrap();
        for size in [64 << 10, 4096, 1] {
            let chunk = vec![0x5a_u8; size];
            while file.write_all(&chunk).is_ok() {}
        }
        let _ = file.sync_all();
        path
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        // Lazy: a relay thread may still hold a file open for a moment.
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

fn scrape(text: &str) -> HashMap<String, f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

async fn metric(relay: &TestRelay, series: &str) -> Option<f64> {
    let admin = relay.handle.admin_addr().unwrap();
    let (_, body) = http(admin, "GET", "/metrics", None).await;
    scrape(&body).get(series).copied()
}

async fn readyz(relay: &TestRelay) -> (u16, String) {
    let (status, body) = http(relay.handle.admin_addr().unwrap(), "GET", "/readyz", None).await;
    (status, body.trim().to_string())
}

fn events(dir: &Path) -> Vec<AuditEvent> {
    read_events(&audit_files(dir))
}

/// The newest checkpoint in `dir`.
fn last_checkpoint(dir: &Path) -> chain::Checkpoint {
    let path = chain::checkpoint_files(dir)
        .pop()
        .expect("a checkpoint file");
    let text = std::fs::read_to_string(path).unwrap();
    let line = text.lines().last().expect("a checkpoint");
    serde_json::from_str(line).unwrap()
}

/// Each session in `expected` has exactly one start and one end with the given reason;
/// the sessions in `never` appear nowhere.
fn assert_ends(dir: &Path, expected: &[(&str, &str)], never: &[&str]) {
    let events = events(dir);
    for (session, reason) in expected {
        let of = |kind| {
            events
                .iter()
                .filter(|e| e.session_id == *session && e.event == Some(kind))
                .collect::<Vec<_>>()
        };
        assert_eq!(of(EventKind::SessionStarted).len(), 1, "start of {session}");
        let ends: Vec<_> = of(EventKind::SessionEnded)
            .iter()
            .map(|e| e.end_reason.clone().unwrap_or_default())
            .collect();
        assert_eq!(ends, vec![reason.to_string()], "end of {session}");
    }
    for session in never {
        assert!(
            !events.iter().any(|e| e.session_id == *session),
            "{session} never started, yet it is in the log"
        );
    }
}

/// Every audit file verifies with the key, every line MACed, no torn tail, and the
/// checkpoints agree with the files.
fn assert_verifies(dir: &Path, key: &Path) {
    let key = AuditKey::load(key).unwrap();
    let mut verified = std::collections::BTreeMap::new();
    for path in audit_files(dir) {
        let found = chain::verify(&path, Some(&key)).unwrap();
        assert_eq!(found.torn_tail, 0, "{}", path.display());
        assert_eq!(found.macs_checked, found.events, "{}", path.display());
        verified.insert(
            path.file_name().unwrap().to_string_lossy().into_owned(),
            found,
        );
    }
    chain::verify_checkpoints(dir, Some(&key), &verified).unwrap();
}

/// A relay with its audit folder on `disk` and few enough connections that the reserve
/// (4 KiB per possible session) fits a small tmpfs.
async fn relay_on(disk: &Tmpfs, state: &Path) -> TestRelay {
    let audit = disk.path().join("audit");
    let state = state.to_path_buf();
    TestRelay::builder()
        .plaintext_clients()
        .config(move |c| {
            c.audit.dir = audit;
            c.state_dir = state;
            c.limits.max_connections = 64;
        })
        .start()
        .await
}

#[tokio::test]
async fn a_full_disk_refuses_new_sessions_keeps_every_end_and_readiness_stays_down_until_space_returns()
 {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(disk) = Tmpfs::mount(
        "audit_faults::a_full_disk_refuses_new_sessions_keeps_every_end_and_readiness_stays_down_until_space_returns",
        2 << 20,
    ) else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let audit = disk.path().join("audit");
    let relay = relay_on(&disk, state.path()).await;
    assert_eq!(
        metric(&relay, "relay_audit_available").await,
        Some(1.0),
        "the gauge is there from the first scrape"
    );
    let (mut helper, mut sharer) = relay.paired("contoso", Mode::FullControl).await;
    // A second session waits for consent when the disk fills.
    let mut h2 = relay.helper("contoso").await;
    let mut s2 = relay.sharer("contoso").await;
    let created = within(h2.create_session(Mode::ViewOnly)).await.unwrap();
    within(s2.join(&created.code)).await.unwrap();
    within(h2.wait_for_sharer()).await.unwrap();

    let filler = disk.fill();
    // With nothing being written, the relay notices by itself (its probe is a real write
    // and fsync past the reserve) and stops being ready. (The last page of the open audit
    // file may still have room for a line or two: the probe, not a lucky append, decides.)
    within(async {
        while readyz(&relay).await.0 != 503 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // Its start cannot be written: the very next thing each party hears is the refusal,
    // never SessionStarted.
    let err = within(s2.accept()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AuditUnavailable));
    let err = within(h2.wait_for_start()).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AuditUnavailable));
    // From then on, new sessions are refused up front.
    let err = within(h2.create_session(Mode::ViewOnly)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AuditUnavailable));
    // The running session carries on.
    let mut input = within(helper.open_unsealed_channel(Channel::Input))
        .await
        .unwrap();
    within(input.send(Bytes::from_static(b"still working")))
        .await
        .unwrap();
    let (_, mut input_in) = within(sharer.accept_unsealed_channel()).await.unwrap();
    assert_eq!(
        &within(input_in.recv()).await.unwrap().unwrap()[..],
        b"still working"
    );

    // Readiness stays down while the disk stays full: across several failed probes
    // (real writes past the reserve), /readyz answers 503 and the gauge reads 0.
    let failed = r#"relay_audit_probes_total{result="failed"}"#;
    let before = metric(&relay, failed).await.unwrap_or(0.0);
    within(async {
        loop {
            assert_eq!(readyz(&relay).await, (503, "audit log unavailable".into()));
            assert_eq!(metric(&relay, "relay_audit_available").await, Some(0.0));
            if metric(&relay, failed).await.unwrap_or(0.0) >= before + 3.0 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await;

    // The running session ends while the disk is still full: its end is written at once,
    // into the reserve, before the parties are told.
    within(helper.end_session()).await.unwrap();
    let told = within(sharer.wait_for_end()).await;
    let log = events(&audit);
    let first = &log
        .iter()
        .find(|e| e.event == Some(EventKind::SessionStarted))
        .unwrap()
        .session_id;
    let end = log
        .iter()
        .find(|e| e.event == Some(EventKind::SessionEnded) && &e.session_id == first);
    assert_eq!(
        end.and_then(|e| e.end_reason.as_deref()),
        Some(told.as_str_name()),
        "the end is on disk, with the reason the sharer was told, while the disk is full"
    );
    assert_eq!(
        readyz(&relay).await.0,
        503,
        "ends do not make the log ready"
    );

    // Space returns: the relay notices by itself and takes sessions again.
    std::fs::remove_file(filler).unwrap();
    within(relay.handle.audit_writable()).await;
    assert_eq!(readyz(&relay).await.0, 200);
    let (mut h3, mut s3) = relay.paired("contoso", Mode::ViewOnly).await;
    within(h3.end_session()).await.unwrap();
    let told3 = within(s3.wait_for_end()).await;

    let started: Vec<String> = events(&audit)
        .iter()
        .filter(|e| e.event == Some(EventKind::SessionStarted))
        .map(|e| e.session_id.clone())
        .collect();
    assert_eq!(started.len(), 2, "{started:?}");
    assert_ends(
        &audit,
        &[
            (&started[0], told.as_str_name()),
            (&started[1], told3.as_str_name()),
        ],
        &[&created.session_id],
    );
    relay.stop().await;
    assert_verifies(&audit, &state.path().join(KEY_FILE));
}

#[tokio::test]
async fn a_restart_on_a_full_disk_after_a_crash_comes_up_not_ready_and_closes_the_session_exactly_once()
 {
    let _one = ONE_AT_A_TIME.lock().await;
    let Some(disk) = Tmpfs::mount(
        "audit_faults::a_restart_on_a_full_disk_after_a_crash_comes_up_not_ready_and_closes_the_session_exactly_once",
        2 << 20,
    ) else {
        return;
    };
    let state = tempfile::tempdir().unwrap();
    let audit = disk.path().join("audit");

    // A run that is killed with a session open, in the middle of writing a line: the
    // files as SIGKILL leaves them (the start on disk, no end, a torn last line).
    let relay = relay_on(&disk, state.path()).await;
    let (_helper, _sharer) = relay.paired("contoso", Mode::FullControl).await;
    let file = audit_files(&audit).pop().unwrap();
    let at_kill = std::fs::read(&file).unwrap();
    relay.stop().await;
    // A clean stop returns once its writer has written the last checkpoint and ended: the
    // checkpoint covers every line, and nothing of that run writes here any more (before,
    // a late checkpoint of this run could land after the rewrite below and disagree).
    assert_eq!(last_checkpoint(&audit).lines, events(&audit).len() as u64);
    // A killed relay writes no final checkpoint (and no end).
    for path in chain::checkpoint_files(&audit) {
        std::fs::remove_file(path).unwrap();
    }
    let session = events(&audit)[0].session_id.clone();
    let torn = br#"{"schema":1,"event":"session_ended","tenant":"contoso","session_id":"#;
    std::fs::write(&file, [&at_kill[..], &torn[..]].concat()).unwrap();
    let filler = disk.fill();

    // The restart on the full disk comes up, not ready, and refuses sessions.
    let relay = relay_on(&disk, state.path()).await;
    assert_eq!(readyz(&relay).await, (503, "audit log unavailable".into()));
    let mut helper = relay.helper("contoso").await;
    let err = within(helper.create_session(Mode::ViewOnly))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::AuditUnavailable));
    drop(helper);

    // Space returns: ready, and the crashed session is closed once, as RELAY_RESTARTED.
    std::fs::remove_file(filler).unwrap();
    within(relay.handle.audit_writable()).await;
    assert_eq!(readyz(&relay).await.0, 200);
    assert_ends(&audit, &[(&session, "RELAY_RESTARTED")], &[]);
    let now = std::fs::read(&file).unwrap();
    assert!(
        now.starts_with(&at_kill),
        "what the killed run wrote is kept"
    );
    relay.stop().await;

    // Later restarts find nothing more to close.
    let relay = relay_on(&disk, state.path()).await;
    assert_eq!(readyz(&relay).await.0, 200);
    relay.stop().await;
    assert_ends(&audit, &[(&session, "RELAY_RESTARTED")], &[]);
    assert_verifies(&audit, &state.path().join(KEY_FILE));
}
