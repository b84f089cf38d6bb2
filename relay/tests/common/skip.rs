//! Tests that need something this machine lacks (root, a system tool, network namespaces)
//! skip with one line that says what is missing and how to get it. `./test` counts those
//! lines (through `RHR_TEST_SKIP_LOG`) in its summary; under CI (`CI` set) a skip is a
//! failure, so nothing is silently skipped where it should run.

use std::io::Write;
use std::process::Command;

/// The environment variable naming the file `./test` collects skip lines in.
pub const SKIP_LOG_VAR: &str = "RHR_TEST_SKIP_LOG";

/// Whether this run is CI's: the `CI` variable set to anything but empty, `0` or `false`.
pub fn under_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| !v.is_empty() && v != "0" && !v.eq_ignore_ascii_case("false"))
}

/// Records that `test` cannot run here because `missing`, with `remedy` saying how to get
/// it. Panics under CI; otherwise prints the line, appends it to the skip log, and returns
/// so the caller can return.
pub fn skip(test: &str, missing: &str, remedy: &str) {
    let line = format!("SKIPPED {test}: {missing} ({remedy})");
    assert!(!under_ci(), "{line}; CI is set, where every test must run");
    // Straight to the process's stderr: the test harness captures `eprintln!`, and would
    // drop the line from a passing test's output.
    let _ = writeln!(std::io::stderr().lock(), "{line}");
    if let Some(path) = std::env::var_os(SKIP_LOG_VAR) {
        let appended = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            // One write of the whole line: O_APPEND keeps concurrent tests' lines apart.
            .and_then(|mut f| f.write_all(format!("{line}\n").as_bytes()));
        if let Err(e) = appended {
            panic!("cannot record the skip in {}: {e}", path.to_string_lossy());
        }
    }
}

/// Whether this process runs as root; if not, skips `test` (see [`skip`]).
pub fn require_root(test: &str, why: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    skip(
        test,
        &format!("not root ({why} needs it)"),
        "run the suite as root: sudo ./test",
    );
    false
}

/// Whether every `(command, Debian package)` in `tools` can be executed; if one cannot,
/// skips `test` naming the packages to install.
pub fn require_tools(test: &str, tools: &[(&str, &str)]) -> bool {
    let missing: Vec<&(&str, &str)> = tools
        .iter()
        .filter(|(command, _)| {
            matches!(
                Command::new(command).arg("--version").output(),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound
            )
        })
        .collect();
    if missing.is_empty() {
        return true;
    }
    let commands: Vec<&str> = missing.iter().map(|(c, _)| *c).collect();
    let packages: Vec<&str> = missing.iter().map(|(_, p)| *p).collect();
    skip(
        test,
        &format!("{} not installed", commands.join(", ")),
        &format!(
            "./test installs them, or: apt-get install {}",
            packages.join(" ")
        ),
    );
    false
}
