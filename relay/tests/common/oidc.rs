//! A real OpenID Connect provider for tests of keys by URL: panva's certified
//! `oidc-provider` (npm), run by Node from `relay/tests/oidc-provider/provider.mjs` over
//! HTTPS on 127.0.0.1 with a test CA made here. Tokens come from a real `client_credentials`
//! grant; the provider's signing keys live in its state folder, so [`OidcProvider::restart`]
//! serves the same keys on the same port. Rotation, bad key sets, `Cache-Control` and a
//! wrong issuer are switched at run time through line commands on the child's stdin; each
//! command's JSON reply comes back on its stdout (`REPLY {json}`).
//!
//! Browser sign-in (authorization code with PKCE) uses [`ProviderOptions::account`] (who may
//! sign in, with the claims their access tokens carry), [`ProviderOptions::resource`] (a
//! resource indicator whose tokens are JWTs for that audience) and
//! [`OidcProvider::add_public_client`] (the page's client and redirect URI); a browser
//! trusts the provider's certificate through [`OidcProvider::leaf_spki_sha256`].
//!
//! Without `node` or without the provider's `node_modules`, [`OidcProvider::start`] skips the
//! test (`common::skip`) and returns `None`: `./test` installs both.
//!
//! The provider counts requests to its key set and to discovery; the harness's own
//! discovery reads carry [`HARNESS_HEADER`] and are not counted, so the counts are the
//! relay's (and the test's) alone.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::Arc;

use serde_json::{Value, json};
use tokio::sync::{Mutex, mpsc};

use super::STEP;
use super::skip::skip;

/// Requests carrying this header are the harness's own and are not counted by the provider.
pub const HARNESS_HEADER: &str = "x-rhr-test-harness";

/// The folder with `provider.mjs`, `package.json` and (after `npm ci`) `node_modules`.
pub fn provider_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/oidc-provider")
}

/// The algorithm the provider signs tokens with (all of which the relay accepts).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OidcAlg {
    /// ECDSA P-256 with SHA-256 (the default).
    Es256,
    /// RSA PKCS#1 v1.5 with SHA-256, 2048-bit keys.
    Rs256,
    /// Ed25519.
    EdDsa,
}

impl OidcAlg {
    fn as_str(self) -> &'static str {
        match self {
            OidcAlg::Es256 => "ES256",
            OidcAlg::Rs256 => "RS256",
            OidcAlg::EdDsa => "EdDSA",
        }
    }
}

/// A confidential client of the provider, and the extra claims its access tokens carry.
#[derive(Clone, Debug)]
pub struct OidcClient {
    pub id: String,
    pub secret: String,
    /// Merged into every access token granted to this client (`roles`, `groups`, `tid`,
    /// `name`, device claims, `licenses`...). The provider sets `iss`, `sub` (the client id),
    /// `aud`, `iat`, `exp`, `jti`, `client_id` and `scope` itself, over these.
    pub claims: Value,
}

/// How to start an [`OidcProvider`].
#[derive(Clone, Debug)]
pub struct ProviderOptions {
    /// The test's name, for its `SKIPPED` line.
    pub test: String,
    /// The access tokens' `aud`.
    pub audience: String,
    pub alg: OidcAlg,
    /// Access tokens' lifetime in seconds.
    pub access_token_ttl: u64,
    pub clients: Vec<OidcClient>,
    /// People who may sign in from a browser (any password), with the claims merged into
    /// their access tokens.
    pub accounts: Vec<(String, Value)>,
    /// Resource indicators whose access tokens are JWTs with the indicator as `aud`.
    pub resources: Vec<String>,
}

impl ProviderOptions {
    /// No clients yet, ES256, the relay's default audience, tokens valid for an hour.
    pub fn new(test: &str) -> ProviderOptions {
        ProviderOptions {
            test: test.into(),
            audience: remote_help_relay::config::DEFAULT_AUDIENCE.into(),
            alg: OidcAlg::Es256,
            access_token_ttl: 3600,
            clients: Vec::new(),
            accounts: Vec::new(),
            resources: Vec::new(),
        }
    }

    /// Adds an account `id` that signs in at the provider's login form (with any password);
    /// its access tokens carry `claims` (a JSON object) and `sub` = `id`.
    pub fn account(mut self, id: &str, claims: Value) -> ProviderOptions {
        assert!(claims.is_object(), "an account's claims are a JSON object");
        self.accounts.push((id.into(), claims));
        self
    }

    /// Adds a resource indicator (an absolute URI) whose access tokens have it as `aud`.
    pub fn resource(mut self, indicator: &str) -> ProviderOptions {
        self.resources.push(indicator.into());
        self
    }

    /// Adds a client `id` (with a random secret) whose tokens carry `claims` (a JSON object).
    pub fn client(mut self, id: &str, claims: Value) -> ProviderOptions {
        assert!(claims.is_object(), "a client's claims are a JSON object");
        self.clients.push(OidcClient {
            id: id.into(),
            secret: format!("{:032x}", rand::random::<u128>()),
            claims,
        });
        self
    }

    pub fn audience(mut self, audience: &str) -> ProviderOptions {
        self.audience = audience.into();
        self
    }

    pub fn alg(mut self, alg: OidcAlg) -> ProviderOptions {
        self.alg = alg;
        self
    }
}

/// A broken key set the provider's `jwks_uri` can serve instead of its real one. The broken
/// keys reuse the signing key's `kid`, so a relay that accepted them would lose the good key.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BadJwks {
    /// `{"keys": [ this is not JSON`, as `application/json`.
    NotJson,
    /// One RSA key of 1024 bits (too short to trust).
    Rsa1024,
    /// One HMAC (`oct`) key: a shared secret, never a tenant's public key.
    Oct,
    /// `{"keys": []}`.
    Empty,
    /// HTTP 500.
    ServerError,
    /// A well-formed JSON object of 1 MiB (more than a relay reads by default).
    Oversized,
}

impl BadJwks {
    /// Every variant, for tests that try them all.
    pub const ALL: [BadJwks; 6] = [
        BadJwks::NotJson,
        BadJwks::Rsa1024,
        BadJwks::Oct,
        BadJwks::Empty,
        BadJwks::ServerError,
        BadJwks::Oversized,
    ];

    fn mode(self) -> &'static str {
        match self {
            BadJwks::NotJson => "not-json",
            BadJwks::Rsa1024 => "rsa-1024",
            BadJwks::Oct => "oct",
            BadJwks::Empty => "empty",
            BadJwks::ServerError => "server-error",
            BadJwks::Oversized => "oversized",
        }
    }
}

/// The provider's keys: the one signing tokens now, and every published one.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProviderKeys {
    pub signing: String,
    pub published: Vec<String>,
}

/// The running provider process: commands go to its stdin, replies come from its stdout.
struct Running {
    child: Child,
    stdin: ChildStdin,
    replies: mpsc::UnboundedReceiver<String>,
}

/// A real OpenID Connect provider on 127.0.0.1 (see the module docs). The child process is
/// killed when this is dropped, so a failing test leaves nothing running.
pub struct OidcProvider {
    options: ProviderOptions,
    dir: tempfile::TempDir,
    issuer: String,
    port: u16,
    token_endpoint: String,
    leaf_spki_sha256: String,
    http: reqwest::Client,
    running: Mutex<Option<Running>>,
    /// Requests counted by provider processes that have stopped: `(jwks, discovery)`.
    counted_before: (u64, u64),
}

impl OidcProvider {
    /// Starts the provider with a fresh test CA, certificate and signing key, and waits for
    /// it to listen. Returns `None` (after `common::skip`) where Node or the provider's
    /// packages are missing.
    pub async fn start(options: ProviderOptions) -> Option<OidcProvider> {
        if !packages_present(&options.test) {
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("state")).unwrap();
        let (ca_der, leaf_spki_sha256) = write_test_pki(dir.path());
        let clients: Vec<Value> = options
            .clients
            .iter()
            .map(|c| json!({"client_id": c.id, "client_secret": c.secret, "claims": c.claims}))
            .collect();
        let config = json!({
            "audience": options.audience,
            "alg": options.alg.as_str(),
            "access_token_ttl": options.access_token_ttl,
            "clients": clients,
            "accounts": options.accounts.iter().cloned().collect::<serde_json::Map<String, Value>>(),
            "resources": options.resources,
        });
        std::fs::write(dir.path().join("config.json"), config.to_string()).unwrap();

        let Some((running, issuer)) = spawn(dir.path(), 0).await else {
            skip(&options.test, "node not installed", REMEDY);
            return None;
        };
        let port = issuer
            .rsplit_once(':')
            .and_then(|(_, p)| p.parse().ok())
            .unwrap_or_else(|| panic!("no port in the provider's issuer {issuer}"));
        let mut provider = OidcProvider {
            options,
            issuer,
            port,
            token_endpoint: String::new(),
            leaf_spki_sha256,
            http: https_client(ca_der),
            running: Mutex::new(Some(running)),
            counted_before: (0, 0),
            dir,
        };
        // Found as a relay finds it, through discovery (not counted: the harness's own read).
        let discovery = provider.discovery().await;
        provider.token_endpoint = discovery["token_endpoint"]
            .as_str()
            .expect("discovery names a token endpoint")
            .to_string();
        Some(provider)
    }

    /// `https://127.0.0.1:PORT`, as in tokens' `iss` and the discovery document.
    pub fn issuer(&self) -> &str {
        &self.issuer
    }

    /// `{issuer}/.well-known/openid-configuration`.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// The key set's URL, as discovery names it (`{issuer}/jwks`).
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    /// The test CA's certificate (PEM): what the relay's tenant gets as its `ca_file`.
    pub fn ca_pem_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// The SHA-256 of the provider's certificate's public key (SubjectPublicKeyInfo), in
    /// base64: what Chromium's `--ignore-certificate-errors-spki-list` takes to trust this one
    /// certificate and no other.
    pub fn leaf_spki_sha256(&self) -> &str {
        &self.leaf_spki_sha256
    }

    /// Registers a public client `client_id` (no secret; authorization code with PKCE S256
    /// required) whose one redirect URI is `redirect_uri`; pages at that URI's origin may
    /// call the token endpoint (CORS).
    pub async fn add_public_client(&self, client_id: &str, redirect_uri: &str) {
        self.command(
            json!({"cmd": "add_public_client", "client_id": client_id, "redirect_uri": redirect_uri}),
        )
        .await;
    }

    /// The provider's stderr so far (also across restarts), for failure messages.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("provider.log")).unwrap_or_default()
    }

    pub fn options(&self) -> &ProviderOptions {
        &self.options
    }

    /// An HTTPS client that trusts the test CA (no proxy, no pooled connections: every
    /// request opens its own, so a stopped provider fails it at once).
    pub fn http(&self) -> &reqwest::Client {
        &self.http
    }

    /// The discovery document, read by the harness (not counted).
    pub async fn discovery(&self) -> Value {
        let response = self
            .send(
                self.http
                    .get(self.discovery_url())
                    .header(HARNESS_HEADER, "1"),
            )
            .await;
        assert_eq!(response.0, 200, "discovery: {}", response.1);
        serde_json::from_str(&response.1).expect("discovery is JSON")
    }

    /// An access token for `client_id` from a real `client_credentials` grant at the token
    /// endpoint, authenticated with `client_secret_basic`.
    pub async fn token(&self, client_id: &str) -> String {
        let client = self
            .options
            .clients
            .iter()
            .find(|c| c.id == client_id)
            .unwrap_or_else(|| panic!("no client {client_id} in the provider's options"));
        let (status, body) = self
            .send(
                self.http
                    .post(&self.token_endpoint)
                    .basic_auth(&client.id, Some(&client.secret))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body("grant_type=client_credentials"),
            )
            .await;
        assert_eq!(status, 200, "token grant for {client_id}: {body}");
        let body: Value = serde_json::from_str(&body).expect("the token response is JSON");
        body["access_token"]
            .as_str()
            .expect("the token response has an access_token")
            .to_string()
    }

    /// Adds a new signing key: tokens are signed with it from now on, and the old keys stay
    /// published (the overlap of a rotation). Returns its `kid`. No restart.
    pub async fn add_signing_key(&self) -> String {
        let reply = self.command(json!({"cmd": "add_key"})).await;
        let kid = reply["kid"].as_str().expect("add_key answers a kid");
        assert_eq!(
            self.keys().await.signing,
            kid,
            "the new key signs from now on"
        );
        kid.to_string()
    }

    /// Stops publishing key `kid` (not the signing key: add its successor first).
    pub async fn retire_key(&self, kid: &str) {
        self.command(json!({"cmd": "retire_key", "kid": kid})).await;
    }

    /// The signing key's `kid` and every published `kid`.
    pub async fn keys(&self) -> ProviderKeys {
        let reply = self.command(json!({"cmd": "keys"})).await;
        ProviderKeys {
            signing: reply["signing"].as_str().unwrap().to_string(),
            published: reply["published"]
                .as_array()
                .unwrap()
                .iter()
                .map(|k| k.as_str().unwrap().to_string())
                .collect(),
        }
    }

    /// The `jwks_uri` serves `kind` instead of the real key set.
    pub async fn serve_bad_jwks(&self, kind: BadJwks) {
        self.command(json!({"cmd": "jwks", "mode": kind.mode()}))
            .await;
    }

    /// The `jwks_uri` serves the provider's real key set again.
    pub async fn serve_good_jwks(&self) {
        self.command(json!({"cmd": "jwks", "mode": "good"})).await;
    }

    /// The key set is served with `Cache-Control: max-age=SECS`.
    pub async fn set_jwks_max_age(&self, secs: u64) {
        self.command(json!({"cmd": "max_age", "secs": secs})).await;
    }

    /// The key set is served with the provider's own caching headers again.
    pub async fn clear_jwks_max_age(&self) {
        self.command(json!({"cmd": "max_age", "secs": null})).await;
    }

    /// With `on`, discovery names an issuer other than the one serving it
    /// (`{issuer}/not-this-one`); tokens keep the real `iss`.
    pub async fn serve_wrong_issuer(&self, on: bool) {
        self.command(json!({"cmd": "wrong_issuer", "on": on})).await;
    }

    /// Requests to the key set (`jwks_uri`) over the provider's whole life, restarts included.
    pub async fn jwks_requests(&self) -> u64 {
        self.counts().await.0
    }

    /// Requests to discovery over the provider's whole life (the harness's own not counted).
    pub async fn discovery_requests(&self) -> u64 {
        self.counts().await.1
    }

    async fn counts(&self) -> (u64, u64) {
        let reply = self.command(json!({"cmd": "counts"})).await;
        (
            self.counted_before.0 + reply["jwks"].as_u64().unwrap(),
            self.counted_before.1 + reply["discovery"].as_u64().unwrap(),
        )
    }

    /// Takes the provider down: it stops listening, closes every connection and exits, so
    /// requests to it fail to connect. Its state (keys, served modes) stays for
    /// [`OidcProvider::restart`].
    pub async fn stop(&mut self) {
        let reply = self.command(json!({"cmd": "stop"})).await;
        self.counted_before.0 += reply["jwks"].as_u64().unwrap();
        self.counted_before.1 += reply["discovery"].as_u64().unwrap();
        let Running {
            mut child,
            mut replies,
            ..
        } = self.running.get_mut().take().unwrap();
        // Its stdout closes when it exits.
        let closed = tokio::time::timeout(STEP, replies.recv()).await;
        assert!(
            matches!(closed, Ok(None)),
            "the provider did not exit after stop: {}",
            self.log()
        );
        let status = tokio::task::spawn_blocking(move || child.wait())
            .await
            .unwrap()
            .unwrap();
        assert!(status.success(), "the provider exited with {status}");
    }

    /// Starts the provider again on the same port with the same state: the same keys, the
    /// same served modes.
    pub async fn restart(&mut self) {
        assert!(
            self.running.get_mut().is_none(),
            "restart follows stop: the provider is running"
        );
        let (running, issuer) = spawn(self.dir.path(), self.port)
            .await
            .expect("node ran before");
        assert_eq!(issuer, self.issuer, "restarted on the same port");
        *self.running.get_mut() = Some(running);
    }

    /// Sends one command and returns its reply; panics (with the provider's log) on an
    /// error reply, a dead provider or a timeout.
    async fn command(&self, command: Value) -> Value {
        let mut running = self.running.lock().await;
        let running = running
            .as_mut()
            .unwrap_or_else(|| panic!("the provider is stopped; command {command}"));
        // A short line into a pipe the provider reads: does not block in practice.
        writeln!(running.stdin, "{command}")
            .and_then(|()| running.stdin.flush())
            .unwrap_or_else(|e| panic!("command {command}: {e}; log:\n{}", self.log()));
        let line = match tokio::time::timeout(STEP, running.replies.recv()).await {
            Ok(Some(line)) => line,
            Ok(None) => panic!("the provider exited on {command}; log:\n{}", self.log()),
            Err(_) => panic!("no reply to {command} in time; log:\n{}", self.log()),
        };
        let reply: Value = serde_json::from_str(line.strip_prefix("REPLY ").unwrap_or(&line))
            .unwrap_or_else(|e| panic!("reply {line:?} to {command}: {e}"));
        assert_eq!(
            reply["ok"], true,
            "command {command} failed: {}",
            reply["error"]
        );
        reply
    }

    /// Sends a request; returns the status and the body.
    async fn send(&self, request: reqwest::RequestBuilder) -> (u16, String) {
        let response = tokio::time::timeout(STEP, request.send())
            .await
            .expect("request in time")
            .unwrap_or_else(|e| panic!("request to the provider: {e}; log:\n{}", self.log()));
        let status = response.status().as_u16();
        let body = tokio::time::timeout(STEP, response.text())
            .await
            .expect("body in time")
            .unwrap();
        (status, body)
    }
}

impl Drop for OidcProvider {
    fn drop(&mut self) {
        if let Some(running) = self.running.get_mut()
            && let Ok(None) = running.child.try_wait()
        {
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }
}

/// How a skipped test's line says to get what it lacks.
const REMEDY: &str = "run ./test, which installs nodejs, npm and the provider";

/// Whether the provider's packages are installed; if not, skips `test`. (Whether `node`
/// is installed, spawning it tells.)
fn packages_present(test: &str) -> bool {
    let package = provider_dir().join("node_modules/oidc-provider/package.json");
    if !package.exists() {
        skip(
            test,
            &format!("{} missing", package.display()),
            &format!("{REMEDY}, or: npm ci --prefix {}", provider_dir().display()),
        );
        return false;
    }
    true
}

/// Writes a test CA (`ca.pem`) and a certificate for IP 127.0.0.1 signed by it (`cert.pem`,
/// `key.pem`) into `dir`; returns the CA certificate (DER) and the base64 SHA-256 of the
/// certificate's public key (SubjectPublicKeyInfo).
pub fn write_test_pki(dir: &Path) -> (Vec<u8>, String) {
    use rcgen::{
        BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer,
        KeyPair, KeyUsagePurpose,
    };
    let ca_key = KeyPair::generate().unwrap();
    let mut ca = CertificateParams::new(Vec::new()).unwrap();
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    ca.distinguished_name
        .push(DnType::CommonName, "remote-help-relay test CA");
    let ca_cert = ca.self_signed(&ca_key).unwrap();
    let issuer = Issuer::new(ca, ca_key);

    let leaf_key = KeyPair::generate().unwrap();
    let mut leaf = CertificateParams::new(vec!["127.0.0.1".to_string()]).unwrap();
    leaf.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    leaf.distinguished_name
        .push(DnType::CommonName, "127.0.0.1");
    let leaf_cert = leaf.signed_by(&leaf_key, &issuer).unwrap();

    std::fs::write(dir.join("ca.pem"), ca_cert.pem()).unwrap();
    std::fs::write(dir.join("cert.pem"), leaf_cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), leaf_key.serialize_pem()).unwrap();
    // A `PUBLIC KEY` PEM is the SubjectPublicKeyInfo in base64.
    use base64::Engine as _;
    let base64 = base64::engine::general_purpose::STANDARD;
    let pem: String = leaf_key
        .public_key_pem()
        .lines()
        .filter(|line| !line.starts_with("-----"))
        .collect();
    let spki_der = base64.decode(pem).unwrap();
    let spki = base64.encode(ring::digest::digest(&ring::digest::SHA256, &spki_der));
    (ca_cert.der().to_vec(), spki)
}

/// An HTTPS client that trusts only the test CA, with rustls on ring (the relay's provider).
pub fn https_client(ca_der: Vec<u8>) -> reqwest::Client {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(ca_der.into()).unwrap();
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .no_proxy()
        .pool_max_idle_per_host(0)
        .timeout(STEP)
        .build()
        .unwrap()
}

/// Spawns `provider.mjs` on `port` (0: ephemeral) over the files in `dir`; returns it once
/// it has printed its `READY` line, with its issuer. `None` when there is no `node`.
async fn spawn(dir: &Path, port: u16) -> Option<(Running, String)> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("provider.log"))
        .unwrap();
    let child = Command::new("node")
        .arg(provider_dir().join("provider.mjs"))
        .arg("--config")
        .arg(dir.join("config.json"))
        .arg("--state")
        .arg(dir.join("state"))
        .arg("--cert")
        .arg(dir.join("cert.pem"))
        .arg("--key")
        .arg(dir.join("key.pem"))
        .args(["--port", &port.to_string()])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(log)
        .spawn();
    let mut child = match child {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return None,
        spawned => spawned.expect("spawn node"),
    };
    let stdin = child.stdin.take().unwrap();
    let stdout = child.stdout.take().unwrap();
    // A thread turns the provider's stdout into lines for async readers; the channel closes
    // when the provider exits.
    // Only the protocol's lines (`READY`, `REPLY`) pass: anything else a library might print
    // cannot be taken for a reply.
    let (tx, replies) = mpsc::unbounded_channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if !(line.starts_with("READY ") || line.starts_with("REPLY ")) {
                continue;
            }
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    // Owned from here: if the start fails, the child is killed.
    let mut running = KillOnDrop(Some(Running {
        child,
        stdin,
        replies,
    }));
    let log = || std::fs::read_to_string(dir.join("provider.log")).unwrap_or_default();
    let replies = &mut running.0.as_mut().unwrap().replies;
    let line = match tokio::time::timeout(STEP, replies.recv()).await {
        Ok(Some(line)) => line,
        Ok(None) => panic!("the provider exited before it was ready; log:\n{}", log()),
        Err(_) => panic!("the provider was not ready in time; log:\n{}", log()),
    };
    let issuer = line
        .strip_prefix("READY ")
        .unwrap_or_else(|| panic!("expected READY, got {line:?}; log:\n{}", log()))
        .to_string();
    Some((running.0.take().unwrap(), issuer))
}

/// Kills a provider that failed to start before anyone owns it.
struct KillOnDrop(Option<Running>);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Some(running) = &mut self.0 {
            let _ = running.child.kill();
            let _ = running.child.wait();
        }
    }
}
