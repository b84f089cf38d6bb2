//! The server's unit tests: what a reload applies and what needs a restart.

use super::*;

#[test]
fn a_reload_names_each_changed_field_only_a_restart_applies() {
    let running = Config::with_defaults("127.0.0.1:4433".parse().unwrap(), Vec::new());
    let mut fresh = running.clone();
    // What a reload applies is not reported.
    fresh.admin.token = Some("a-rotated-admin-token".into());
    fresh.token_leeway = Duration::from_secs(5);
    fresh.audience = "another-audience".into();
    assert_eq!(unapplied_fields(&running, &fresh), Vec::<&str>::new());
    fresh.listen = "127.0.0.1:4434".parse().unwrap();
    fresh.audit.dir = "elsewhere".into();
    fresh.admin.listen = None;
    fresh.limits.max_connections = 1;
    fresh.consent_timeout = Duration::from_secs(11);
    fresh.web = Some(crate::config::WebConfig {
        listen: "127.0.0.1:8080".parse().unwrap(),
        tls: None,
    });
    assert_eq!(
        unapplied_fields(&running, &fresh),
        [
            "server.listen",
            "server.consent_timeout_secs",
            "audit.dir",
            "admin.listen",
            "web",
            "limits.max_connections"
        ]
    );
}
