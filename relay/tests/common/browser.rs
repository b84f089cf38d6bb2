//! A headless Chromium with one page, driven over the Chrome DevTools Protocol through
//! `--remote-debugging-pipe` (file descriptors 3 and 4, NUL-separated JSON), so no extra
//! crate or websocket is needed. Used by the Monitor page's tests and the WebTransport
//! browser test; check for `chromium` first with `skip::require_tools`.

use std::fs::File;
use std::io::{BufRead, BufReader, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use base64::Engine as _;
use serde_json::{Value, json};
use tokio::sync::mpsc;

/// Whether Chromium is here; if not, `test` skips (a failure under CI, `super::skip`).
pub fn have_chromium(test: &str) -> bool {
    super::skip::require_tools(test, &[("chromium", "chromium")])
}

/// `target/test-artefacts/<name>/` of the workspace (made if missing): where a page test
/// keeps its screenshots and the browser's log.
pub fn artefacts(name: &str) -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target"));
    let dir = target.join("test-artefacts").join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// How long one browser step (a command, or a condition to become true) may take.
const STEP: Duration = Duration::from_secs(30);

pub struct Browser {
    child: Child,
    to_browser: File,
    from_browser: mpsc::UnboundedReceiver<Value>,
    next_id: u64,
    session: String,
    _profile: tempfile::TempDir,
}

fn pipe() -> (OwnedFd, OwnedFd) {
    let mut fds = [0; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: pipe2 succeeded, so both are open descriptors we now own.
    unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) }
}

impl Browser {
    /// Starts `chromium --headless=new` with one blank page; its log goes to `log`.
    pub async fn launch(log: &Path) -> Browser {
        Browser::launch_with(log, &[]).await
    }

    /// As [`Browser::launch`], with more command-line switches (e.g. the SPKI pin of a
    /// test server's certificate).
    pub async fn launch_with(log: &Path, switches: &[String]) -> Browser {
        let profile = tempfile::tempdir().unwrap();
        let (commands_read, commands_write) = pipe();
        let (replies_read, replies_write) = pipe();
        let (cr, rw) = (commands_read.as_raw_fd(), replies_write.as_raw_fd());
        let mut command = Command::new("chromium");
        command
            .args([
                "--headless=new",
                // Tests run as root, where Chromium's sandbox refuses to start.
                "--no-sandbox",
                "--remote-debugging-pipe",
                "--disable-gpu",
                "--no-first-run",
                "--no-default-browser-check",
                "--disable-extensions",
                "--hide-scrollbars",
            ])
            .args(switches)
            .arg(format!("--user-data-dir={}", profile.path().display()))
            .arg("about:blank")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(File::create(log).unwrap());
        // SAFETY: only async-signal-safe calls (fcntl, dup2) between fork and exec.
        unsafe {
            command.pre_exec(move || {
                // Move both out of the way first, so neither is clobbered by the other's
                // dup2; dup2 clears close-on-exec on 3 and 4.
                let high_r = libc::fcntl(cr, libc::F_DUPFD_CLOEXEC, 10);
                let high_w = libc::fcntl(rw, libc::F_DUPFD_CLOEXEC, 10);
                if high_r < 0
                    || high_w < 0
                    || libc::dup2(high_r, 3) < 0
                    || libc::dup2(high_w, 4) < 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = command.spawn().expect("chromium starts");
        drop((commands_read, replies_write));
        let (tx, rx) = mpsc::unbounded_channel();
        let replies = File::from(replies_read);
        std::thread::spawn(move || {
            let mut reader = BufReader::new(replies);
            loop {
                let mut message = Vec::new();
                match reader.read_until(0, &mut message) {
                    Ok(0) | Err(_) => return,
                    Ok(_) => {
                        message.pop_if(|b| *b == 0);
                        if let Ok(value) = serde_json::from_slice(&message)
                            && tx.send(value).is_err()
                        {
                            return;
                        }
                    }
                }
            }
        });
        let mut browser = Browser {
            child,
            to_browser: File::from(commands_write),
            from_browser: rx,
            next_id: 0,
            session: String::new(),
            _profile: profile,
        };
        let target = browser
            .call("Target.createTarget", json!({ "url": "about:blank" }))
            .await;
        let attached = browser
            .call(
                "Target.attachToTarget",
                json!({ "targetId": target["targetId"], "flatten": true }),
            )
            .await;
        browser.session = attached["sessionId"].as_str().unwrap().to_string();
        browser
    }

    /// The browser's process id (its renderer, network and GPU processes are its children):
    /// what a measurement reads CPU time for.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One DevTools command (to the page once attached); its result, or a panic with
    /// the browser's error.
    pub async fn call(&mut self, method: &str, params: Value) -> Value {
        match self.try_call(method, params).await {
            Ok(result) => result,
            Err(error) => panic!("{method}: {error}"),
        }
    }

    /// One DevTools command; its result, or the browser's error.
    async fn try_call(&mut self, method: &str, params: Value) -> Result<Value, Value> {
        self.next_id += 1;
        let id = self.next_id;
        let mut message = json!({ "id": id, "method": method, "params": params });
        if !self.session.is_empty() {
            message["sessionId"] = self.session.clone().into();
        }
        let mut bytes = serde_json::to_vec(&message).unwrap();
        bytes.push(0);
        self.to_browser.write_all(&bytes).unwrap();
        let reply = tokio::time::timeout(STEP, async {
            loop {
                let message = self.from_browser.recv().await.expect("chromium exited");
                if message["id"] == json!(id) {
                    return message;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("{method} got no answer in {STEP:?}"));
        match reply.get("error") {
            Some(error) => Err(error.clone()),
            None => Ok(reply["result"].clone()),
        }
    }

    /// Evaluates `expression` in the page (awaiting a promise); its value.
    pub async fn eval(&mut self, expression: &str) -> Value {
        let result = self
            .call(
                "Runtime.evaluate",
                json!({ "expression": expression, "awaitPromise": true, "returnByValue": true }),
            )
            .await;
        if let Some(exception) = result.get("exceptionDetails") {
            panic!("{expression}: {exception}");
        }
        result["result"]["value"].clone()
    }

    /// Waits (bounded) until `condition` is true in the page. The page checks it
    /// every 25 ms itself; the bound fails the test with the condition named.
    pub async fn wait_until(&mut self, condition: &str) {
        let expression = format!(
            "new Promise(done => {{ const check = () => {{ let ok = false; \
             try {{ ok = !!({condition}); }} catch (e) {{}} \
             if (ok) done(true); else setTimeout(check, 25); }}; check(); }})"
        );
        let waited = tokio::time::timeout(STEP, self.eval(&expression)).await;
        assert!(
            waited.is_ok(),
            "the page did not come to `{condition}` within {STEP:?}"
        );
    }

    /// Waits (bounded) until `condition` is true in whatever document the page shows:
    /// across navigations (to another origin and back), where a wait in one document
    /// ends with that document.
    pub async fn wait_across_navigation(&mut self, condition: &str) {
        let expression = format!(
            "new Promise(done => {{ const check = () => {{ let ok = false; \
             try {{ ok = !!({condition}); }} catch (e) {{}} \
             if (ok) done(true); else setTimeout(check, 25); }}; check(); }})"
        );
        let deadline = tokio::time::Instant::now() + STEP;
        loop {
            let params =
                json!({ "expression": expression, "awaitPromise": true, "returnByValue": true });
            let answer =
                tokio::time::timeout_at(deadline, self.try_call("Runtime.evaluate", params)).await;
            match answer {
                Err(_) => panic!("the page did not come to `{condition}` within {STEP:?}"),
                Ok(Ok(result)) if result["result"]["value"] == json!(true) => return,
                // The document went away under the wait (a navigation): wait in the next.
                Ok(_) => tokio::task::yield_now().await,
            }
        }
    }

    /// Like [`Browser::wait_until`], but says whether `condition` came true in time, so the
    /// caller can tell what the page shows instead.
    pub async fn wait_for(&mut self, condition: &str) -> bool {
        let expression = format!(
            "new Promise(done => {{ const check = () => {{ let ok = false; \
             try {{ ok = !!({condition}); }} catch (e) {{}} \
             if (ok) done(true); else setTimeout(check, 25); }}; check(); }})"
        );
        // Shorter than the command's own bound, which would panic instead.
        tokio::time::timeout(STEP - Duration::from_secs(2), self.eval(&expression))
            .await
            .is_ok()
    }

    /// The viewport: `width` × `height` CSS pixels, as a phone when `mobile`.
    pub async fn viewport(&mut self, width: u32, height: u32, mobile: bool) {
        self.call(
            "Emulation.setDeviceMetricsOverride",
            json!({ "width": width, "height": height, "deviceScaleFactor": 1, "mobile": mobile }),
        )
        .await;
    }

    pub async fn navigate(&mut self, url: &str) {
        self.call("Page.navigate", json!({ "url": url })).await;
    }

    /// Types `text` into the focused element, as a keyboard or paste would.
    pub async fn type_text(&mut self, text: &str) {
        self.call("Input.insertText", json!({ "text": text })).await;
    }

    /// A mouse event at (`x`, `y`) CSS pixels of the viewport, as a real mouse makes it
    /// (pointer events included): `kind` is `mouseMoved`, `mousePressed` or `mouseReleased`,
    /// `button` `none`, `left`, `middle` or `right`.
    pub async fn mouse(&mut self, kind: &str, x: f64, y: f64, button: &str) {
        self.call(
            "Input.dispatchMouseEvent",
            json!({ "type": kind, "x": x, "y": y, "button": button, "clickCount": 1 }),
        )
        .await;
    }

    /// Presses (`down`) or releases a physical key, `code` as `KeyboardEvent.code` (`KeyA`),
    /// `key` its value (`a`), to the focused element.
    pub async fn key(&mut self, code: &str, key: &str, down: bool) {
        let mut event = json!({
            "type": if down { "keyDown" } else { "keyUp" },
            "code": code,
            "key": key,
        });
        if down && key.chars().count() == 1 {
            event["text"] = key.into();
        }
        self.call("Input.dispatchKeyEvent", event).await;
    }

    /// On the test OpenID provider's login page (relay/tests/oidc-provider, its development
    /// forms): logs in as `login` with any password and gives consent; the provider then
    /// sends the browser back to the page that asked.
    pub async fn log_in_at_test_provider(&mut self, login: &str) {
        self.eval(&format!(
            "document.querySelector('input[name=login]').value = '{login}'; \
             document.querySelector('input[name=password]').value = 'any password'; \
             document.querySelector('button[type=submit]').click()"
        ))
        .await;
        self.wait_across_navigation("document.querySelector('input[name=prompt][value=consent]')")
            .await;
        self.eval("document.querySelector('button[type=submit]').click()")
            .await;
    }

    /// Saves a PNG of the whole page to `path`.
    pub async fn screenshot(&mut self, path: &Path) {
        let shot = self
            .call(
                "Page.captureScreenshot",
                json!({ "format": "png", "captureBeyondViewport": true }),
            )
            .await;
        let png = base64::engine::general_purpose::STANDARD
            .decode(shot["data"].as_str().unwrap())
            .unwrap();
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(path, png).unwrap();
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
