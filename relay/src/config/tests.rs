use super::*;

fn problems(text: &str, base: &Path) -> Vec<ConfigProblem> {
    match Config::parse(text, base) {
        Err(ConfigError::Invalid(p)) => p,
        other => panic!("expected problems, got {other:?}"),
    }
}

#[test]
fn every_problem_is_reported_with_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let found = problems(
        r#"
        [server]
        listen = "nowhere"
        keep_alive_ms = 9000
        idle_timeout_ms = 5000
        tls_cert = "cert.pem"
        [limits]
        stream_receive_window = 1
        [[tenants]]
        id = "t"
        "#,
        dir.path(),
    );
    let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "server.listen",
            "server.tls_key",
            "server.keep_alive_ms",
            "limits.stream_receive_window",
            // No jwks_file means keys by URL from the issuer, which is missing.
            "tenants[0].issuer",
        ]
    );
}

#[test]
fn key_fetch_settings_are_checked_against_their_floors_and_each_other() {
    let tenant = "[[tenants]]\nid = \"t\"\nissuer = \"https://idp.example\"\n";
    let fields = |section: &str| -> Vec<String> {
        problems(&format!("{section}\n{tenant}"), Path::new("."))
            .into_iter()
            .map(|p| p.field)
            .collect()
    };
    assert_eq!(
        fields("[key_fetch]\nretry_secs = 0\ntimeout_ms = 5\nmax_response_bytes = 10"),
        [
            "key_fetch.retry_secs",
            "key_fetch.timeout_ms",
            "key_fetch.max_response_bytes"
        ]
    );
    assert_eq!(
        fields("[key_fetch]\nrefresh_min_secs = 600\nrefresh_max_secs = 60"),
        ["key_fetch.refresh_min_secs"]
    );
    assert_eq!(
        fields("[key_fetch]\nrefresh_default_secs = 100000"),
        ["key_fetch.refresh_default_secs"]
    );
    let config = Config::parse(
        &format!("[key_fetch]\nrefresh_min_secs = 30\nunknown_kid_interval_secs = 60\n{tenant}"),
        Path::new("."),
    )
    .unwrap();
    assert_eq!(config.key_fetch.refresh_min, Duration::from_secs(30));
    assert_eq!(
        config.key_fetch.unknown_kid_interval,
        Duration::from_secs(60)
    );
    assert_eq!(config.key_fetch.refresh_default, Duration::from_secs(3600));
    match &config.tenants[0].keys_from {
        KeySource::Provider(source) => {
            assert_eq!(source.issuer, "https://idp.example");
            assert_eq!(source.jwks_uri, None);
        }
        other => panic!("{other:?}"),
    }
    assert!(config.tenants[0].trust.keys.current().is_none());
}

#[test]
fn unknown_fields_are_refused() {
    let err = Config::parse("[server]\nlisten_addr = \"x\"\n", Path::new(".")).unwrap_err();
    assert!(err.to_string().contains("listen_addr"), "{err}");
}

#[test]
fn no_tenants_is_a_problem() {
    let found = problems("", Path::new("."));
    assert_eq!(found[0].field, "tenants");
}

#[test]
fn hmac_keys_are_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("k.json"),
        r#"{"keys":[{"kty":"oct","k":"c2VjcmV0","kid":"h"}]}"#,
    )
    .unwrap();
    let found = problems(
        "[[tenants]]\nid = \"t\"\nissuer = \"i\"\njwks_file = \"k.json\"\n",
        dir.path(),
    );
    assert_eq!(found[0].field, "tenants[0].jwks_file");
    assert!(found[0].reason.contains("HMAC"), "{}", found[0].reason);
}

#[test]
fn a_claim_mapping_is_a_preset_with_overrides() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("k.json"),
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"SBFl5yduT-rdvyyby_d17XNFWhBJz1LxU1-mpIRqp08","kid":"k"}]}"#,
    )
    .unwrap();
    let text = "[[tenants]]\nid = \"kc\"\nissuer = \"https://sso.example/realms/a\"\n\
                jwks_file = \"k.json\"\nclaims = \"keycloak\"\naudience = \"relay-a\"\n\
                [tenants.claim_map]\nlicenses = \"resource_access.remote-help-relay.roles\"\n\
                groups = [\"groups\", \"org.teams\"]\nplatform = []\n";
    let config = Config::parse(text, dir.path()).unwrap();
    let trust = &config.tenants[0].trust;
    assert_eq!(trust.audience.as_deref(), Some("relay-a"));
    assert_eq!(trust.claims.preset, Preset::Keycloak);
    assert_eq!(trust.claims.select_by, TenantSelector::Issuer);
    let paths = |name: &str| -> Vec<String> {
        trust
            .claims
            .paths(name)
            .iter()
            .map(ToString::to_string)
            .collect()
    };
    assert_eq!(
        paths("licenses"),
        ["resource_access.remote-help-relay.roles"]
    );
    assert_eq!(paths("groups"), ["groups", "org.teams"]);
    assert!(paths("platform").is_empty());
    // Untouched entries keep the preset's paths.
    assert_eq!(paths("roles"), ["realm_access.roles"]);
    // No mapping at all is this project's own shape, selected by tid.
    let plain = tenant_problems("");
    assert!(plain.is_empty(), "{plain:?}");
}

#[test]
fn claim_mapping_mistakes_are_reported_with_their_field() {
    let found = tenant_problems(
        "claims = \"auth0\"\naudience = \" \"\n[tenants.claim_map]\nnickname = \"nick\"\n\
         subject = [\"oid\", \"sub\"]\ngroups = 3\nroles = [\"a..b\"]\nselect_by = \"aud\"\n",
    );
    let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "tenants[0].audience",
            "tenants[0].claims",
            "tenants[0].claim_map.groups",
            "tenants[0].claim_map.nickname",
            "tenants[0].claim_map.roles",
            "tenants[0].claim_map.select_by",
            "tenants[0].claim_map.subject",
        ]
    );
    assert!(
        found[1].reason.contains("entra, keycloak, okta"),
        "{}",
        found[1].reason
    );
}

#[test]
fn two_tenants_selected_by_one_issuer_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("k.json"),
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"SBFl5yduT-rdvyyby_d17XNFWhBJz1LxU1-mpIRqp08","kid":"k"}]}"#,
    )
    .unwrap();
    let tenant = |id: &str| {
        format!(
            "[[tenants]]\nid = \"{id}\"\nissuer = \"https://login.microsoftonline.com/t/v2.0\"\n\
             jwks_file = \"k.json\"\nclaims = \"entra\"\n"
        )
    };
    let found = problems(&format!("{}{}", tenant("a"), tenant("b")), dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field, "tenants[1].issuer");
    assert!(found[0].reason.contains("\"a\""), "{}", found[0].reason);
}

#[test]
fn the_session_memory_bound_adds_both_connections() {
    let limits = Limits::default();
    assert_eq!(
        limits.session_memory_bound(),
        2 * (1024 * 1024 + 1024 * 1024 + 64 * 1024 + 64 * 1024)
    );
}

fn tenant_problems(tenant_toml: &str) -> Vec<ConfigProblem> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("k.json"),
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"SBFl5yduT-rdvyyby_d17XNFWhBJz1LxU1-mpIRqp08","kid":"k"}]}"#,
    )
    .unwrap();
    let text =
        format!("[[tenants]]\nid = \"t\"\nissuer = \"i\"\njwks_file = \"k.json\"\n{tenant_toml}");
    match Config::parse(&text, dir.path()) {
        Err(ConfigError::Invalid(p)) => p,
        Ok(_) => Vec::new(),
        Err(other) => panic!("{other}"),
    }
}

/// The config (or its problems) with a valid tenant and `cluster_toml` after it.
fn with_cluster(cluster_toml: &str) -> Result<Config, Vec<ConfigProblem>> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("k.json"),
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"SBFl5yduT-rdvyyby_d17XNFWhBJz1LxU1-mpIRqp08","kid":"k"}]}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("cert.pem"), "placeholder").unwrap();
    std::fs::write(dir.path().join("key.pem"), "placeholder").unwrap();
    let text = format!(
        "[server]\ntls_cert = \"cert.pem\"\ntls_key = \"key.pem\"\n\
         [[tenants]]\nid = \"t\"\nissuer = \"i\"\njwks_file = \"k.json\"\n[cluster]\n{cluster_toml}"
    );
    match Config::parse(&text, dir.path()) {
        Ok(config) => Ok(config),
        Err(ConfigError::Invalid(p)) => Err(p),
        Err(other) => panic!("{other}"),
    }
}

#[test]
fn a_cluster_lists_its_nodes_or_expands_a_template() {
    let listed = with_cluster(
        "node_id = 1\nnodes = [\"relay-a.example:443\", \"192.0.2.7:443\", \"[2001:db8::1]:443\"]\n",
    )
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!(listed.node, NodeId::new(1).unwrap());
    assert_eq!(
        listed.address_of(NodeId::new(2).unwrap()),
        Some("[2001:db8::1]:443")
    );
    assert_eq!(listed.address_of(NodeId::new(3).unwrap()), None);
    let templated = with_cluster(
        "node_id = 0\nnode_address_template = \"relay-{id}.relay.example:443\"\nsize = 3\n",
    )
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!(
        templated.nodes,
        [
            "relay-0.relay.example:443",
            "relay-1.relay.example:443",
            "relay-2.relay.example:443"
        ]
    );
    assert!(with_cluster("").is_err(), "an empty [cluster] is a mistake");
}

#[test]
fn cluster_mistakes_are_reported_with_their_field() {
    let fields = |toml: &str| -> Vec<String> {
        with_cluster(toml)
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect()
    };
    assert_eq!(
        fields("node_id = 3\nnodes = [\"a:1\", \"b:1\"]\n"),
        ["cluster.node_id"]
    );
    assert_eq!(
        fields("node_id = 99\nnodes = [\"a:1\"]\n"),
        ["cluster.node_id"]
    );
    assert_eq!(
        fields("node_id = \"pod\"\nnodes = [\"a:1\"]\n"),
        ["cluster.node_id"]
    );
    assert_eq!(fields("nodes = [\"a:1\"]\n"), ["cluster.node_id"]);
    assert_eq!(
        fields("node_id = 0\nnodes = [\"a:1\", \"no-port\", \"b:0\"]\n"),
        ["cluster.nodes[1]", "cluster.nodes[2]"]
    );
    assert_eq!(
        fields("node_id = 0\nnode_address_template = \"relay:443\"\nsize = 2\n"),
        ["cluster.node_address_template"]
    );
    assert_eq!(
        fields("node_id = 0\nnode_address_template = \"r-{id}:1\"\nsize = 33\n"),
        ["cluster.nodes"]
    );
    assert_eq!(
        fields("node_id = 0\nnodes = [\"a:1\"]\nsize = 1\n"),
        ["cluster"]
    );
    assert_eq!(
        fields("node_id = 0\nnodes = [\"a:1\", \"a:1\"]\n"),
        ["cluster.nodes[1]"]
    );
}

#[test]
fn a_cluster_lists_its_admin_addresses_or_expands_a_template() {
    let none = with_cluster("node_id = 0\nnodes = [\"a:1\", \"b:1\"]\n")
        .unwrap()
        .cluster
        .unwrap();
    assert!(none.admin_nodes.is_empty(), "no fan-out unless configured");
    assert_eq!(none.fanout_timeout, crate::config::DEFAULT_FANOUT_TIMEOUT);
    let listed = with_cluster(
        "node_id = 1\nnodes = [\"a:1\", \"b:1\"]\n\
         admin_nodes = [\"10.0.0.1:9464\", \"https://admin-b.example:9090/\"]\nfanout_timeout_ms = 750\n",
    )
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!(
        listed.admin_nodes,
        ["http://10.0.0.1:9464", "https://admin-b.example:9090"]
    );
    assert_eq!(listed.fanout_timeout, Duration::from_millis(750));
    assert_eq!(
        listed
            .admin_peers()
            .map(|(id, url)| (id.get(), url.to_string()))
            .collect::<Vec<_>>(),
        [(0, "http://10.0.0.1:9464".to_string())],
        "a node never asks itself"
    );
    let templated = with_cluster(
        "node_id = 0\nnode_address_template = \"relay-{id}.example:443\"\nsize = 3\n\
         admin_address_template = \"relay-{id}.remote-help-admin.example:9090\"\n",
    )
    .unwrap()
    .cluster
    .unwrap();
    assert_eq!(
        templated.admin_nodes,
        [
            "http://relay-0.remote-help-admin.example:9090",
            "http://relay-1.remote-help-admin.example:9090",
            "http://relay-2.remote-help-admin.example:9090"
        ]
    );
}

#[test]
fn admin_address_mistakes_are_reported_with_their_field() {
    let fields = |toml: &str| -> Vec<String> {
        with_cluster(&format!("node_id = 0\nnodes = [\"a:1\", \"b:1\"]\n{toml}"))
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect()
    };
    assert_eq!(
        fields("admin_nodes = [\"a:9464\"]\n"),
        ["cluster.admin_nodes"]
    );
    assert_eq!(
        fields("admin_nodes = [\"a:9464\", \"ftp://b:21\"]\n"),
        ["cluster.admin_nodes[1]"]
    );
    assert_eq!(
        fields("admin_nodes = [\"a:9464\", \"http://a:9464\"]\n"),
        ["cluster.admin_nodes[1]"]
    );
    assert_eq!(
        fields("admin_address_template = \"admin:9464\"\n"),
        ["cluster.admin_address_template"]
    );
    assert_eq!(
        fields("admin_nodes = [\"a:1\", \"b:1\"]\nadmin_address_template = \"r-{id}:1\"\n"),
        ["cluster"]
    );
    assert_eq!(
        fields("admin_nodes = [\"a:2\", \"b:2\"]\nfanout_timeout_ms = 0\n"),
        ["cluster.fanout_timeout_ms"]
    );
    assert_eq!(
        fields(
            "admin_nodes = [\"https://a:2\", \"https://b:2\"]\nadmin_ca_file = \"missing-ca.pem\"\n"
        ),
        ["cluster.admin_ca_file"]
    );
}

#[test]
fn a_cluster_needs_certificate_files() {
    // Self-signed per node, no client could follow a redirect to another node.
    let text = "[[tenants]]\nid = \"t\"\nissuer = \"i\"\njwks_file = \"k.json\"\n\
                [cluster]\nnode_id = 0\nnodes = [\"a:1\", \"b:1\"]\n";
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("k.json"),
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"SBFl5yduT-rdvyyby_d17XNFWhBJz1LxU1-mpIRqp08","kid":"k"}]}"#,
    )
    .unwrap();
    let found = problems(text, dir.path());
    assert_eq!(found.len(), 1, "{found:?}");
    assert_eq!(found[0].field, "cluster");
    assert!(found[0].reason.contains("tls_cert"), "{}", found[0].reason);
}

#[test]
fn government_high_clouds_are_refused_with_a_clear_message() {
    for cloud in ["gcc-high", "dod"] {
        let found = tenant_problems(&format!("cloud = \"{cloud}\"\n"));
        assert_eq!(found[0].field, "tenants[0].cloud");
        assert!(
            found[0].reason.contains("not available"),
            "{}",
            found[0].reason
        );
    }
    assert!(tenant_problems("cloud = \"gcc\"\n").is_empty());
    assert!(tenant_problems("cloud = \"commercial\"\n").is_empty());
}

#[test]
fn roles_and_assignments_are_checked_by_name() {
    let found = tenant_problems(
        "[[tenants.roles]]\nname = \"Tier 1\"\npermissions = [\"view_screen\", \"fly\"]\n\
         [[tenants.assignments]]\nrole = \"Tier 9\"\nmembers = [\"g\"]\nscope = [\"all_users\"]\n\
         [[tenants.assignments]]\nrole = \"Tier 1\"\n",
    );
    let fields: Vec<&str> = found.iter().map(|p| p.field.as_str()).collect();
    assert_eq!(
        fields,
        [
            "tenants[0].roles[0].permissions[1]",
            "tenants[0].assignments[0].role",
            "tenants[0].assignments[1].members",
            "tenants[0].assignments[1].scope",
        ]
    );
}

#[test]
fn the_default_audit_folder_is_inside_the_state_folder() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("k.json"),
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"SBFl5yduT-rdvyyby_d17XNFWhBJz1LxU1-mpIRqp08","kid":"k"}]}"#,
    )
    .unwrap();
    let tenant = "[[tenants]]\nid = \"t\"\nissuer = \"i\"\njwks_file = \"k.json\"\n";
    let config = Config::parse(
        &format!("[server]\nstate_dir = \"st\"\n{tenant}"),
        dir.path(),
    )
    .unwrap();
    assert_eq!(config.state_dir, dir.path().join("st"));
    assert_eq!(config.audit.dir, dir.path().join("st").join("audit"));
    let config = Config::parse(&format!("[audit]\ndir = \"logs\"\n{tenant}"), dir.path()).unwrap();
    assert_eq!(config.audit.dir, dir.path().join("logs"));
}

#[test]
fn tenant_settings_default_to_the_safe_values() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("k.json"),
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"SBFl5yduT-rdvyyby_d17XNFWhBJz1LxU1-mpIRqp08","kid":"k"}]}"#,
    )
    .unwrap();
    let config = Config::parse(
        "[[tenants]]\nid = \"t\"\nissuer = \"i\"\njwks_file = \"k.json\"\n",
        dir.path(),
    )
    .unwrap();
    assert_eq!(config.tenants[0].policy, TenantPolicy::default());
    assert!(config.tenants[0].policy.require_end_to_end);
    assert_eq!(config.consent_timeout, Duration::from_secs(300));
    // Protection can be made optional, for measurements, only by saying so.
    let config = Config::parse(
        "[[tenants]]\nid = \"t\"\nissuer = \"i\"\njwks_file = \"k.json\"\nrequire_end_to_end = false\n",
        dir.path(),
    )
    .unwrap();
    assert!(!config.tenants[0].policy.require_end_to_end);
}

#[test]
fn administration_audiences_default_to_the_session_audience_with_admin_and_must_differ_from_it() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("k.json"),
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"SBFl5yduT-rdvyyby_d17XNFWhBJz1LxU1-mpIRqp08","kid":"k"}]}"#,
    )
    .unwrap();
    let tenant = "[[tenants]]\nid = \"t\"\nissuer = \"i\"\njwks_file = \"k.json\"\n";
    let config = Config::parse(
        &format!("[server]\naudience = \"relay-x\"\n{tenant}"),
        dir.path(),
    )
    .unwrap();
    assert_eq!(config.admin_audience, "relay-x/admin");
    assert_eq!(config.tenants[0].admin_audience, None);
    let config = Config::parse(
        &format!("{tenant}admin_audience = \"api://reports\"\n"),
        dir.path(),
    )
    .unwrap();
    assert_eq!(
        config.tenants[0].admin_audience.as_deref(),
        Some("api://reports")
    );
    let found = problems(
        &format!("[server]\naudience = \"a\"\nadmin_audience = \"a\"\n{tenant}"),
        dir.path(),
    );
    assert_eq!(found[0].field, "server.admin_audience");
    let found = tenant_problems("audience = \"remote-help-relay/admin\"\n");
    assert_eq!(found[0].field, "tenants[0].admin_audience");
    let found = tenant_problems("admin_audience = \"remote-help-relay\"\n");
    assert_eq!(found[0].field, "tenants[0].admin_audience");
}

fn with_web(web_toml: &str) -> Result<Config, Vec<ConfigProblem>> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("k.json"),
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"SBFl5yduT-rdvyyby_d17XNFWhBJz1LxU1-mpIRqp08","kid":"k"}]}"#,
    )
    .unwrap();
    std::fs::write(dir.path().join("web.pem"), "placeholder").unwrap();
    std::fs::write(dir.path().join("web.key"), "placeholder").unwrap();
    let text = format!(
        "[[tenants]]\nid = \"t\"\nissuer = \"i\"\njwks_file = \"k.json\"\n[web]\n{web_toml}"
    );
    match Config::parse(&text, dir.path()) {
        Ok(config) => Ok(config),
        Err(ConfigError::Invalid(p)) => Err(p),
        Err(other) => panic!("{other}"),
    }
}

#[test]
fn a_web_listener_speaks_https_anywhere_and_plain_http_only_on_loopback() {
    let https = with_web("listen = \"0.0.0.0:443\"\ntls_cert = \"web.pem\"\ntls_key = \"web.key\"")
        .unwrap()
        .web
        .unwrap();
    assert_eq!(https.listen, "0.0.0.0:443".parse().unwrap());
    assert!(https.tls.unwrap().cert.ends_with("web.pem"));
    for loopback in ["127.0.0.1:8080", "[::1]:8080"] {
        let plain = with_web(&format!("listen = \"{loopback}\""))
            .unwrap()
            .web
            .unwrap();
        assert_eq!(plain.tls, None);
    }
    for open in ["0.0.0.0:8080", "[::]:8080", "192.0.2.10:80"] {
        let found = with_web(&format!("listen = \"{open}\"")).unwrap_err();
        assert_eq!(found.len(), 1, "{found:?}");
        assert_eq!(found[0].field, "web.listen");
        assert!(
            found[0].reason.contains("only on a loopback address"),
            "{found:?}"
        );
    }
    // No [web] at all: no listener.
    let dir = tempfile::tempdir().unwrap();
    assert_eq!(
        Config::parse("", dir.path()).map(|c| c.web).ok().flatten(),
        None
    );
}

#[test]
fn web_listener_mistakes_are_reported_with_their_field() {
    let fields = |toml: &str| -> Vec<String> {
        with_web(toml)
            .unwrap_err()
            .into_iter()
            .map(|p| p.field)
            .collect()
    };
    assert_eq!(
        fields("tls_cert = \"web.pem\"\ntls_key = \"web.key\""),
        ["web.listen"]
    );
    assert_eq!(fields("listen = \"nowhere\""), ["web.listen"]);
    assert_eq!(
        fields("listen = \"0.0.0.0:443\"\ntls_cert = \"web.pem\""),
        ["web.tls_key"]
    );
    assert_eq!(
        fields("listen = \"0.0.0.0:443\"\ntls_cert = \"missing.pem\"\ntls_key = \"web.key\""),
        ["web.tls_cert"]
    );
    // An unknown key in [web] is refused as the rest of the file is.
    assert!(matches!(
        Config::parse(
            "[web]\nlisten = \"127.0.0.1:80\"\nport = 80\n",
            Path::new(".")
        ),
        Err(ConfigError::Syntax(_))
    ));
}

#[test]
fn a_web_sign_in_is_a_public_client_at_an_https_issuer_with_openid() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("k.json"),
        r#"{"keys":[{"kty":"OKP","crv":"Ed25519","x":"SBFl5yduT-rdvyyby_d17XNFWhBJz1LxU1-mpIRqp08","kid":"k"}]}"#,
    )
    .unwrap();
    let tenant = |issuer: &str, sign_in: &str| {
        format!(
            "[[tenants]]\nid = \"t\"\nissuer = \"{issuer}\"\njwks_file = \"k.json\"\n\
             [tenants.web_sign_in]\n{sign_in}"
        )
    };
    let config = Config::parse(
        &tenant(
            "https://Login.T.example:8443/realms/t",
            "client_id = \"monitor\"\n",
        ),
        dir.path(),
    )
    .unwrap();
    let sign_in = config.tenants[0].web_sign_in.clone().unwrap();
    assert_eq!(
        sign_in,
        WebSignIn {
            client_id: "monitor".into(),
            scopes: vec!["openid".into()],
            resource: None,
            helper_resource: None,
            display_name: None,
        }
    );
    assert_eq!(
        WebSignIn::origin_of(&config.tenants[0].trust.issuer).as_deref(),
        Some("https://login.t.example:8443")
    );
    let fields = |issuer: &str, sign_in: &str| -> Vec<String> {
        problems(&tenant(issuer, sign_in), dir.path())
            .into_iter()
            .map(|p| p.field)
            .collect()
    };
    assert_eq!(
        fields("http://login.t.example", "client_id = \"monitor\"\n"),
        ["tenants[0].web_sign_in"]
    );
    assert_eq!(
        fields("https://login.t.example/a;b", "client_id = \"monitor\"\n"),
        ["tenants[0].web_sign_in"]
    );
    assert_eq!(
        fields(
            "https://login.t.example",
            "scopes = [\"profile\", \"two words\"]\nresource = \"not a uri\"\n\
             helper_resource = \"urn:x#frag\"\ndisplay_name = \" \"\n"
        ),
        [
            "tenants[0].web_sign_in.client_id",
            "tenants[0].web_sign_in.scopes[1]",
            "tenants[0].web_sign_in.scopes",
            "tenants[0].web_sign_in.resource",
            "tenants[0].web_sign_in.helper_resource",
            "tenants[0].web_sign_in.display_name",
        ]
    );
    // A public client has no secret: there is no place for one.
    let err = Config::parse(
        &tenant(
            "https://login.t.example",
            "client_id = \"m\"\nclient_secret = \"no\"\n",
        ),
        dir.path(),
    )
    .unwrap_err();
    assert!(err.to_string().contains("client_secret"), "{err}");
}

#[test]
fn report_query_limits_default_and_are_checked() {
    let tenant = "[[tenants]]\nid = \"t\"\nissuer = \"https://idp.example\"\n";
    let config = Config::parse(tenant, Path::new(".")).unwrap();
    assert_eq!(
        (
            config.admin.reports_queries_per_tenant,
            config.admin.reports_queued_per_tenant
        ),
        (
            DEFAULT_REPORTS_QUERIES_PER_TENANT,
            DEFAULT_REPORTS_QUEUED_PER_TENANT
        )
    );
    let config = Config::parse(
        &format!(
            "[admin]\nreports_queries_per_tenant = 2\nreports_queued_per_tenant = 0\n{tenant}"
        ),
        Path::new("."),
    )
    .unwrap();
    assert_eq!(
        (
            config.admin.reports_queries_per_tenant,
            config.admin.reports_queued_per_tenant
        ),
        (2, 0)
    );
    let fields: Vec<String> = problems(
        &format!(
            "[admin]\nreports_queries_per_tenant = 0\nreports_queued_per_tenant = 100000\n{tenant}"
        ),
        Path::new("."),
    )
    .into_iter()
    .map(|p| p.field)
    .collect();
    assert_eq!(
        fields,
        [
            "admin.reports_queries_per_tenant",
            "admin.reports_queued_per_tenant"
        ]
    );
}

#[test]
fn forwarder_settings_are_checked_with_their_field_paths() {
    let tenant = "[[tenants]]\nid = \"t\"\nissuer = \"https://idp.example\"\n";
    let fields = |section: &str| -> Vec<String> {
        problems(&format!("{section}\n{tenant}"), Path::new("."))
            .into_iter()
            .map(|p| p.field)
            .collect()
    };
    assert_eq!(
        fields(
            "[forwarder]\nmax_packet_bytes = 100\nsession_bytes_per_sec = 0\nmax_routes = 20000000"
        ),
        [
            "forwarder.max_packet_bytes",
            "forwarder.session_bytes_per_sec",
            "forwarder.max_routes"
        ]
    );
    assert_eq!(
        fields("[forwarder]\nburst_bytes = 1000"),
        ["forwarder.burst_bytes"]
    );
    assert!(matches!(
        Config::parse(&format!("[forwarder]\nport = 1\n{tenant}"), Path::new(".")),
        Err(ConfigError::Syntax(_))
    ));
    let config = Config::parse(
        &format!("[forwarder]\nenabled = false\nsession_bytes_per_sec = 1000000\n{tenant}"),
        Path::new("."),
    )
    .unwrap();
    assert!(!config.forwarder.enabled);
    assert_eq!(config.forwarder.max_packet_bytes, 1472);
    // The burst follows the rate when not given: a tenth of a second, at least 64 KiB.
    assert_eq!(config.forwarder.burst_bytes, 100_000);
}
