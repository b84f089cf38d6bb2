//! The relay daemon as a child process, for tests that need real processes (signals,
//! crashes, several nodes).

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};

/// A daemon process that is killed if the test ends early (a failing assertion must not
/// leave a relay running, holding the test's output pipes).
pub struct Daemon(pub std::process::Child);

impl Daemon {
    /// The process id.
    pub fn id(&self) -> u32 {
        self.0.id()
    }

    /// Sends `signal` (`libc::SIGTERM`, `SIGHUP`, ...) to the daemon.
    pub fn signal(&self, signal: libc::c_int) {
        send_signal(self.id(), signal);
    }
}

/// Sends `signal` to process `pid`, as `kill(1)` would, without needing procps.
pub fn send_signal(pid: u32, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(pid).expect("a process id fits pid_t");
    // SAFETY: kill has no memory-safety preconditions; the result is checked.
    let result = unsafe { libc::kill(pid, signal) };
    assert_eq!(
        result,
        0,
        "kill({pid}, {signal}): {}",
        std::io::Error::last_os_error()
    );
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Starts the daemon on `config`; returns it with its address, fingerprint, admin address
/// and its log lines.
pub fn start_daemon(
    config: &Path,
    env: &[(&str, &Path)],
) -> (
    Daemon,
    String,
    String,
    String,
    std::sync::mpsc::Receiver<String>,
) {
    let mut child = Command::new(env!("CARGO_BIN_EXE_relay"))
        .args(["--log-format", "json", "--config"])
        .arg(config)
        .envs(env.iter().map(|(k, v)| (*k, *v)))
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut log = BufReader::new(child.stderr.take().unwrap()).lines();
    let daemon = Daemon(child);
    let (tx, lines) = std::sync::mpsc::channel::<String>();
    let (mut admin, mut listening) = (None, None);
    while admin.is_none() || listening.is_none() {
        let line = log.next().expect("relay exited before listening").unwrap();
        let _ = tx.send(line.clone());
        let entry: serde_json::Value = serde_json::from_str(&line).unwrap();
        let fields = &entry["fields"];
        if fields["message"]
            .as_str()
            .is_some_and(|m| m.starts_with("admin and metrics listener"))
        {
            admin = fields["addr"].as_str().map(str::to_string);
        }
        if let (Some(addr), Some(fp)) = (
            fields["local_addr"].as_str(),
            fields["fingerprint"].as_str(),
        ) {
            listening = Some((addr.to_string(), fp.to_string()));
        }
    }
    std::thread::spawn(move || {
        for line in log.map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let (addr, fingerprint) = listening.unwrap_or_default();
    (daemon, addr, fingerprint, admin.unwrap_or_default(), lines)
}
