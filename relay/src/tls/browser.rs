//! Certificates a browser accepts for WebTransport without a certificate authority
//! (`serverCertificateHashes`, W3C WebTransport, "custom certificate requirements"): an
//! X.509v3 certificate whose public key is ECDSA on secp256r1 (P-256), whose validity
//! period covers the current time and is no longer than two weeks. The page learns the
//! certificates' SHA-256 hashes from the relay's web surface and passes them to
//! `new WebTransport(url, { serverCertificateHashes })`.
//!
//! Only a relay that uses its self-signed development certificate (no `server.tls_cert`)
//! needs this: the long-lived certificate native clients pin is valid for years, which a
//! browser refuses. Such a relay keeps a second, short-lived certificate in the state folder
//! and serves it to WebTransport clients ([`RelayCertResolver`]: ALPN `h3` without
//! `remote-help/1`), while native clients keep getting the certificate they pin.
//!
//! Rotation is a pure decision ([`rotation`], no clock reads) that [`BrowserCertificates::refresh`]
//! applies with the `now` it is given: when the served certificate has fewer than
//! [`RENEW_BEFORE`] left, the next one is made and published beside it; when it has fewer
//! than [`SWITCH_BEFORE`] left, the next one is served. A page that fetched the hashes in the
//! two days between holds both, so it connects whichever is served when it dials.

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use tracing::{info, warn};

use super::{Fingerprint, TlsError};

/// The longest validity period browsers accept for a certificate given by hash (two weeks).
pub const MAX_VALIDITY: Duration = Duration::from_secs(14 * 24 * 3600);
/// The validity period of the certificates made here: a day short of the limit, so that a
/// browser counting the period differently (inclusive ends, leap seconds) still accepts it.
pub const VALIDITY: Duration = Duration::from_secs(13 * 24 * 3600);
/// How far before its making a certificate starts to be valid: a browser whose clock is
/// behind the relay's by less than this still accepts a fresh one.
pub const BACKDATE: Duration = Duration::from_secs(3600);
/// When the served certificate has less than this left, the next one is made and published.
pub const RENEW_BEFORE: Duration = Duration::from_secs(3 * 24 * 3600);
/// When the served certificate has less than this left, the next one is served instead. The
/// two days between [`RENEW_BEFORE`] and this are how long a page may keep hashes it fetched.
pub const SWITCH_BEFORE: Duration = Duration::from_secs(24 * 3600);
/// How often the running relay applies [`rotation`] (the thresholds are days apart).
pub const CHECK_INTERVAL: Duration = Duration::from_secs(3600);
/// The served certificate and its key, in the state folder (PEM, owner-only).
pub const CURRENT_FILE: &str = "webtransport-cert.pem";
/// The published next certificate and its key, while there is one.
pub const NEXT_FILE: &str = "webtransport-cert.next.pem";

/// When a certificate is valid.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Validity {
    /// First second it is valid.
    pub not_before: SystemTime,
    /// Last second it is valid.
    pub not_after: SystemTime,
}

impl Validity {
    /// Whether a browser would accept it at `now`: inside its period, and the period no
    /// longer than [`MAX_VALIDITY`].
    pub fn accepted_at(&self, now: SystemTime) -> bool {
        let length = self
            .not_after
            .duration_since(self.not_before)
            .unwrap_or(Duration::MAX);
        length <= MAX_VALIDITY && self.not_before <= now && now <= self.not_after
    }

    /// How long it stays valid after `now` (zero once lapsed).
    pub fn remaining(&self, now: SystemTime) -> Duration {
        self.not_after.duration_since(now).unwrap_or(Duration::ZERO)
    }

    /// The period of a certificate made at `now`.
    pub fn made_at(now: SystemTime) -> Validity {
        let not_before = now.checked_sub(BACKDATE).unwrap_or(now);
        Validity {
            not_before,
            not_after: not_before + VALIDITY,
        }
    }
}

/// What [`BrowserCertificates::refresh`] does next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotation {
    /// Nothing: the served certificate has long enough left.
    Keep,
    /// Make the next certificate and publish its hash beside the served one's.
    MakeNext,
    /// Serve the next certificate; it becomes the current one.
    Promote,
    /// Make a new certificate and serve it at once (none is usable: first start, or the
    /// relay was off while both lapsed).
    Replace,
}

/// The rotation decision for a served certificate `current` and a published `next` at
/// `now`. Applied until it says [`Rotation::Keep`]; no clock reads, so tests drive it.
pub fn rotation(now: SystemTime, current: Option<Validity>, next: Option<Validity>) -> Rotation {
    let serves = |v: &Validity| v.accepted_at(now) && v.remaining(now) >= SWITCH_BEFORE;
    match (current, next) {
        (Some(current), _) if serves(&current) => {
            let next_usable = next.is_some_and(|n| n.accepted_at(now));
            if current.remaining(now) < RENEW_BEFORE && !next_usable {
                Rotation::MakeNext
            } else {
                Rotation::Keep
            }
        }
        (_, Some(next)) if serves(&next) => Rotation::Promote,
        _ => Rotation::Replace,
    }
}

/// One certificate's hash in the form `serverCertificateHashes` takes (the page decodes
/// `value` from base64 into the `BufferSource`). Serialises as
/// `{"algorithm":"sha-256","value":"..."}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct CertificateHash {
    /// Always `sha-256`, the one algorithm the WebTransport API defines.
    pub algorithm: &'static str,
    /// The SHA-256 of the certificate's DER bytes, standard base64 with padding.
    pub value: String,
}

impl CertificateHash {
    /// The hash of a certificate with this fingerprint.
    pub fn of(fingerprint: Fingerprint) -> CertificateHash {
        CertificateHash {
            algorithm: "sha-256",
            value: base64::engine::general_purpose::STANDARD.encode(fingerprint.0),
        }
    }

    /// The hash's 32 bytes, if `value` is well-formed base64 of them.
    pub fn bytes(&self) -> Option<[u8; 32]> {
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(&self.value)
            .ok()?;
        <[u8; 32]>::try_from(bytes.as_slice()).ok()
    }
}

/// A browser certificate with its key, ready to serve.
#[derive(Debug, Clone)]
pub struct BrowserCertificate {
    /// The certificate (DER).
    pub der: CertificateDer<'static>,
    /// When it is valid.
    pub validity: Validity,
    certified: Arc<CertifiedKey>,
    key: Arc<PrivateKeyDer<'static>>,
}

impl BrowserCertificate {
    /// A fresh self-signed ECDSA P-256 certificate valid from [`BACKDATE`] before `now` for
    /// [`VALIDITY`].
    pub fn make(now: SystemTime) -> Result<BrowserCertificate, TlsError> {
        let failed = |e: rcgen::Error| TlsError::SelfSigned(e.to_string());
        let validity = Validity::made_at(now);
        let mut params = rcgen::CertificateParams::new(vec![
            "localhost".to_string(),
            "remote-help-relay".to_string(),
        ])
        .map_err(failed)?;
        params.distinguished_name.push(
            rcgen::DnType::CommonName,
            "remote-help-relay WebTransport (development)",
        );
        params.not_before = offset(validity.not_before)?;
        params.not_after = offset(validity.not_after)?;
        let key_pair =
            rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).map_err(failed)?;
        let cert = params.self_signed(&key_pair).map_err(failed)?;
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key_pair.serialize_der()));
        BrowserCertificate::new(cert.der().clone(), key)
    }

    /// A certificate and key read back (from the state folder), with its validity read from
    /// the certificate itself.
    pub fn new(
        der: CertificateDer<'static>,
        key: PrivateKeyDer<'static>,
    ) -> Result<BrowserCertificate, TlsError> {
        let validity = validity_of(&der).ok_or_else(|| {
            TlsError::SelfSigned("the browser certificate's validity cannot be read".into())
        })?;
        let signing_key = super::provider()
            .key_provider
            .load_private_key(key.clone_key())?;
        let certified = Arc::new(CertifiedKey::new(vec![der.clone()], signing_key));
        certified.keys_match()?;
        Ok(BrowserCertificate {
            der,
            validity,
            certified,
            key: Arc::new(key),
        })
    }

    /// Its SHA-256 fingerprint (what `serverCertificateHashes` names).
    pub fn fingerprint(&self) -> Fingerprint {
        Fingerprint::of(&self.der)
    }

    /// The certificate and key as one PEM text (the state folder's format).
    fn pem(&self) -> String {
        crate::issuer::pem_encode("CERTIFICATE", self.der.as_ref())
            + &crate::issuer::pem_encode("PRIVATE KEY", self.key.secret_der())
    }

    /// Reads one of the state folder's files; `None` (and a warning if it is there but
    /// unusable) when it cannot serve.
    fn load(path: &Path) -> Option<BrowserCertificate> {
        let bytes = std::fs::read(path).ok()?;
        let loaded = (|| {
            let der = CertificateDer::from_pem_slice(&bytes).map_err(|e| e.to_string())?;
            let key = PrivateKeyDer::from_pem_slice(&bytes).map_err(|e| e.to_string())?;
            BrowserCertificate::new(der, key).map_err(|e| e.to_string())
        })();
        match loaded {
            Ok(cert) => Some(cert),
            Err(reason) => {
                warn!(path = %path.display(), %reason, "unusable browser certificate file; a new one is made");
                None
            }
        }
    }
}

/// The validity period written in a DER certificate.
pub fn validity_of(der: &CertificateDer<'_>) -> Option<Validity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).ok()?;
    let at = |t: i64| Some(UNIX_EPOCH + Duration::from_secs(u64::try_from(t).ok()?));
    Some(Validity {
        not_before: at(cert.validity().not_before.timestamp())?,
        not_after: at(cert.validity().not_after.timestamp())?,
    })
}

fn offset(time: SystemTime) -> Result<time::OffsetDateTime, TlsError> {
    let secs = time
        .duration_since(UNIX_EPOCH)
        .map_err(|e| TlsError::SelfSigned(e.to_string()))?
        .as_secs();
    time::OffsetDateTime::from_unix_timestamp(secs as i64)
        .map_err(|e| TlsError::SelfSigned(e.to_string()))
}

/// The served certificate and the published next one.
#[derive(Debug, Clone)]
struct Published {
    current: BrowserCertificate,
    next: Option<BrowserCertificate>,
}

/// The browser certificates of a relay on its self-signed development certificate: what
/// WebTransport clients are served ([`BrowserCertificates::served`]) and the hashes the web
/// pages publish ([`BrowserCertificates::hashes`]). Shared (`Arc`) by the TLS resolver, the
/// rotation task and the web surface; a rotation applies to the next handshake, no restart.
#[derive(Debug)]
pub struct BrowserCertificates {
    dir: PathBuf,
    published: RwLock<Published>,
    /// One refresh at a time (the rotation task; tests).
    refreshing: Mutex<()>,
}

impl BrowserCertificates {
    /// Loads the certificates kept in `state_dir` and brings them up to date for `now`
    /// (making them on first start). A folder that cannot be written costs a warning: the
    /// certificates then live in memory only and change at the next start.
    pub fn open(state_dir: &Path, now: SystemTime) -> Result<Arc<BrowserCertificates>, TlsError> {
        let current = BrowserCertificate::load(&state_dir.join(CURRENT_FILE));
        let next = BrowserCertificate::load(&state_dir.join(NEXT_FILE));
        let (current, next) = match current {
            Some(current) => (current, next),
            // Made at once (not by `refresh`) so there is always one to serve; a next one
            // without a current one is a folder someone tidied by hand: start afresh.
            None => {
                let made = BrowserCertificate::make(now)?;
                save(state_dir, CURRENT_FILE, &made);
                let _ = std::fs::remove_file(state_dir.join(NEXT_FILE));
                (made, None)
            }
        };
        let certificates = Arc::new(BrowserCertificates {
            dir: state_dir.to_path_buf(),
            published: RwLock::new(Published { current, next }),
            refreshing: Mutex::new(()),
        });
        certificates.refresh(now)?;
        Ok(certificates)
    }

    /// Applies [`rotation`] at `now` until it says keep; returns what it did, in order.
    /// Each step is saved before it is served (files written to a temporary name, synced,
    /// renamed), so a crash leaves either the old or the new state in the folder.
    pub fn refresh(&self, now: SystemTime) -> Result<Vec<Rotation>, TlsError> {
        let _one_at_a_time = self.refreshing.lock().unwrap_or_else(|p| p.into_inner());
        let mut state = self.snapshot();
        let mut done = Vec::new();
        // Each step leaves a state the next decision keeps or moves on from; three steps
        // reach Keep from any state (Replace or Promote, then at most MakeNext).
        for _ in 0..4 {
            let step = rotation(
                now,
                Some(state.current.validity),
                state.next.as_ref().map(|n| n.validity),
            );
            match step {
                Rotation::Keep => break,
                Rotation::MakeNext => {
                    let next = BrowserCertificate::make(now)?;
                    save(&self.dir, NEXT_FILE, &next);
                    state.next = Some(next);
                }
                Rotation::Promote => {
                    let Some(next) = state.next.take() else { break };
                    promote(&self.dir);
                    state.current = next;
                }
                Rotation::Replace => {
                    let made = BrowserCertificate::make(now)?;
                    save(&self.dir, CURRENT_FILE, &made);
                    let _ = std::fs::remove_file(self.dir.join(NEXT_FILE));
                    state = Published {
                        current: made,
                        next: None,
                    };
                }
            }
            done.push(step);
        }
        if !done.is_empty() {
            info!(
                steps = ?done,
                served = %state.current.fingerprint(),
                next = ?state.next.as_ref().map(|n| n.fingerprint().to_string()),
                "browser (WebTransport) certificate rotated"
            );
            metrics::counter!("relay_browser_certificate_rotations_total")
                .increment(done.len() as u64);
            *self.published.write().unwrap_or_else(|p| p.into_inner()) = state;
        }
        Ok(done)
    }

    /// The hashes a page passes as `serverCertificateHashes`: the served certificate's, then
    /// the next one's while it is published.
    pub fn hashes(&self) -> Vec<CertificateHash> {
        let published = self.snapshot();
        std::iter::once(&published.current)
            .chain(published.next.as_ref())
            .map(|c| CertificateHash::of(c.fingerprint()))
            .collect()
    }

    /// The certificate WebTransport clients are served now.
    pub fn served(&self) -> BrowserCertificate {
        self.snapshot().current
    }

    fn snapshot(&self) -> Published {
        self.published
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    fn certified(&self) -> Arc<CertifiedKey> {
        self.published
            .read()
            .unwrap_or_else(|p| p.into_inner())
            .current
            .certified
            .clone()
    }

    /// Applies [`rotation`] every [`CHECK_INTERVAL`] with the system clock until `stop`.
    pub async fn rotate_until(self: Arc<Self>, stop: tokio_util::sync::CancellationToken) {
        let mut tick = tokio::time::interval(CHECK_INTERVAL);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.cancelled() => return,
                _ = tick.tick() => {}
            }
            // Key generation and fsync: off the runtime's workers.
            let certificates = self.clone();
            let refreshed =
                tokio::task::spawn_blocking(move || certificates.refresh(SystemTime::now())).await;
            if let Ok(Err(e)) = refreshed {
                warn!(error = %e, "cannot rotate the browser certificate; will retry");
            }
        }
    }
}

/// Writes `cert` to `dir/name` atomically (temporary file, fsync, rename, folder fsync),
/// owner-only; a warning if it cannot.
fn save(dir: &Path, name: &str, cert: &BrowserCertificate) {
    let path = dir.join(name);
    let temporary = dir.join(format!("{name}.{}.tmp", std::process::id()));
    let saved = std::fs::create_dir_all(dir)
        .map_err(|e| e.to_string())
        .and_then(|()| {
            crate::issuer::write_private_file(&temporary, &cert.pem()).map_err(|e| e.to_string())
        })
        .and_then(|()| std::fs::rename(&temporary, &path).map_err(|e| e.to_string()))
        .and_then(|()| sync_folder(dir).map_err(|e| e.to_string()));
    if let Err(reason) = saved {
        let _ = std::fs::remove_file(&temporary);
        warn!(path = %path.display(), %reason, "cannot save the browser certificate; it lives in memory until the next start");
    }
}

/// Makes the next certificate the current one in the folder (one rename).
fn promote(dir: &Path) {
    let promoted = std::fs::rename(dir.join(NEXT_FILE), dir.join(CURRENT_FILE))
        .and_then(|()| sync_folder(dir));
    if let Err(e) = promoted {
        warn!(dir = %dir.display(), error = %e, "cannot save the browser certificate's rotation");
    }
}

/// Makes a rename in `dir` durable.
fn sync_folder(dir: &Path) -> std::io::Result<()> {
    #[cfg(unix)]
    {
        std::fs::File::open(dir)?.sync_all()
    }
    #[cfg(not(unix))]
    {
        let _ = dir;
        Ok(())
    }
}

/// Whether a ClientHello's ALPN list asks for the browser certificate: a WebTransport
/// client (`h3`) that is not also a native client (`remote-help/1`). A native client that
/// offered both would otherwise lose the certificate it pins.
pub fn wants_browser_certificate<'a>(alpn: Option<impl Iterator<Item = &'a [u8]>>) -> bool {
    let (mut h3, mut native) = (false, false);
    for protocol in alpn.into_iter().flatten() {
        h3 |= protocol == crate::server::party::ALPN_H3;
        native |= protocol == remote_help_proto::ALPN;
    }
    h3 && !native
}

/// The relay's certificate choice per handshake: the browser certificate for WebTransport
/// clients ([`wants_browser_certificate`]) when there is one, else the long-lived
/// certificate native clients pin (or the configured CA-signed one, which serves both).
#[derive(Debug)]
pub struct RelayCertResolver {
    native: Arc<CertifiedKey>,
    browser: Option<Arc<BrowserCertificates>>,
}

impl RelayCertResolver {
    /// Serves `native` to everyone, or WebTransport clients `browser`'s served certificate.
    pub fn new(
        native: Arc<CertifiedKey>,
        browser: Option<Arc<BrowserCertificates>>,
    ) -> RelayCertResolver {
        RelayCertResolver { native, browser }
    }
}

impl ResolvesServerCert for RelayCertResolver {
    fn resolve(&self, client_hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        match &self.browser {
            Some(browser) if wants_browser_certificate(client_hello.alpn()) => {
                Some(browser.certified())
            }
            _ => Some(self.native.clone()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: Duration = Duration::from_secs(24 * 3600);

    fn at(days: f64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000) + Duration::from_secs_f64(days * 86_400.0)
    }

    #[test]
    fn a_made_certificate_is_p256_and_valid_for_less_than_two_weeks_from_before_now() {
        let now = SystemTime::now();
        let cert = BrowserCertificate::make(now).unwrap();
        let (_, parsed) = x509_parser::parse_x509_certificate(cert.der.as_ref()).unwrap();
        assert_eq!(parsed.version(), x509_parser::x509::X509Version::V3);
        let spki = parsed.public_key();
        assert_eq!(
            spki.algorithm.algorithm,
            x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY
        );
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok())
            .unwrap();
        assert_eq!(curve, x509_parser::oid_registry::OID_EC_P256);
        let validity = validity_of(&cert.der).unwrap();
        assert_eq!(validity, cert.validity);
        assert!(
            validity
                .not_after
                .duration_since(validity.not_before)
                .unwrap()
                <= MAX_VALIDITY
        );
        assert!(validity.not_before < now && validity.accepted_at(now));
    }

    #[test]
    fn rotation_makes_the_next_one_three_days_ahead_and_serves_it_one_day_ahead() {
        let first = Validity::made_at(at(0.0));
        let next = Validity::made_at(at(10.5));
        // Made an hour back, valid 13 days: ends at day 12.96.
        assert_eq!(rotation(at(0.0), Some(first), None), Rotation::Keep);
        assert_eq!(rotation(at(9.9), Some(first), None), Rotation::Keep);
        assert_eq!(rotation(at(10.5), Some(first), None), Rotation::MakeNext);
        assert_eq!(rotation(at(10.5), Some(first), Some(next)), Rotation::Keep);
        assert_eq!(rotation(at(11.9), Some(first), Some(next)), Rotation::Keep);
        assert_eq!(
            rotation(at(12.0), Some(first), Some(next)),
            Rotation::Promote
        );
        // After the promotion the new one has ten days left.
        assert_eq!(rotation(at(12.0), Some(next), None), Rotation::Keep);
    }

    #[test]
    fn rotation_replaces_what_cannot_serve() {
        let old = Validity::made_at(at(0.0));
        // First start; both lapsed while the relay was off; a next one not yet valid.
        assert_eq!(rotation(at(0.0), None, None), Rotation::Replace);
        assert_eq!(rotation(at(40.0), Some(old), Some(old)), Rotation::Replace);
        let future = Validity::made_at(at(5.0));
        assert_eq!(
            rotation(at(12.5), Some(old), Some(future)),
            Rotation::Promote
        );
        assert_eq!(
            rotation(at(12.5), Some(old), Some(Validity::made_at(at(20.0)))),
            Rotation::Replace
        );
        // A period longer than two weeks is never served.
        let long = Validity {
            not_before: at(0.0),
            not_after: at(0.0) + MAX_VALIDITY + DAY,
        };
        assert_eq!(rotation(at(1.0), Some(long), None), Rotation::Replace);
    }

    #[test]
    fn refresh_publishes_both_hashes_then_serves_the_next_and_keeps_it_across_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let certificates = BrowserCertificates::open(dir.path(), at(0.0)).unwrap();
        let first = certificates.served().fingerprint();
        assert_eq!(certificates.hashes(), [CertificateHash::of(first)]);
        assert_eq!(
            certificates.refresh(at(10.5)).unwrap(),
            [Rotation::MakeNext]
        );
        let hashes = certificates.hashes();
        assert_eq!(hashes.len(), 2);
        assert_eq!(hashes[0], CertificateHash::of(first));
        let next = Fingerprint(hashes[1].bytes().unwrap());
        assert_eq!(certificates.served().fingerprint(), first);
        // A restart in between finds both.
        let reopened = BrowserCertificates::open(dir.path(), at(11.0)).unwrap();
        assert_eq!(reopened.hashes(), hashes);
        assert_eq!(certificates.refresh(at(12.0)).unwrap(), [Rotation::Promote]);
        assert_eq!(certificates.served().fingerprint(), next);
        assert_eq!(certificates.hashes(), [CertificateHash::of(next)]);
        let reopened = BrowserCertificates::open(dir.path(), at(12.0)).unwrap();
        assert_eq!(reopened.served().fingerprint(), next);
        assert!(!dir.path().join(NEXT_FILE).exists());
    }

    #[test]
    fn the_resolver_chooses_by_alpn() {
        let h3: &[u8] = b"h3";
        let native: &[u8] = remote_help_proto::ALPN;
        assert!(wants_browser_certificate(Some([h3].into_iter())));
        assert!(!wants_browser_certificate(Some([native].into_iter())));
        assert!(!wants_browser_certificate(Some([h3, native].into_iter())));
        assert!(!wants_browser_certificate(None::<std::iter::Empty<&[u8]>>));
    }
}
