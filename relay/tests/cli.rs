//! The binaries as an operator runs them: `relay check-config`, the daemon on the embedded
//! dev config, `relay dev-token`, `rhelp probe`, and a clean exit on SIGTERM.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

mod common;

use common::daemon::{send_signal, start_daemon};

fn relay() -> Command {
    Command::new(env!("CARGO_BIN_EXE_relay"))
}

fn rhelp() -> Command {
    Command::new(env!("CARGO_BIN_EXE_rhelp"))
}

#[test]
fn the_example_config_passes_check_config() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.example.toml");
    let out = relay().arg("check-config").arg(&example).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("OK"));
}

#[test]
fn a_bad_config_exits_64_naming_every_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    std::fs::write(
        &path,
        "[server]\nlisten = \"no\"\ncode_ttl_secs = 1\n[[tenants]]\nid = \"x\"\njwks_file = \"missing.json\"\ncloud = \"gcc-high\"\n",
    )
    .unwrap();
    let out = relay().arg("check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for field in [
        "server.listen",
        "server.code_ttl_secs",
        "tenants[0].issuer",
        "tenants[0].jwks_file",
    ] {
        assert!(stderr.contains(field), "{field} not reported in:\n{stderr}");
    }
    // The daemon refuses the same file before binding anything, with the same exit code.
    let out = relay().arg("--config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
}

#[test]
fn the_dev_daemon_serves_a_probe_and_exits_cleanly_on_sigterm() {
    let DaemonSetup {
        dir,
        state,
        config: config_path,
        ..
    } = daemon_setup();
    // Stand in for systemd: a datagram socket the daemon reports its state to.
    let notify_path = dir.path().join("notify.sock");
    let notify = std::os::unix::net::UnixDatagram::bind(&notify_path).unwrap();
    notify
        .set_read_timeout(Some(std::time::Duration::from_secs(20)))
        .unwrap();
    let next_notice = || {
        let mut buf = [0u8; 512];
        let n = notify.recv(&mut buf).expect("no systemd notification");
        String::from_utf8_lossy(&buf[..n]).to_string()
    };
    let (mut daemon, addr, fingerprint, _admin, lines) =
        start_daemon(&config_path, &[("NOTIFY_SOCKET", notify_path.as_path())]);
    let wait_for_log = |needle: &str| loop {
        let line = lines
            .recv_timeout(std::time::Duration::from_secs(20))
            .unwrap_or_else(|_| panic!("no log line containing {needle:?}"));
        if line.contains(needle) {
            return line;
        }
    };

    let helper_token = dir.path().join("helper.jwt");
    let sharer_token = dir.path().join("sharer.jwt");
    for (role, path) in [("helper", &helper_token), ("sharer", &sharer_token)] {
        let status = relay()
            .args(["dev-token", "--role", role, "--state-dir"])
            .arg(&state)
            .arg("--out")
            .arg(path)
            .status()
            .unwrap();
        assert!(status.success());
    }
    // `rhelp probe --json` against the daemon with `args`, the pin and the two tokens: its
    // exit status and its JSON report.
    let probe = |pin: &str, helper_token: &Path, extra: &[&str]| {
        let out = rhelp()
            .args(["probe", "--relay", &addr, "--pin", pin, "--json"])
            .args(extra)
            .arg("--helper-token")
            .arg(helper_token)
            .arg("--sharer-token")
            .arg(&sharer_token)
            .output()
            .unwrap();
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        (out.status.success(), report)
    };
    let (_, report) = probe(
        &fingerprint,
        &helper_token,
        &["--screen-mb", "4", "--round-trips", "20"],
    );
    assert_eq!(report["ok"], true, "{report}");
    assert!(report["setup_ms"].as_f64().unwrap() > 0.0);
    assert_eq!(report["screen_bytes"], 4 * 1024 * 1024);
    // Protected by default: on the packet path (the default between native clients) by the
    // peer connection's TLS.
    assert_eq!(
        report["e2e"], "peer-tls13",
        "protected by default: {report}"
    );
    // The documented switch: the stream path, sealed by the SDK's default suite.
    let (_, report) = probe(
        &fingerprint,
        &helper_token,
        &["--screen-mb", "1", "--round-trips", "5", "--stream-path"],
    );
    assert_eq!(report["ok"], true, "{report}");
    assert_eq!(report["e2e"], "chacha20", "stream path: {report}");

    // Without protection, the dev tenant (which requires it, as every tenant does by
    // default) refuses the pair before any consent.
    let (ok, report) = probe(&fingerprint, &helper_token, &["--no-e2e"]);
    assert!(!ok);
    assert_eq!(report["error_code"], "E2E_REQUIRED", "{report}");

    // A probe with a wrong pin fails with a non-zero exit and ok=false.
    let (ok, report) = probe(&"0".repeat(64), &helper_token, &[]);
    assert!(!ok);
    assert_eq!(report["ok"], false);

    // An expired token: the error code comes through in the JSON.
    let expired = dir.path().join("expired.jwt");
    let signer = remote_help_relay::dev::ensure_signer(&state).unwrap();
    let (sub, mut claims) =
        remote_help_relay::dev::persona_claims(remote_help_relay::dev::Persona::Helper, None);
    claims.insert("sub".into(), sub.into());
    claims.insert("iss".into(), remote_help_relay::dev::DEV_ISSUER.into());
    claims.insert("aud".into(), "remote-help-relay".into());
    claims.insert("tid".into(), "dev".into());
    claims.insert("exp".into(), 1_000_000.into());
    std::fs::write(
        &expired,
        signer.sign(&serde_json::Value::Object(claims)).unwrap(),
    )
    .unwrap();
    let (ok, report) = probe(&fingerprint, &expired, &[]);
    assert!(!ok);
    assert_eq!(report["error_code"], "TOKEN_EXPIRED", "{report}");

    // Two people, two processes: `rhelp helper` prints a code, `rhelp share` joins with it;
    // both ask for a direct path, which loopback allows.
    let mut helper = rhelp()
        .args([
            "helper",
            "--relay",
            &addr,
            "--pin",
            &fingerprint,
            "--seconds",
            "1",
            "--mode",
            "full-control",
            "--direct",
        ])
        .arg("--token")
        .arg(&helper_token)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut helper_out = BufReader::new(helper.stdout.take().unwrap()).lines();
    let code = loop {
        let line = helper_out
            .next()
            .expect("helper exited before printing a code")
            .unwrap();
        if let Some(rest) = line.strip_prefix("Session code: ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let share = rhelp()
        .args([
            "share",
            "--relay",
            &addr,
            "--pin",
            &fingerprint,
            "--yes",
            "--direct",
            "--code",
            &code,
        ])
        .arg("--token")
        .arg(&sharer_token)
        .output()
        .unwrap();
    let share_stdout = String::from_utf8_lossy(&share.stdout);
    assert!(
        share.status.success(),
        "{share_stdout}{}",
        String::from_utf8_lossy(&share.stderr)
    );
    assert!(
        share_stdout.contains("asks to connect in full_control mode"),
        "{share_stdout}"
    );
    assert!(
        share_stdout.contains("Session ended: PEER_ENDED"),
        "{share_stdout}"
    );
    assert!(share_stdout.contains("Direct path to "), "{share_stdout}");
    let helper_rest: Vec<String> = helper_out.map(|l| l.unwrap()).collect();
    assert!(helper.wait().unwrap().success());
    // Both people are shown the same verification code at once, and told what a
    // different one means.
    let shown = |lines: Vec<&str>| -> String {
        let code = lines
            .iter()
            .find_map(|l| l.strip_prefix("Verification code: "))
            .expect("a verification code is shown")
            .to_string();
        assert!(
            lines
                .iter()
                .any(|l| l.contains("If the two codes differ, end the session")),
            "{lines:?}"
        );
        code
    };
    let helper_code = shown(helper_rest.iter().map(String::as_str).collect());
    let share_code = shown(share_stdout.lines().collect());
    assert_eq!(helper_code, share_code);
    assert_eq!(helper_code.len(), 7, "{helper_code}");
    assert!(
        helper_rest
            .iter()
            .any(|l| l.contains("Session started in full_control mode")),
        "{helper_rest:?}"
    );
    assert!(
        helper_rest.iter().any(|l| l.starts_with("Received ")),
        "{helper_rest:?}"
    );
    assert!(
        helper_rest.iter().any(|l| l.starts_with("Direct path to ")),
        "{helper_rest:?}"
    );

    // SIGHUP with a broken file keeps the running policy...
    let good_config = std::fs::read_to_string(&config_path).unwrap();
    std::fs::write(&config_path, "[[tenants]]\nid = \"dev\"\n").unwrap();
    let hup = |pid: u32| send_signal(pid, libc::SIGHUP);
    let ready = next_notice();
    assert!(ready.contains("READY=1"), "{ready}");
    hup(daemon.id());
    wait_for_log("reload failed");
    let reloading = next_notice();
    assert!(
        reloading.contains("RELOADING=1") && reloading.contains("MONOTONIC_USEC="),
        "{reloading}"
    );
    assert!(next_notice().contains("READY=1"));
    let probe = |extra: &[&str]| {
        rhelp()
            .args([
                "probe",
                "--relay",
                &addr,
                "--pin",
                &fingerprint,
                "--screen-mb",
                "1",
                "--round-trips",
                "5",
                "--json",
            ])
            .args(extra)
            .arg("--helper-token")
            .arg(&helper_token)
            .arg("--sharer-token")
            .arg(&sharer_token)
            .output()
            .unwrap()
    };
    let report: serde_json::Value = serde_json::from_slice(&probe(&[]).stdout).unwrap();
    assert_eq!(
        report["ok"], true,
        "a bad reload must not change anything: {report}"
    );
    // ...and a good one applies: the tenant is disabled now.
    std::fs::write(
        &config_path,
        good_config.replace("enabled = true", "enabled = false"),
    )
    .unwrap();
    hup(daemon.id());
    wait_for_log("configuration reloaded");
    let report: serde_json::Value = serde_json::from_slice(&probe(&[]).stdout).unwrap();
    assert_eq!(report["error_code"], "TENANT_DISABLED", "{report}");

    daemon.signal(libc::SIGTERM);
    let exit = daemon.0.wait().unwrap();
    assert_eq!(
        exit.code(),
        Some(0),
        "relay did not exit cleanly on SIGTERM"
    );
    // After the second reload's READY=1, the stop: STOPPING=1.
    let notices: Vec<String> = std::iter::from_fn(|| {
        let mut buf = [0u8; 512];
        notify.set_nonblocking(true).ok()?;
        notify
            .recv(&mut buf)
            .ok()
            .map(|n| String::from_utf8_lossy(&buf[..n]).to_string())
    })
    .collect();
    assert!(
        notices.iter().any(|n| n.contains("STOPPING=1")),
        "{notices:?}"
    );
}

/// Everything a daemon under test needs, in a temporary folder: the dev tenant's key in
/// `state`, an admin token, audit in `audit`, and a config on free ports.
struct DaemonSetup {
    dir: tempfile::TempDir,
    state: std::path::PathBuf,
    config: std::path::PathBuf,
    audit: std::path::PathBuf,
    token_file: std::path::PathBuf,
    signer: remote_help_relay::issuer::TokenSigner,
}

fn daemon_setup() -> DaemonSetup {
    let dir = tempfile::tempdir().unwrap();
    let state = dir.path().join("state");
    let (dev, signer) = remote_help_relay::dev::config(&state).unwrap();
    let audit = dir.path().join("audit");
    let token_file = dir.path().join("admin-token");
    std::fs::write(&token_file, "cli-test-admin-token-0123456789\n").unwrap();
    // The embedded config listens on fixed ports; a copy on free ones lets runs overlap.
    let config = dir.path().join("relay.toml");
    std::fs::write(
        &config,
        format!(
            "[server]\nlisten = \"127.0.0.1:0\"\nstate_dir = {:?}\n[audit]\ndir = {:?}\n\
             [admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = {:?}\n\
             [[tenants]]\nid = \"dev\"\nissuer = {:?}\njwks_file = {:?}\nenabled = true\n\
             [[tenants.assignments]]\nrole = \"Help Desk Operator\"\nmembers = [\"helpdesk\"]\n\
             scope = [\"all_users\", \"all_devices\"]\n",
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
    DaemonSetup {
        dir,
        state,
        config,
        audit,
        token_file,
        signer,
    }
}

#[test]
fn after_sigkill_the_next_start_records_the_end_of_the_interrupted_session() {
    let DaemonSetup {
        dir,
        config: config_path,
        audit,
        token_file,
        signer,
        ..
    } = daemon_setup();
    std::fs::write(
        dir.path().join("wrong-token"),
        "not-the-admin-token-0123456789\n",
    )
    .unwrap();
    let (mut daemon, addr, fingerprint, admin, _lines) = start_daemon(&config_path, &[]);

    // A session is active when the relay is killed.
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let session_id = runtime.block_on(async {
        use remote_help_relay::client::{Client, ClientOptions};
        use remote_help_relay::core::{Mode, Role};
        use remote_help_relay::dev::{Persona, mint};
        let trust = remote_help_relay::tls::RelayTrust::Pin(
            remote_help_relay::tls::Fingerprint::parse(&fingerprint).unwrap(),
        );
        let relay_addr = addr.parse().unwrap();
        let mut helper = Client::connect(ClientOptions::new(
            relay_addr,
            trust.clone(),
            mint(&signer, Persona::Helper, None, 600).unwrap(),
            Role::Helper,
        ))
        .await
        .unwrap();
        let mut sharer = Client::connect(ClientOptions::new(
            relay_addr,
            trust,
            mint(&signer, Persona::Sharer, None, 600).unwrap(),
            Role::Sharer,
        ))
        .await
        .unwrap();
        let created = helper.create_session(Mode::FullControl).await.unwrap();
        sharer.join(&created.code).await.unwrap();
        helper.wait_for_sharer().await.unwrap();
        sharer.accept().await.unwrap();
        helper.wait_for_start().await.unwrap();
        // Leave both connected; the relay dies under them.
        std::mem::forget(helper);
        std::mem::forget(sharer);
        created.session_id
    });
    // The active session is listed by the admin API, through `relay sessions --active`.
    let out = relay()
        .args([
            "sessions",
            "--active",
            "--tenant",
            "dev",
            "--admin",
            &admin,
            "--token-file",
        ])
        .arg(&token_file)
        .output()
        .unwrap();
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{listed}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        listed.contains(&session_id) && listed.contains("1 active session(s)"),
        "{listed}"
    );
    let out = relay()
        .args(["sessions", "--active", "--admin", &admin, "--token-file"])
        .arg(dir.path().join("wrong-token"))
        .output()
        .unwrap();
    assert!(!out.status.success(), "a wrong token must be refused");

    daemon.0.kill().unwrap(); // SIGKILL
    daemon.0.wait().unwrap();
    drop(runtime);

    let events =
        remote_help_relay::audit::read_events(&remote_help_relay::audit::audit_files(&audit));
    assert!(
        !events.iter().any(|e| e.session_id == session_id
            && e.event == Some(remote_help_relay::audit::EventKind::SessionEnded)),
        "no end event can have been written by a killed relay"
    );

    // The next start closes the session, before serving anyone.
    let (mut daemon, _, _, _, lines) = start_daemon(&config_path, &[]);
    let events =
        remote_help_relay::audit::read_events(&remote_help_relay::audit::audit_files(&audit));
    let end = events
        .iter()
        .find(|e| {
            e.session_id == session_id
                && e.event == Some(remote_help_relay::audit::EventKind::SessionEnded)
        })
        .expect("the restarted relay recorded the end of the interrupted session");
    assert_eq!(end.end_reason.as_deref(), Some("RELAY_RESTARTED"));
    assert_eq!(end.ended_by, Some(remote_help_relay::audit::EndedBy::Relay));
    assert_eq!(end.helper_id.as_deref(), Some("helper-ada"));
    assert!(end.end_time.is_some() && end.duration_secs.is_some());
    assert!(
        lines
            .try_iter()
            .any(|l| l.contains("RELAY_RESTARTED") || l.contains("left open"))
    );

    // The report shows it; the hash chains hold; tampering is found.
    let out = relay()
        .args(["sessions", "--json", "--tenant", "dev", "--audit-dir"])
        .arg(&audit)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(report["summary"]["count"], 1);
    assert_eq!(report["sessions"][0]["end_reason"], "RELAY_RESTARTED");
    let out = relay()
        .args(["sessions", "--tenant", "other", "--audit-dir"])
        .arg(&audit)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&out.stdout).contains("0 session(s)"),
        "another tenant's report is empty"
    );

    let files = remote_help_relay::audit::audit_files(&audit);
    let out = relay()
        .args(["audit", "verify"])
        .args(&files)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    // A torn last line (a crash mid-write) is reported as such, not as an edit.
    let whole = std::fs::read(&files[0]).unwrap();
    std::fs::write(&files[0], [&whole[..], b"{\"schema\":1,\"ev"].concat()).unwrap();
    let out = relay()
        .args(["audit", "verify"])
        .arg(&files[0])
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && said.contains("torn last line (15 bytes)"),
        "{said}"
    );
    std::fs::write(&files[0], &whole).unwrap();
    // With the key (found through the config's state folder), every line's MAC is checked.
    let out = relay()
        .arg("--config")
        .arg(&config_path)
        .args(["audit", "verify"])
        .args(&files)
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{said}");
    assert!(said.contains("MACs checked"), "{said}");
    let text = std::fs::read_to_string(&files[0]).unwrap();
    std::fs::write(&files[0], text.replacen("helper-ada", "helper-eve", 1)).unwrap();
    let out = relay()
        .arg("--config")
        .arg(&config_path)
        .args(["audit", "verify"])
        .arg(&files[0])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(":1: BROKEN: mac does not match"),
        "with the key, the edited line itself is found: {said}"
    );
    let out = relay()
        .args(["audit", "verify"])
        .arg(&files[0])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        said.contains(":2: BROKEN"),
        "the line after the edited one breaks: {said}"
    );

    daemon.signal(libc::SIGTERM);
    assert_eq!(daemon.0.wait().unwrap().code(), Some(0));
}

/// `rhelp helper` in a session whose sharer vanishes (its connection closes with no
/// `EndSession`) says so with PEER_LOST's sentence, not how a data stream broke.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rhelp_helper_says_peer_lost_when_its_sharer_vanishes() {
    use bytes::Bytes;
    use common::{TestRelay, within};
    use remote_help_proto::ErrorCode;
    use remote_help_relay::core::Channel;
    use remote_help_relay::dev::Persona;

    let relay = TestRelay::start().await;
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("helper.jwt");
    std::fs::write(&token, relay.tenant("contoso").token(Persona::Helper)).unwrap();
    let mut child = rhelp()
        .args(["helper", "--relay"])
        .arg(relay.addr().to_string())
        .arg("--pin")
        .arg(relay.handle.fingerprint().to_string())
        .arg("--token")
        .arg(&token)
        // A failing run cannot linger: once this test's relay is gone, it exits.
        .args(["--mode", "view-only", "--seconds", "60"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let (tx, mut lines) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut next_line = async || within(lines.recv()).await.expect("rhelp helper exited");
    let code = loop {
        let line = next_line().await;
        if let Some(rest) = line.strip_prefix("Session code: ") {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let mut sharer = relay.sharer("contoso").await;
    within(sharer.join(&code)).await.unwrap();
    within(sharer.accept()).await.unwrap();
    while !next_line().await.starts_with("Session started") {}
    // The sharer streams its screen without ever sending its end-to-end key, then
    // vanishes: rhelp helper, waiting in the key exchange, must still report the session's
    // end, not hang until --seconds.
    // A misbehaving peer: it announced protection, so it writes raw frames on its bare
    // connection (the SDK refuses it unsealed calls).
    let raw = remote_help_relay::client::UnsealedChannels::over(sharer.connection().clone());
    let mut screen = within(raw.open_channel(Channel::Screen)).await.unwrap();
    for _ in 0..8 {
        within(screen.send(Bytes::from(vec![1u8; 32 * 1024])))
            .await
            .unwrap();
    }
    sharer.connection().close(0u32.into(), b"gone");

    let output = within(tokio::task::spawn_blocking(move || {
        child.wait_with_output()
    }))
    .await
    .unwrap()
    .unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    let expected = format!("rhelp: PEER_LOST: {}", ErrorCode::PeerLost.describe());
    assert!(
        stderr.contains(&expected),
        "expected {expected:?} in:\n{stderr}"
    );
    assert!(!stderr.contains("reset"), "{stderr}");
    assert!(!output.status.success());
    relay.stop().await;
}

#[test]
fn check_config_names_the_tenant_and_kid_of_a_weak_rsa_key() {
    use jsonwebtoken::Algorithm;
    use remote_help_relay::issuer::{TokenSigner, jwks_of};
    let dir = tempfile::tempdir().unwrap();
    let weak = TokenSigner::from_pem(
        "initech-2019",
        Algorithm::RS256,
        include_str!("fixtures/rsa-1024-test-key.pem"),
    )
    .unwrap();
    std::fs::write(
        dir.path().join("initech.jwks.json"),
        serde_json::to_string(&jwks_of(&[&weak]).unwrap()).unwrap(),
    )
    .unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(
        &path,
        "[[tenants]]\nid = \"initech\"\nissuer = \"https://login.initech.example/\"\njwks_file = \"initech.jwks.json\"\n",
    )
    .unwrap();
    let out = relay().arg("check-config").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(64));
    let stderr = String::from_utf8_lossy(&out.stderr);
    for needle in [
        "tenants[0].jwks_file",
        "\"initech\"",
        "\"initech-2019\"",
        "RSA key of 1024 bits",
    ] {
        assert!(stderr.contains(needle), "{needle} not in:\n{stderr}");
    }
}

#[test]
fn the_example_configs_commented_provider_tenants_pass_check_config_when_uncommented() {
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../config.example.toml");
    let text = std::fs::read_to_string(&example).unwrap();
    let (head, providers) = text
        .split_once("# --- Tenants signing in through an identity provider")
        .expect("the example shows identity provider tenants");
    // Uncomment the TOML lines (`# key = …`, `# [table]`), not the prose or the `# # `
    // alternatives.
    let uncommented: String = providers
        .lines()
        .map(|line| match line.strip_prefix("# ") {
            Some(rest)
                if rest.starts_with('[')
                    || rest.split_once(" = ").is_some_and(|(key, _)| {
                        key.chars().all(|c| c.is_ascii_lowercase() || c == '_')
                    }) =>
            {
                rest.to_string()
            }
            _ => line.to_string(),
        })
        .collect::<Vec<_>>()
        .join("\n");
    assert!(uncommented.contains("claims = \"entra\"\n"));
    assert!(uncommented.contains("claims = \"keycloak\"\n"));
    let dir = tempfile::tempdir().unwrap();
    let keys =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/example-keys/contoso.jwks.json");
    std::fs::create_dir_all(dir.path().join("deploy/example-keys")).unwrap();
    // The provider tenants take their keys by discovery; only the file tenant needs one.
    std::fs::copy(
        &keys,
        dir.path().join("deploy/example-keys/contoso.jwks.json"),
    )
    .unwrap();
    let path = dir.path().join("relay.toml");
    std::fs::write(&path, format!("{head}#{uncommented}\n")).unwrap();
    let out = relay().arg("check-config").arg(&path).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("3 tenant(s)"));
}
