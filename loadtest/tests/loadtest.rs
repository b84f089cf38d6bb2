//! The `loadtest` binary end to end: it starts a real relay (`--spawn-relay`), drives real
//! sessions over QUIC on 127.0.0.1, runs the direct baseline, and writes its JSON report.
//! Figures are measured, never asserted; the test checks that the work was done and counted.

use std::path::PathBuf;
use std::process::Command;

fn relay_bin() -> PathBuf {
    // `cargo test --workspace` builds the relay package's binaries next to ours.
    let bin = PathBuf::from(env!("CARGO_BIN_EXE_loadtest")).with_file_name("relay");
    assert!(
        bin.is_file(),
        "{} is missing: run the workspace tests (cargo test --workspace) or cargo build --bin relay",
        bin.display()
    );
    bin
}

/// Runs loadtest against a relay it spawns, with `args`; it must succeed. Returns its
/// standard output and its JSON report.
fn spawned_run(args: &[&str]) -> (String, serde_json::Value) {
    let dir = tempfile::tempdir().unwrap();
    let report = dir.path().join("report.json");
    let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--spawn-relay", "--relay-bin"])
        .arg(relay_bin())
        .args(args)
        .args(["--no-progress", "--json"])
        .arg(&report)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "loadtest failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let json = serde_json::from_str(&std::fs::read_to_string(&report).unwrap()).unwrap();
    (stdout, json)
}

#[test]
fn a_small_run_against_a_spawned_relay_reports_every_figure() {
    let (stdout, json) = spawned_run(&[
        "--sessions",
        "3",
        "--ramp",
        "50",
        "--duration",
        "1",
        "--screen-kbit",
        "2000",
        "--input-rate",
        "50",
        "--chat",
        "--baseline",
        "direct",
    ]);
    assert!(stdout.contains("input round trip"), "{stdout}");
    // Protected by default, with the SDK's default announcement.
    assert_eq!(json["settings"]["e2e"], "peer-tls13", "{json:#}");
    let relayed = &json["relayed"];
    assert_eq!(relayed["sessions_ok"], 3, "{json:#}");
    assert_eq!(relayed["sessions_failed"], 0);
    assert_eq!(relayed["setup_ms"]["count"], 3);
    assert!(relayed["input_round_trips"].as_u64().unwrap() > 0);
    assert!(relayed["screen_frames"].as_u64().unwrap() > 0);
    assert!(relayed["bytes_received"].as_u64().unwrap() > 0);
    // The spawned relay is measured through /proc.
    assert!(relayed["relay"]["rss_before_bytes"].as_u64().unwrap() > 0);
    let direct = &json["direct"];
    assert_eq!(direct["sessions_ok"], 3, "{json:#}");
    assert!(direct["screen_frames"].as_u64().unwrap() > 0);
    assert!(json["throughput_ratio"].as_f64().is_some());
}

#[test]
fn a_spawned_cluster_redirects_every_join_and_still_pairs() {
    let (_, json) = spawned_run(&[
        "--nodes",
        "2",
        "--sessions",
        "4",
        "--ramp",
        "50",
        "--duration",
        "1",
        "--input-rate",
        "20",
        "--screen-kbit",
        "500",
    ]);
    assert_eq!(json["settings"]["nodes"], 2);
    // Sharers went to the other node: a join there succeeds only by following a redirect.
    let (relay, via) = (&json["settings"]["relay"], &json["settings"]["join_via"]);
    assert!(via.is_string() && via != relay, "{json:#}");
    assert_eq!(json["relayed"]["sessions_ok"], 4, "{json:#}");
    assert!(json["relayed"]["input_round_trips"].as_u64().unwrap() > 0);
}

#[test]
fn direct_paths_come_up_on_loopback_and_carry_the_traffic() {
    let (_, json) = spawned_run(&[
        "--direct-path",
        "--sessions",
        "4",
        "--ramp",
        "50",
        "--duration",
        "1",
        "--input-rate",
        "20",
        "--screen-kbit",
        "500",
    ]);
    assert_eq!(json["settings"]["direct_path"], true);
    // The packet path by default: the peer connection migrates to the direct path.
    assert_eq!(json["settings"]["data_path"], "packet");
    assert_eq!(json["relayed"]["sessions_ok"], 4, "{json:#}");
    assert_eq!(json["relayed"]["direct_paths"], 4, "{json:#}");
    assert_eq!(
        json["relayed"]["direct_path_setup_ms"]["count"], 4,
        "{json:#}"
    );
    assert!(json["relayed"]["input_round_trips"].as_u64().unwrap() > 0);
}

#[test]
fn protection_can_be_pinned_to_either_suite_or_turned_off_for_comparison() {
    for (args, e2e) in [
        (&["--e2e-suite", "aes256gcm"][..], "aes256gcm"),
        (&["--e2e-suite", "chacha20"][..], "chacha20"),
        (&["--no-e2e"][..], "off"),
    ] {
        let mut all = vec![
            "--sessions",
            "2",
            "--ramp",
            "50",
            "--duration",
            "1",
            "--screen-kbit",
            "2000",
            "--input-rate",
            "50",
            "--baseline",
            "direct",
            // The SDK's suites seal the stream path; the packet path is the peer
            // connection's TLS whatever the suite.
            "--data-path",
            "stream",
        ];
        all.extend_from_slice(args);
        let (_, json) = spawned_run(&all);
        assert_eq!(json["settings"]["e2e"], e2e, "{args:?}: {json:#}");
        assert_eq!(json["settings"]["data_path"], "stream");
        for run in ["relayed", "direct"] {
            assert_eq!(json[run]["sessions_ok"], 2, "{args:?} {run}: {json:#}");
            assert_eq!(json[run]["sessions_failed"], 0, "{args:?} {run}");
            assert!(json[run]["input_round_trips"].as_u64().unwrap() > 0);
            assert!(json[run]["screen_frames"].as_u64().unwrap() > 0);
        }
    }
}

#[test]
fn out_of_bounds_settings_are_refused_before_any_traffic() {
    for args in [
        vec!["--spawn-relay", "--sessions", "0"],
        vec!["--spawn-relay", "--sessions", "1000000"],
        vec!["--spawn-relay", "--duration", "100000"],
        vec!["--relay", "127.0.0.1:9"],
        vec!["--spawn-relay", "--nodes", "0"],
        vec!["--spawn-relay", "--ramp", "NaN"],
        vec!["--spawn-relay", "--sessions", "1000", "--ramp", "0.0001"],
        vec!["--spawn-relay", "--screen-kbit", "18446744073709551615"],
        vec!["--spawn-relay", "--frame-bytes", "100000000"],
        vec!["--spawn-relay", "--nodes", "33"],
    ] {
        let output = Command::new(env!("CARGO_BIN_EXE_loadtest"))
            .args(&args)
            .output()
            .unwrap();
        assert_eq!(output.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert!(stderr.contains("loadtest:"), "{args:?}: {stderr}");
    }
}

/// Interrupted (SIGTERM, as `timeout` or a job runner sends; Ctrl-C is SIGINT), loadtest
/// stops the relay it spawned before it exits (status 130) instead of leaving it running.
#[cfg(target_os = "linux")]
#[test]
fn an_interrupted_run_stops_the_relay_it_spawned() {
    use std::io::BufRead as _;
    let mut child = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(["--spawn-relay", "--relay-bin"])
        .arg(relay_bin())
        .args([
            "--sessions",
            "2",
            "--ramp",
            "2",
            "--duration",
            "600",
            "--idle",
        ])
        .arg("--no-progress")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap()).lines();
    // "loadtest: spawned relay pid N on ADDR (state in DIR)"
    let announced = stderr
        .by_ref()
        .map(|line| line.unwrap())
        .find(|line| line.contains("spawned relay pid"))
        .expect("loadtest announces the relay it spawned");
    let relay_pid: u32 = announced
        .split_whitespace()
        .skip_while(|w| *w != "pid")
        .nth(1)
        .and_then(|pid| pid.parse().ok())
        .unwrap_or_else(|| panic!("no pid in {announced:?}"));
    let relay_proc = PathBuf::from(format!("/proc/{relay_pid}"));
    assert!(relay_proc.exists(), "the relay runs");
    let drain = std::thread::spawn(move || stderr.map_while(Result::ok).collect::<Vec<_>>());

    let pid = libc::pid_t::try_from(child.id()).unwrap();
    // SAFETY: kill has no memory-safety preconditions; the result is checked.
    assert_eq!(
        unsafe { libc::kill(pid, libc::SIGTERM) },
        0,
        "SIGTERM to loadtest"
    );
    let exit = child.wait().unwrap();
    let rest = drain.join().unwrap();
    assert_eq!(exit.code(), Some(130), "{rest:?}");
    assert!(
        rest.iter().any(|l| l.contains("interrupted")),
        "says why it stopped: {rest:?}"
    );
    // The relay was loadtest's child and has been reaped: its pid is gone (or, if the
    // kernel already reused it, belongs to another program).
    let still_relay = std::fs::read(relay_proc.join("cmdline"))
        .map(|cmd| String::from_utf8_lossy(&cmd).contains("loadtest-relay"))
        .unwrap_or(false);
    assert!(!still_relay, "the spawned relay outlived loadtest");
}
