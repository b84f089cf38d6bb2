//! What start-up needs from the machine, checked before anything is bound: the TLS
//! certificate and key parse and belong together, and the state and audit folders can be
//! created and written. `relay check-config` and the daemon's start both run it, so a
//! config `check-config` passes is one the daemon starts on, and each problem is named by
//! its field (`server.tls_cert: ...`, `audit.dir: ...`).
//!
//! [`Config::load`](crate::config::Config::load) already reads the files whose contents
//! are configuration (tenants' JWK Sets, the admin token); this module looks at the rest.
//! It leaves nothing behind: folders it had to create and its probe files are removed.

use std::path::{Path, PathBuf};

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

use crate::config::{Config, ConfigProblem, TlsSource};

/// Every problem start-up would meet in `config`'s files and folders; empty when none.
pub fn check(config: &Config) -> Vec<ConfigProblem> {
    let mut problems = Vec::new();
    let mut problem = |field: &str, reason: String| {
        problems.push(ConfigProblem {
            field: field.to_string(),
            reason,
        })
    };
    if let TlsSource::Files { cert, key } = &config.tls {
        for (field, reason) in tls_pair(cert, key, ("server.tls_cert", "server.tls_key")) {
            problem(field, reason);
        }
    }
    if let Some(tls) = config.web.as_ref().and_then(|web| web.tls.as_ref()) {
        for (field, reason) in tls_pair(&tls.cert, &tls.key, ("web.tls_cert", "web.tls_key")) {
            problem(field, reason);
        }
    }
    if let Err(reason) = writable_folder(&config.state_dir) {
        problem("server.state_dir", reason);
    }
    if let Err(reason) = writable_folder(&config.audit.dir) {
        problem("audit.dir", reason);
    }
    problems
}

/// Problems with a PEM certificate chain and private key, by field: each must parse, and
/// the key must be the one the leaf certificate certifies. `fields` names the certificate's
/// and the key's settings.
fn tls_pair(
    cert: &Path,
    key: &Path,
    fields: (&'static str, &'static str),
) -> Vec<(&'static str, String)> {
    let (cert_field, key_field) = fields;
    let mut problems = Vec::new();
    let chain = match std::fs::read(cert) {
        Err(e) => {
            problems.push((cert_field, format!("cannot read {}: {e}", cert.display())));
            None
        }
        Ok(bytes) => match CertificateDer::pem_slice_iter(&bytes).collect::<Result<Vec<_>, _>>() {
            Ok(chain) if !chain.is_empty() => Some(chain),
            Ok(_) => {
                problems.push((
                    cert_field,
                    format!(
                        "{} is not a PEM certificate (no CERTIFICATE block)",
                        cert.display()
                    ),
                ));
                None
            }
            Err(e) => {
                problems.push((
                    cert_field,
                    format!("{} is not a PEM certificate: {e}", cert.display()),
                ));
                None
            }
        },
    };
    let signing_key = match std::fs::read(key) {
        Err(e) => {
            problems.push((key_field, format!("cannot read {}: {e}", key.display())));
            None
        }
        Ok(bytes) => match PrivateKeyDer::from_pem_slice(&bytes) {
            Err(e) => {
                problems.push((
                    key_field,
                    format!("{} is not a PEM private key: {e}", key.display()),
                ));
                None
            }
            Ok(der) => match crate::tls::provider().key_provider.load_private_key(der) {
                Ok(signing_key) => Some(signing_key),
                Err(e) => {
                    problems.push((
                        key_field,
                        format!("{}: unusable private key: {e}", key.display()),
                    ));
                    None
                }
            },
        },
    };
    if let (Some(chain), Some(signing_key)) = (chain, signing_key) {
        use rustls::InconsistentKeys;
        match rustls::sign::CertifiedKey::new(chain, signing_key).keys_match() {
            // A key that cannot name its public key cannot be compared; rustls accepts it.
            Ok(()) | Err(rustls::Error::InconsistentKeys(InconsistentKeys::Unknown)) => {}
            Err(rustls::Error::InconsistentKeys(InconsistentKeys::KeyMismatch)) => {
                problems.push((
                    key_field,
                    format!(
                        "{} is not the key of the certificate in {} ({cert_field})",
                        key.display(),
                        cert.display()
                    ),
                ));
            }
            Err(e) => problems.push((
                cert_field,
                format!(
                    "{}: the first certificate is not a valid X.509 certificate: {e}",
                    cert.display()
                ),
            )),
        }
    }
    problems
}

/// Checks that `dir` exists or can be created, and that files can be created in it, as
/// start-up will need; removes whatever it made. Free space is not checked here: the
/// running relay's audit health check watches that (`relay_audit_available`).
pub fn writable_folder(dir: &Path) -> Result<(), String> {
    // The folders that do not exist yet, deepest first, to remove after the probe.
    let mut missing: Vec<PathBuf> = Vec::new();
    let mut walk = Some(dir);
    while let Some(path) = walk {
        match std::fs::symlink_metadata(path) {
            Ok(_) => break,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing.push(path.to_path_buf());
                walk = path.parent().filter(|p| !p.as_os_str().is_empty());
            }
            // ENOTDIR (a file on the way), EACCES: create_dir_all says it better.
            Err(_) => break,
        }
    }
    let result = probe(dir);
    for made in &missing {
        // Deepest first; stops mattering at the first one that is not empty.
        let _ = std::fs::remove_dir(made);
    }
    result
}

fn probe(dir: &Path) -> Result<(), String> {
    std::fs::create_dir_all(dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    if !dir.is_dir() {
        return Err(format!("{} is not a folder", dir.display()));
    }
    let name = format!(
        ".relay-probe-{}-{:016x}",
        std::process::id(),
        rand::random::<u64>()
    );
    let path = dir.join(name);
    std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(&path)
        .map_err(|e| format!("cannot create files in {}: {e}", dir.display()))?;
    std::fs::remove_file(&path)
        .map_err(|e| format!("cannot remove files from {}: {e}", dir.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIELDS: (&str, &str) = ("server.tls_cert", "server.tls_key");

    fn pem(label: &str, der: &[u8]) -> String {
        crate::issuer::pem_encode(label, der)
    }

    /// A self-signed certificate and its key, as PEM files in `dir`, named by `stem`.
    fn identity(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        let id = crate::tls::ServerIdentity::self_signed(vec!["localhost".into()]).unwrap();
        let cert = dir.join(format!("{stem}-cert.pem"));
        let key = dir.join(format!("{stem}-key.pem"));
        std::fs::write(&cert, pem("CERTIFICATE", id.chain[0].as_ref())).unwrap();
        std::fs::write(&key, pem("PRIVATE KEY", id.key.secret_der())).unwrap();
        (cert, key)
    }

    #[test]
    fn a_matching_certificate_and_key_pass() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = identity(dir.path(), "a");
        assert_eq!(tls_pair(&cert, &key, FIELDS), vec![]);
    }

    #[test]
    fn a_file_that_is_not_pem_is_named_by_its_field() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = identity(dir.path(), "a");
        std::fs::write(&cert, "hello\n").unwrap();
        let found = tls_pair(&cert, &key, FIELDS);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "server.tls_cert");
        assert!(found[0].1.contains("not a PEM certificate"), "{found:?}");

        let (cert, key) = identity(dir.path(), "b");
        std::fs::write(&key, "hello\n").unwrap();
        let found = tls_pair(&cert, &key, FIELDS);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "server.tls_key");
        assert!(found[0].1.contains("not a PEM private key"), "{found:?}");
    }

    #[test]
    fn a_key_of_another_certificate_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, _) = identity(dir.path(), "a");
        let (_, other_key) = identity(dir.path(), "b");
        let found = tls_pair(&cert, &other_key, FIELDS);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "server.tls_key");
        assert!(found[0].1.contains("is not the key of"), "{found:?}");
    }

    #[test]
    fn a_certificate_block_that_is_not_x509_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let (cert, key) = identity(dir.path(), "a");
        std::fs::write(&cert, pem("CERTIFICATE", b"not a certificate")).unwrap();
        let found = tls_pair(&cert, &key, FIELDS);
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].0, "server.tls_cert");
    }

    #[test]
    fn a_folder_under_a_file_cannot_be_created() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("hostname");
        std::fs::write(&file, "x").unwrap();
        let reason = writable_folder(&file.join("audit")).unwrap_err();
        assert!(reason.starts_with("cannot create "), "{reason}");
        assert!(reason.contains("Not a directory"), "{reason}");
    }

    #[test]
    fn a_probe_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        writable_folder(&dir.path().join("a/b/c")).unwrap();
        assert!(
            !dir.path().join("a").exists(),
            "created folders are removed"
        );
        let existing = dir.path().join("kept");
        std::fs::create_dir(&existing).unwrap();
        writable_folder(&existing).unwrap();
        assert!(existing.is_dir());
        assert_eq!(std::fs::read_dir(&existing).unwrap().count(), 0);
    }
}
