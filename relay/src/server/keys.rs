//! Fetching tenants' keys from their identity providers while the relay runs.
//!
//! One task per tenant configured by URL ([`KeySource::Provider`]): at start it puts the
//! cached set (`<state_dir>/tenant-keys/`) in force, then fetches (discovery, then the key
//! set), and fetches again when the provider's `max-age` (within `[key_fetch]`'s bounds)
//! runs out, after a failure when `retry_secs` has passed, and when a token names a `kid`
//! the relay does not have, at most once per `unknown_kid_interval_secs`
//! ([`RefetchGate`]). A set with any problem is refused whole; the keys in force stay.
//! Each accepted set is written to the cache (temporary file, fsync, rename) before the
//! next fetch. The decisions are in [`crate::tenant_keys`]; this is the I/O.
//!
//! The sets are [`KeySet`]s shared with every policy snapshot, so a `SIGHUP` that leaves a
//! tenant's source and `[key_fetch]` as they were keeps its task and keys.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime};

use tokio::sync::{Notify, watch};
use tokio_util::sync::CancellationToken;
use tracing::{info, warn};

use crate::auth::{Audience, AuthError, KeySet, Principal, Verifier};
use crate::config::Config;
use crate::core::TenantId;
use crate::tenant_keys::{
    CACHE_DIR, CachedKeySet, FetchProblem, FetchSettings, FetchedKeys, KeySource, ProviderKeys,
    RefetchDecision, RefetchGate, cache_file_name, check_https, jwks_uri_of_discovery,
    keys_of_fetched_set, max_age, refresh_after,
};

/// The fetch tasks of every tenant configured by URL, by tenant.
#[derive(Debug)]
pub struct TenantKeyFetchers {
    state_dir: PathBuf,
    fetchers: Mutex<HashMap<TenantId, Arc<Fetcher>>>,
    /// Held while a cache file is written and while `adopt` cancels replaced fetchers, so
    /// a replaced fetcher never writes after it was cancelled.
    cache_turn: Arc<Mutex<()>>,
}

/// One tenant's fetching: its source, its keys, and how its task is woken and watched.
#[derive(Debug)]
struct Fetcher {
    tenant: TenantId,
    source: ProviderKeys,
    settings: FetchSettings,
    keys: KeySet,
    gate: Mutex<RefetchGate>,
    wake: Arc<Notify>,
    /// Counts finished fetches, so that a token waiting for one sees it end.
    finished: watch::Sender<u64>,
    stop: CancellationToken,
    /// [`TenantKeyFetchers::cache_turn`].
    cache_turn: Arc<Mutex<()>>,
}

impl Drop for Fetcher {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

/// What made a fetch happen (the `trigger` label).
#[derive(Debug, Clone, Copy)]
enum Trigger {
    Start,
    Schedule,
    Retry,
    UnknownKid,
}

impl Trigger {
    fn label(self) -> &'static str {
        match self {
            Trigger::Start => "start",
            Trigger::Schedule => "schedule",
            Trigger::Retry => "retry",
            Trigger::UnknownKid => "unknown_kid",
        }
    }
}

/// An accepted fetch, with what the cache and the schedule need.
#[derive(Debug)]
pub struct Fetched {
    /// The keys.
    pub keys: FetchedKeys,
    /// Where the key set came from.
    pub jwks_uri: String,
    /// The key set as served.
    pub body: Vec<u8>,
    /// The provider's `Cache-Control: max-age`.
    pub max_age: Option<Duration>,
}

impl TenantKeyFetchers {
    /// No fetchers yet; the cache lives under `state_dir`.
    pub fn new(state_dir: PathBuf) -> TenantKeyFetchers {
        TenantKeyFetchers {
            state_dir,
            fetchers: Mutex::new(HashMap::new()),
            cache_turn: Arc::new(Mutex::new(())),
        }
    }

    fn lock(&self) -> MutexGuard<'_, HashMap<TenantId, Arc<Fetcher>>> {
        self.fetchers
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Makes the fetchers match `config`: a tenant whose source and settings are unchanged
    /// keeps its task and keys; a new or changed one starts from its cache and fetches; one
    /// no longer configured by URL stops. Must run inside the Tokio runtime when `config`
    /// has tenants configured by URL.
    pub fn adopt(&self, config: &Config) {
        let mut fetchers = self.lock();
        let mut wanted = HashMap::new();
        for tenant in &config.tenants {
            let KeySource::Provider(source) = &tenant.keys_from else {
                continue;
            };
            let id = tenant.trust.id.clone();
            let kept = fetchers
                .get(&id)
                .filter(|f| f.source == *source && f.settings == config.key_fetch)
                .cloned();
            let fetcher = kept.unwrap_or_else(|| {
                self.start(id.clone(), source.clone(), config.key_fetch.clone())
            });
            wanted.insert(id, fetcher);
        }
        // A fetcher no longer wanted is cancelled now, not when its last handle goes: its
        // task may hold one through a fetch under way, and must not put that fetch's keys
        // in the cache that the tenant's new fetcher owns.
        let _turn = self
            .cache_turn
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        for (id, old) in fetchers.iter() {
            if !wanted.get(id).is_some_and(|new| Arc::ptr_eq(new, old)) {
                old.stop.cancel();
            }
        }
        *fetchers = wanted;
    }

    /// A count of the tenant's finished fetches (successful or not), to wait on: after two
    /// changes, a fetch that started after the first has finished.
    pub fn fetches(&self, tenant: &TenantId) -> Option<watch::Receiver<u64>> {
        self.lock().get(tenant).map(|f| f.finished.subscribe())
    }

    /// The shared key set of a tenant configured by URL.
    pub fn keys_of(&self, tenant: &TenantId) -> Option<KeySet> {
        self.lock().get(tenant).map(|f| f.keys.clone())
    }

    fn start(
        &self,
        tenant: TenantId,
        source: ProviderKeys,
        settings: FetchSettings,
    ) -> Arc<Fetcher> {
        let keys = KeySet::empty();
        let cache = self
            .state_dir
            .join(CACHE_DIR)
            .join(cache_file_name(&tenant));
        match read_cache(&cache, &source) {
            Ok(Some((cached, fetched))) => {
                info!(tenant = %tenant, kids = ?fetched.kids, fetched_at = cached.fetched_at,
                    "tenant keys from the cache in force until the provider answers");
                set_in_force(&tenant, &fetched);
                metrics::gauge!("relay_tenant_keys_last_success_timestamp_seconds", "tenant" => tenant.to_string())
                    .set(cached.fetched_at as f64);
                keys.replace(fetched.keys);
            }
            Ok(None) => {
                metrics::gauge!("relay_tenant_keys_in_force", "tenant" => tenant.to_string())
                    .set(0.0);
            }
            Err(reason) => {
                warn!(tenant = %tenant, file = %cache.display(), %reason, "cached tenant keys not used");
                metrics::gauge!("relay_tenant_keys_in_force", "tenant" => tenant.to_string())
                    .set(0.0);
            }
        }
        let fetcher = Arc::new(Fetcher {
            gate: Mutex::new(RefetchGate::new(settings.unknown_kid_interval)),
            tenant,
            source,
            settings,
            keys,
            wake: Arc::new(Notify::new()),
            finished: watch::Sender::new(0),
            stop: CancellationToken::new(),
            cache_turn: Arc::clone(&self.cache_turn),
        });
        tokio::spawn(run(Arc::downgrade(&fetcher), fetcher.stop.clone(), cache));
        fetcher
    }

    /// Verifies `token`; when it names a key its tenant's provider may have published since
    /// the last fetch (or the tenant has no keys yet), asks for a fetch, as the
    /// [`RefetchGate`] allows, waits for it and verifies again.
    pub async fn verify(
        &self,
        verifier: &Verifier,
        token: &str,
        now_unix: impl Fn() -> u64,
        audience: Audience,
    ) -> Result<Principal, AuthError> {
        match verifier.verify_for(token, now_unix(), audience) {
            Err(first @ (AuthError::UnknownKey(_) | AuthError::KeysUnavailable)) => {
                let Some(tenant) = verifier.tenant_named_by(token) else {
                    return Err(first);
                };
                if self.fetch_for_unknown_key(&tenant).await {
                    verifier.verify_for(token, now_unix(), audience)
                } else {
                    Err(first)
                }
            }
            other => other,
        }
    }

    /// A token of `tenant` named a key the relay does not have: fetch if allowed, and wait
    /// for that fetch (or the one under way). True when a fetch finished meanwhile.
    async fn fetch_for_unknown_key(&self, tenant: &TenantId) -> bool {
        let Some(fetcher) = self.lock().get(tenant).cloned() else {
            return false;
        };
        // The decision and the count of finished fetches are read under the gate's lock,
        // which the task holds while it marks a fetch finished and counts it: so the fetch
        // this token starts or joins is exactly the next one counted, never one that ended
        // just before the decision.
        let mut finished = fetcher.finished.subscribe();
        let (decision, awaited) = {
            let mut gate = fetcher.gate();
            (gate.unknown_kid(Instant::now()), *finished.borrow() + 1)
        };
        let label = match decision {
            RefetchDecision::Fetch => "fetch",
            RefetchDecision::JoinInFlight => "joined",
            RefetchDecision::Throttled => "throttled",
        };
        metrics::counter!("relay_tenant_keys_unknown_kid_total", "tenant" => tenant.to_string(), "decision" => label)
            .increment(1);
        match decision {
            RefetchDecision::Throttled => return false,
            RefetchDecision::Fetch => fetcher.wake.notify_one(),
            RefetchDecision::JoinInFlight => {}
        }
        // Discovery and the key set: two requests, each within the timeout.
        let longest = fetcher.settings.timeout * 2 + Duration::from_secs(1);
        matches!(
            tokio::time::timeout(longest, finished.wait_for(|count| *count >= awaited)).await,
            Ok(Ok(_))
        )
    }
}

impl Fetcher {
    fn gate(&self) -> MutexGuard<'_, RefetchGate> {
        self.gate
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// One tenant's task: fetch, put in force, cache, wait for the next reason to fetch. Holds
/// the fetcher weakly, so that it ends when the fetcher is dropped (tenant removed or
/// changed by a reload, or the relay stopping).
async fn run(fetcher: std::sync::Weak<Fetcher>, stop: CancellationToken, cache: PathBuf) {
    let client = {
        let Some(f) = fetcher.upgrade() else { return };
        http_client(&f.source, &f.settings)
    };
    let mut trigger = Trigger::Start;
    let mut cached_body: Option<Vec<u8>> = None;
    loop {
        let Some(f) = fetcher.upgrade() else { return };
        f.gate().started();
        let outcome = match &client {
            Ok(client) => fetch_keys(client, &f.source, &f.settings).await,
            Err(problem) => Err(problem.clone()),
        };
        let tenant = f.tenant.to_string();
        let failed = outcome.is_err();
        let next = match outcome {
            Ok(fetched) => {
                metrics::counter!("relay_tenant_keys_fetches_total", "tenant" => tenant.clone(), "trigger" => trigger.label(), "result" => "ok")
                    .increment(1);
                metrics::gauge!("relay_tenant_keys_last_success_timestamp_seconds", "tenant" => tenant.clone())
                    .set(unix_now() as f64);
                let changed =
                    f.keys.current().is_none() || cached_body.as_deref() != Some(&fetched.body);
                if changed {
                    info!(tenant = %f.tenant, kids = ?fetched.keys.kids, skipped = ?fetched.keys.skipped,
                        jwks_uri = %fetched.jwks_uri, "tenant keys in force");
                }
                set_in_force(&f.tenant, &fetched.keys);
                f.keys.replace(fetched.keys.keys.clone());
                if changed {
                    let entry = CachedKeySet {
                        issuer: f.source.issuer.clone(),
                        jwks_uri: fetched.jwks_uri.clone(),
                        ca_file: f.source.ca_file.clone(),
                        fetched_at: unix_now(),
                        jwks: serde_json::from_slice(&fetched.body).unwrap_or_default(),
                    };
                    let path = cache.clone();
                    // Checked under the lock `adopt` cancels under: a fetcher replaced
                    // by a reload while this fetch ran leaves the cache to its successor.
                    let written = tokio::task::spawn_blocking({
                        let stop = stop.clone();
                        let turn = Arc::clone(&f.cache_turn);
                        move || {
                            let _turn = turn.lock().unwrap_or_else(|p| p.into_inner());
                            if stop.is_cancelled() {
                                return Ok(());
                            }
                            write_cache(&path, &entry)
                        }
                    })
                    .await;
                    match written {
                        Ok(Ok(())) => cached_body = Some(fetched.body.clone()),
                        Ok(Err(e)) => {
                            metrics::counter!("relay_tenant_keys_cache_write_failures_total", "tenant" => tenant.clone())
                                .increment(1);
                            warn!(tenant = %f.tenant, file = %cache.display(), error = %e,
                                "cannot cache the tenant's keys; a restart while its provider is down would have none");
                        }
                        Err(_) => {}
                    }
                }
                refresh_after(fetched.max_age, &f.settings)
            }
            Err(problem) => {
                metrics::counter!("relay_tenant_keys_fetches_total", "tenant" => tenant.clone(), "trigger" => trigger.label(), "result" => "failed")
                    .increment(1);
                metrics::counter!("relay_tenant_keys_fetch_failures_total", "tenant" => tenant.clone(), "reason" => problem.reason())
                    .increment(1);
                warn!(tenant = %f.tenant, reason = problem.reason(), error = %problem,
                    in_force = f.keys.current().map_or(0, |k| k.len()),
                    "fetching the tenant's keys failed; the keys in force stay");
                f.settings.retry
            }
        };
        {
            let mut gate = f.gate();
            gate.finished();
            f.finished.send_modify(|count| *count += 1);
        }
        // `notify_one` leaves a permit when nobody waits, so a token that asked while this
        // fetch ran is not lost.
        let wake = Arc::clone(&f.wake);
        drop(f);
        let woken = wake.notified();
        tokio::select! {
            () = stop.cancelled() => return,
            () = tokio::time::sleep(next) => {
                trigger = if failed { Trigger::Retry } else { Trigger::Schedule };
            }
            () = woken => trigger = Trigger::UnknownKid,
        }
    }
}

fn set_in_force(tenant: &TenantId, fetched: &FetchedKeys) {
    metrics::gauge!("relay_tenant_keys_in_force", "tenant" => tenant.to_string())
        .set(fetched.keys.len() as f64);
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// The HTTPS client for one provider: its CA file's roots besides the system's, the
/// timeout on every request, HTTPS only, no redirects (a key set is where the provider
/// says it is, not where an answer points).
pub fn http_client(
    source: &ProviderKeys,
    settings: &FetchSettings,
) -> Result<reqwest::Client, FetchProblem> {
    let url = source
        .jwks_uri
        .clone()
        .unwrap_or_else(|| source.discovery_url());
    let extra = match &source.ca_file {
        Some(path) => {
            crate::tls::read_ca_certificates(path).map_err(|detail| FetchProblem::Tls {
                url: url.clone(),
                detail,
            })?
        }
        None => Vec::new(),
    };
    let tls = crate::tls::https_client_config(extra).map_err(|e| FetchProblem::Tls {
        url: url.clone(),
        detail: e.to_string(),
    })?;
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .https_only(true)
        .redirect(reqwest::redirect::Policy::none())
        .timeout(settings.timeout)
        .connect_timeout(settings.timeout)
        .user_agent(concat!("remote-help-relay/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| FetchProblem::Other {
            url,
            detail: e.to_string(),
        })
}

/// One fetch: discovery (unless the tenant names its `jwks_uri`), then the key set.
pub async fn fetch_keys(
    client: &reqwest::Client,
    source: &ProviderKeys,
    settings: &FetchSettings,
) -> Result<Fetched, FetchProblem> {
    let jwks_uri = match &source.jwks_uri {
        Some(uri) => uri.clone(),
        None => {
            let url = source.discovery_url();
            check_https(&url)?;
            let (body, _) = get(client, &url, settings).await?;
            jwks_uri_of_discovery(&body, &url, &source.issuer)?
        }
    };
    check_https(&jwks_uri)?;
    let (body, cache_control) = get(client, &jwks_uri, settings).await?;
    let keys = keys_of_fetched_set(&body, &jwks_uri)?;
    Ok(Fetched {
        keys,
        max_age: max_age(cache_control.as_deref()),
        jwks_uri,
        body,
    })
}

/// GETs `url`: 200 only, the body at most `max_response_bytes` (counted as it arrives, not
/// trusted from `Content-Length`); returns it with the `Cache-Control` header.
async fn get(
    client: &reqwest::Client,
    url: &str,
    settings: &FetchSettings,
) -> Result<(Vec<u8>, Option<String>), FetchProblem> {
    let classify = |e: reqwest::Error| classify(url, &e, settings);
    let mut response = client
        .get(url)
        .header(reqwest::header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(classify)?;
    if response.status() != reqwest::StatusCode::OK {
        return Err(FetchProblem::HttpStatus {
            url: url.to_string(),
            status: response.status().as_u16(),
        });
    }
    let limit = settings.max_response_bytes;
    let too_large = || FetchProblem::TooLarge {
        url: url.to_string(),
        limit,
    };
    if response.content_length().is_some_and(|n| n > limit as u64) {
        return Err(too_large());
    }
    let cache_control = response
        .headers()
        .get(reqwest::header::CACHE_CONTROL)
        .and_then(|v| v.to_str().ok())
        .map(str::to_string);
    let mut body = Vec::new();
    while let Some(chunk) = response.chunk().await.map_err(classify)? {
        if body.len() + chunk.len() > limit {
            return Err(too_large());
        }
        body.extend_from_slice(&chunk);
    }
    Ok((body, cache_control))
}

/// Names a failed exchange by what failed: the timeout, TLS (found in the error's
/// sources), the connection, or something else.
fn classify(url: &str, error: &reqwest::Error, settings: &FetchSettings) -> FetchProblem {
    let url = url.to_string();
    if error.is_timeout() {
        return FetchProblem::Timeout {
            url,
            seconds: settings.timeout.as_secs().max(1),
        };
    }
    let mut detail = error.to_string();
    let mut tls = None;
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(error);
    while let Some(e) = source {
        if !detail.contains(&e.to_string()) {
            detail = format!("{detail}: {e}");
        }
        if let Some(rustls) = e.downcast_ref::<rustls::Error>() {
            tls = Some(rustls.to_string());
        }
        // `io::Error::source` skips the error it wraps (tokio-rustls wraps rustls's error
        // in an io::Error, which hyper wraps in another): look inside each directly.
        let mut wrapped = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref());
        while let Some(inner) = wrapped {
            if let Some(rustls) = inner.downcast_ref::<rustls::Error>() {
                tls = Some(rustls.to_string());
            }
            wrapped = inner
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref());
        }
        source = e.source();
    }
    match tls {
        Some(detail) => FetchProblem::Tls { url, detail },
        None if error.is_connect() => FetchProblem::Connect { url, detail },
        None => FetchProblem::Other { url, detail },
    }
}

/// The cached set for `source`, if there is one for its issuer and it is still acceptable.
fn read_cache(
    path: &Path,
    source: &ProviderKeys,
) -> Result<Option<(CachedKeySet, FetchedKeys)>, String> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let cached: CachedKeySet = serde_json::from_slice(&bytes).map_err(|e| e.to_string())?;
    if cached.issuer != source.issuer {
        return Err(format!(
            "cached for issuer {:?}, the tenant's issuer is now {:?}",
            cached.issuer, source.issuer
        ));
    }
    if let Some(configured) = &source.jwks_uri
        && *configured != cached.jwks_uri
    {
        return Err(format!(
            "cached from {:?}, the tenant's jwks_uri is now {configured:?}",
            cached.jwks_uri
        ));
    }
    if cached.ca_file != source.ca_file {
        return Err(format!(
            "cached under ca_file {:?}, the tenant's ca_file is now {:?}",
            cached.ca_file, source.ca_file
        ));
    }
    let body = serde_json::to_vec(&cached.jwks).map_err(|e| e.to_string())?;
    let fetched = keys_of_fetched_set(&body, &cached.jwks_uri).map_err(|e| e.to_string())?;
    Ok(Some((cached, fetched)))
}

/// Writes the cache durably: a temporary file beside it, fsync, rename, fsync the folder.
fn write_cache(path: &Path, entry: &CachedKeySet) -> std::io::Result<()> {
    use std::io::Write as _;
    let dir = path.parent().unwrap_or(Path::new("."));
    std::fs::create_dir_all(dir)?;
    // Unique per write: two fetchers of one tenant (one being replaced) never share it.
    static WRITES: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let write = WRITES.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let temporary = path.with_extension(format!("tmp{}-{write}", std::process::id()));
    let result = (|| {
        let mut file = std::fs::File::create(&temporary)?;
        file.write_all(&serde_json::to_vec_pretty(entry).map_err(std::io::Error::other)?)?;
        file.sync_all()?;
        std::fs::rename(&temporary, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&temporary);
    }
    result
}

/// `relay check-config --fetch`: fetches every URL tenant's keys once; one line per tenant,
/// naming each problem. True when every fetch succeeded.
pub async fn check_all(config: &Config, out: &mut dyn std::io::Write) -> bool {
    let mut all_fine = true;
    if !config
        .tenants
        .iter()
        .any(|t| matches!(t.keys_from, KeySource::Provider(_)))
    {
        let _ = writeln!(out, "no tenant takes its keys by URL: nothing to fetch");
    }
    for (index, tenant) in config.tenants.iter().enumerate() {
        let KeySource::Provider(source) = &tenant.keys_from else {
            continue;
        };
        let result = match http_client(source, &config.key_fetch) {
            Ok(client) => fetch_keys(&client, source, &config.key_fetch).await,
            Err(problem) => Err(problem),
        };
        let line = match result {
            Ok(fetched) => format!(
                "tenants[{index}] ({}): ok: {} key(s) from {} (kids {:?}){}",
                tenant.trust.id,
                fetched.keys.keys.len(),
                fetched.jwks_uri,
                fetched.keys.kids,
                if fetched.keys.skipped.is_empty() {
                    String::new()
                } else {
                    format!("; left out: {}", fetched.keys.skipped.join("; "))
                }
            ),
            Err(problem) => {
                all_fine = false;
                format!(
                    "tenants[{index}] ({}): {}: {problem}",
                    tenant.trust.id,
                    problem.reason()
                )
            }
        };
        let _ = writeln!(out, "{line}");
    }
    all_fine
}
