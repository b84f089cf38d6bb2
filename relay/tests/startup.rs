//! Start-up and reload as an operator meets them, with the real binary: `check-config`
//! refuses what start-up would refuse, naming the field; start-up exits 64 for a config
//! problem and 69 for a machine that refuses a sound config; `relay_audit_available` is
//! there from the first scrape; SIGHUP applies a rotated admin token and names, in the log
//! and a metric, every changed field it cannot apply.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

mod common;

use common::daemon::start_daemon;

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relay"))
}

/// A config for the dev tenant on free ports, in `dir`: state in `state`, audit in
/// `audit`, the admin token in `admin-token`.
struct Setup {
    dir: tempfile::TempDir,
    config: PathBuf,
    audit: PathBuf,
    token_file: PathBuf,
}

fn setup() -> Setup {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (dev, _signer) = remote_help_relay::dev::config(&state).unwrap();
    let audit = dir.path().join("audit");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "first-admin-token-0123456789\n").unwrap();
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = {:?}\n[audit]\ndir = {:?}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n\
             [[tenants]]\nid = \"dev\"\nissuer = {:?}\njwks_file = {:?}\nenabled = true\n",
            state.display().to_string(),
            audit.display().to_string(),
            token_file.display().to_string(),
            dev.tenants[0].trust.issuer,
            state
                .join(remote_help_relay::dev::JWKS_FILE)
                .display()
                .to_string(),
        ),
    )
    .unwrap();
    Setup {
        dir,
        config,
        audit,
        token_file,
    }
}

/// Replaces `from` with `to` in the config file (which must contain it).
fn edit(config: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(config).unwrap();
    assert!(text.contains(from), "{from:?} not in {text}");
    std::fs::write(config, text.replacen(from, to, 1)).unwrap();
}

/// One HTTP/1.1 request to the admin listener; the status code and body.
fn http(addr: &str, method: &str, path: &str, token: Option<&str>) -> (u16, String) {
    let mut stream = std::net::TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    write!(
        stream,
        "{method} {path} HTTP/1.1\r\nHost: {addr}\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let status = response
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

/// The value of the series `series` (name and labels exactly as exposed), if present.
fn metric(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

fn stop(daemon: common::daemon::Daemon) {
    let mut daemon = daemon;
    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.0.wait().unwrap().code(), Some(0));
}

#[test]
fn check_config_and_start_up_refuse_unusable_tls_files_and_folders_naming_each_field() {
    let Setup { dir, config, .. } = setup();
    let not_pem = dir.path().join("cert.pem");
    std::fs::write(&not_pem, "this is not a certificate\n").unwrap();
    let not_key = dir.path().join("key.pem");
    std::fs::write(&not_key, "nor is this a key\n").unwrap();
    // An audit folder that cannot exist: its parent is a file (like /etc/hostname/audit).
    let file = dir.path().join("hostname");
    std::fs::write(&file, "relay-0\n").unwrap();
    let impossible = file.join("audit");
    edit(
        &config,
        "[server]\n",
        &format!(
            "[server]\ntls_cert = {:?}\ntls_key = {:?}\n",
            not_pem.display().to_string(),
            not_key.display().to_string()
        ),
    );
    let audit_line = std::fs::read_to_string(&config)
        .unwrap()
        .lines()
        .find(|l| l.starts_with("dir = "))
        .unwrap()
        .to_string();
    edit(
        &config,
        &audit_line,
        &format!("dir = {:?}", impossible.display().to_string()),
    );

    let expected = [
        "server.tls_cert: ".to_string()
            + &format!("{} is not a PEM certificate", not_pem.display()),
        "server.tls_key: ".to_string() + &format!("{} is not a PEM private key", not_key.display()),
        format!(
            "audit.dir: cannot create {}: Not a directory",
            impossible.display()
        ),
    ];
    let out = relay().arg("check-config").arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for line in &expected {
        assert!(stderr.contains(line.as_str()), "{line:?} not in:\n{stderr}");
    }
    // The daemon refuses the same config before binding anything, in the same words.
    let out = relay().arg("--config").arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    for line in &expected {
        assert!(stderr.contains(line.as_str()), "{line:?} not in:\n{stderr}");
    }
}

#[test]
fn check_config_leaves_no_folder_or_probe_file_behind() {
    let Setup {
        dir: _dir,
        config,
        audit,
        ..
    } = setup();
    let deep = audit.join("a").join("b");
    edit(
        &config,
        &format!("dir = {:?}", audit.display().to_string()),
        &format!("dir = {:?}", deep.display().to_string()),
    );
    let out = relay().arg("check-config").arg(&config).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!audit.exists(), "check-config created {}", audit.display());
}

#[test]
fn a_machine_that_refuses_a_sound_config_exits_69_naming_the_field() {
    let Setup {
        dir: _dir, config, ..
    } = setup();
    // The admin address is taken by someone else.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    edit(
        &config,
        "[admin]\nlisten = \"127.0.0.1:0\"",
        &format!("[admin]\nlisten = \"{addr}\""),
    );
    let out = relay().arg("check-config").arg(&config).output().unwrap();
    assert!(out.status.success(), "the config itself is sound");
    let out = relay().arg("--config").arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(69), "{stderr}");
    assert!(
        stderr.contains(&format!(
            "relay: admin.listen: cannot listen for admin on {addr}"
        )),
        "{stderr}"
    );
}

#[test]
fn sighup_applies_a_rotated_admin_token_and_names_fields_it_cannot_apply() {
    let Setup {
        dir,
        config,
        audit,
        token_file,
    } = setup();
    let (daemon, _addr, _fingerprint, admin, lines) = start_daemon(&config, &[]);
    let wait_for_log = |needle: &str| loop {
        let line = lines
            .recv_timeout(Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no log line containing {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    };
    // The gauge alerts are written on is there from the first scrape, before any write.
    let (status, text) = http(&admin, "GET", "/metrics", None);
    assert_eq!(status, 200);
    assert_eq!(metric(&text, "relay_audit_available"), Some(1.0), "{text}");

    let (first, second) = (
        "first-admin-token-0123456789",
        "second-admin-token-9876543210",
    );
    assert_eq!(http(&admin, "GET", "/admin/sessions", Some(first)).0, 200);
    assert_eq!(http(&admin, "GET", "/admin/sessions", Some(second)).0, 401);

    // Rotate the token, and move the audit folder, which needs a restart.
    std::fs::write(&token_file, format!("{second}\n")).unwrap();
    let moved = dir.path().join("audit-moved");
    edit(
        &config,
        &format!("dir = {:?}", audit.display().to_string()),
        &format!("dir = {:?}", moved.display().to_string()),
    );
    daemon.signal(libc::SIGHUP);
    let reloaded = wait_for_log("configuration reloaded");
    assert!(
        reloaded.contains("NOT applied") && reloaded.contains("audit.dir"),
        "the log must name the field it did not apply: {reloaded}"
    );
    assert!(
        !reloaded.contains("admin.token_file"),
        "the token is applied: {reloaded}"
    );

    assert_eq!(http(&admin, "GET", "/admin/sessions", Some(second)).0, 200);
    assert_eq!(
        http(&admin, "GET", "/admin/sessions", Some(first)).0,
        401,
        "the old token must stop working"
    );
    let (_, text) = http(&admin, "GET", "/metrics", None);
    assert_eq!(
        metric(
            &text,
            "relay_config_reload_unapplied_total{field=\"audit.dir\"}"
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        metric(&text, "relay_config_reloads_total{result=\"ok\"}"),
        Some(1.0)
    );
    assert!(!moved.exists(), "the audit folder stays where it was");
    stop(daemon);
}

/// A read-only tmpfs mounted for the test's life (unmounted when dropped).
struct ReadOnlyMount(PathBuf);

impl ReadOnlyMount {
    /// Mounts an empty read-only tmpfs on `at` for `test`; `None` after one `SKIPPED` line
    /// when this is not root (a failure under CI: `common::skip`).
    fn new(test: &str, at: &Path) -> Option<ReadOnlyMount> {
        if !common::skip::require_root(test, "mounting a read-only tmpfs")
            || !common::skip::require_tools(test, &[("mount", "mount")])
        {
            return None;
        }
        std::fs::create_dir_all(at).unwrap();
        let status = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "ro,size=64k", "tmpfs"])
            .arg(at)
            .status()
            .unwrap();
        assert!(
            status.success(),
            "root could not mount a tmpfs on {}",
            at.display()
        );
        Some(ReadOnlyMount(at.to_path_buf()))
    }
}

impl Drop for ReadOnlyMount {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}

#[test]
fn a_read_only_audit_folder_is_refused_by_check_config_and_at_start() {
    let Setup {
        dir, config, audit, ..
    } = setup();
    let read_only = dir.path().join("ro");
    let Some(_mount) = ReadOnlyMount::new(
        "startup::a_read_only_audit_folder_is_refused_by_check_config_and_at_start",
        &read_only,
    ) else {
        return;
    };
    edit(
        &config,
        &format!("dir = {:?}", audit.display().to_string()),
        &format!("dir = {:?}", read_only.display().to_string()),
    );
    let expected = format!(
        "audit.dir: cannot create files in {}: Read-only file system",
        read_only.display()
    );
    let out = relay().arg("check-config").arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains(&expected), "{stderr}");
    let out = relay().arg("--config").arg(&config).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(64), "{stderr}");
    assert!(stderr.contains(&expected), "{stderr}");
}
