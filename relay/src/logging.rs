//! Logging setup shared by the binaries (`relay`, `rhelp`, `loadtest`): tracing to stderr,
//! levels from `RUST_LOG` (else `default_level`), as text or JSON lines.

/// Libraries whose warnings a client controls, each with the level it is kept at unless
/// the operator's filter names it: `web_transport_quinn` warns once per unknown capsule on
/// a CONNECT stream and once per stream naming another session, so at `warn` any
/// WebTransport client could write to the relay's log as fast as it sends. What it reports
/// that matters reaches the relay's own log lines and metrics anyway.
const QUIET_LIBRARIES: &[(&str, &str)] = &[("web_transport_quinn", "error")];

/// Installs the global tracing subscriber. Call once, first thing in `main`.
pub fn init(json: bool, default_level: &str) {
    let operator = std::env::var(tracing_subscriber::EnvFilter::DEFAULT_ENV).ok();
    let filter = tracing_subscriber::EnvFilter::new(directives(operator.as_deref(), default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// The filter in force: the operator's (`RUST_LOG`) if it is a valid filter, else
/// `default_level`; plus a directive for each of `QUIET_LIBRARIES` the filter does not
/// name (a directive naming one, `web_transport_quinn=debug` say, is the operator's choice
/// and kept as it is).
pub fn directives(operator: Option<&str>, default_level: &str) -> String {
    let base = operator
        .filter(|f| tracing_subscriber::EnvFilter::try_new(f).is_ok())
        .unwrap_or(default_level);
    let mut directives = base.to_string();
    for (target, level) in QUIET_LIBRARIES {
        let named = base.split(',').any(|directive| {
            // A directive is `target[span{field}]=level`, or a bare level.
            let target_part = directive.trim().split(['[', '=']).next().unwrap_or("");
            target_part == *target || target_part.starts_with(&format!("{target}::"))
        });
        if !named {
            if !directives.is_empty() {
                directives.push(',');
            }
            directives.push_str(&format!("{target}={level}"));
        }
    }
    directives
}

#[cfg(test)]
mod tests {
    use super::directives;

    #[test]
    fn library_warnings_a_client_controls_are_filtered_by_default() {
        assert_eq!(directives(None, "info"), "info,web_transport_quinn=error");
        // The operator's own level for everything else does not lift it.
        assert_eq!(
            directives(Some("debug"), "info"),
            "debug,web_transport_quinn=error"
        );
        assert_eq!(
            directives(Some("warn,remote_help_relay=debug"), "info"),
            "warn,remote_help_relay=debug,web_transport_quinn=error"
        );
    }

    #[test]
    fn an_operator_filter_that_names_the_library_is_kept_as_it_is() {
        for filter in [
            "info,web_transport_quinn=debug",
            "web_transport_quinn::session=warn",
            "info,web_transport_quinn[conn]=trace",
        ] {
            assert_eq!(directives(Some(filter), "info"), filter);
        }
        // A crate whose name merely starts the same is another crate.
        assert_eq!(
            directives(Some("web_transport_quinn_extra=debug"), "info"),
            "web_transport_quinn_extra=debug,web_transport_quinn=error"
        );
    }

    #[test]
    fn an_invalid_operator_filter_falls_back_to_the_default_level() {
        assert_eq!(
            directives(Some("remote_help_relay=loud"), "warn"),
            "warn,web_transport_quinn=error"
        );
    }

    #[test]
    fn the_filter_built_is_valid() {
        for operator in [None, Some("debug"), Some("info,web_transport_quinn=debug")] {
            let built = directives(operator, "info");
            tracing_subscriber::EnvFilter::try_new(&built).unwrap();
        }
    }
}
