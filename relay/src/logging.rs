//! Logging setup shared by the binaries (`relay`, `rhelp`, `loadtest`): tracing to stderr,
//! levels from `RUST_LOG` (else `default_level`), as text or JSON lines.

/// Installs the global tracing subscriber. Call once, first thing in `main`.
pub fn init(json: bool, default_level: &str) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}
