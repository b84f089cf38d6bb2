//! Test harness: real relays on 127.0.0.1:0 with real tenants (real keys, real JWKS
//! files, real signed tokens) and real QUIC clients.
#![allow(dead_code)]

pub mod browser;
pub mod csv;
pub mod daemon;
pub mod oidc;
pub mod packet_path;
pub mod skip;
pub mod webtransport;

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use jsonwebtoken::Algorithm;
use remote_help_proto::v1::ConsentRequest;
use remote_help_relay::auth::TenantTrust;
use remote_help_relay::claim_map::ClaimMapping;
use remote_help_relay::client::{Client, ClientError, ClientOptions, SessionStart};
use remote_help_relay::config::{Config, DEFAULT_AUDIENCE, Tenant, load_jwks};
use remote_help_relay::core::policy::{
    Assignment, HELP_DESK_OPERATOR, Role as RbacRole, Scope, TenantPolicy,
};
use remote_help_relay::core::{Mode, Role, TenantId};
use remote_help_relay::dev::{Persona, persona_claims};
use remote_help_relay::issuer::{TokenSigner, TokenSpec, jwks_of};
use remote_help_relay::server::{self, ServerHandle};
use remote_help_relay::tenant_keys::{KeySource, ProviderKeys};
use remote_help_relay::tls::RelayTrust;
use serde_json::{Map, Value};

/// Every await in a test is bounded by this; a hang fails the test instead of stalling CI.
pub const STEP: Duration = Duration::from_secs(20);

/// Awaits `future`, failing the test if it takes longer than [`STEP`].
pub async fn within<T>(future: impl Future<Output = T>) -> T {
    tokio::time::timeout(STEP, future)
        .await
        .expect("step did not finish in time")
}

pub fn now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// A tenant with its own signing key(s) and JWKS file.
pub struct TestTenant {
    pub id: String,
    pub issuer: String,
    /// The key tokens are signed with by default.
    pub signer: TokenSigner,
    /// Further keys in the tenant's JWK Set (key rotation).
    pub more_signers: Vec<TokenSigner>,
    pub jwks_file: PathBuf,
    /// The tenant's own `aud`, if not the relay's.
    pub audience: Option<String>,
    /// Where its tokens carry the identity claims.
    pub claims: ClaimMapping,
}

impl TestTenant {
    pub fn new(
        dir: &std::path::Path,
        id: &str,
        signer: TokenSigner,
        more_signers: Vec<TokenSigner>,
    ) -> TestTenant {
        let jwks_file = dir.join(format!("{id}.jwks.json"));
        let all: Vec<&TokenSigner> = std::iter::once(&signer)
            .chain(more_signers.iter())
            .collect();
        std::fs::write(
            &jwks_file,
            serde_json::to_string(&jwks_of(&all).unwrap()).unwrap(),
        )
        .unwrap();
        TestTenant {
            id: id.into(),
            issuer: format!("https://login.{id}.example/"),
            signer,
            more_signers,
            jwks_file,
            audience: None,
            claims: ClaimMapping::default(),
        }
    }

    /// The tenant as the relay is configured with it: enabled, and the `helpdesk` group
    /// holding the built-in Help Desk Operator role for every user and device.
    pub fn config(&self) -> Tenant {
        Tenant {
            trust: TenantTrust {
                id: TenantId::new(&self.id),
                issuer: self.issuer.clone(),
                keys: load_jwks(&self.jwks_file).unwrap().into(),
                audience: self.audience.clone(),
                claims: self.claims.clone(),
            },
            keys_from: KeySource::File(self.jwks_file.clone()),
            policy: TenantPolicy {
                enabled: true,
                assignments: vec![Assignment {
                    permissions: RbacRole::help_desk_operator().permissions,
                    role: HELP_DESK_OPERATOR.into(),
                    members: ["helpdesk".to_string()].into(),
                    scope: Scope::from_entries(["all_users", "all_devices"]),
                }],
                ..TenantPolicy::default()
            },
            admin_audience: None,
            web_sign_in: None,
        }
    }

    /// The claims of a valid token for `persona`, to adjust before signing.
    pub fn spec(&self, persona: Persona) -> TokenSpec {
        let (subject, extra) = persona_claims(persona, None);
        TokenSpec {
            issuer: self.issuer.clone(),
            audience: DEFAULT_AUDIENCE.into(),
            tenant: self.id.clone(),
            subject,
            issued_at: now(),
            expires_at: now() + 3600,
            extra,
        }
    }

    pub fn token(&self, persona: Persona) -> String {
        self.sign(&self.spec(persona))
    }

    pub fn sign(&self, spec: &TokenSpec) -> String {
        self.signer.sign(&spec.claims()).unwrap()
    }

    pub fn sign_claims(&self, claims: &Value) -> String {
        self.signer.sign(claims).unwrap()
    }
}

pub fn rsa_signer(kid: &str) -> TokenSigner {
    let pem = include_str!("../fixtures/rsa-test-key.pem");
    TokenSigner::from_pem(kid, Algorithm::RS256, pem).unwrap()
}

/// A running relay with its tenants. Shut it down with [`TestRelay::stop`].
pub struct TestRelay {
    pub handle: ServerHandle,
    pub tenants: Vec<TestTenant>,
    /// See [`TestRelayBuilder::plaintext_clients`].
    plaintext_clients: bool,
    /// See [`TestRelayBuilder::packet_path_clients`].
    packet_path_clients: bool,
    _dir: tempfile::TempDir,
}

type ConfigTweak = Box<dyn FnOnce(&mut Config)>;

/// Builds a [`TestRelay`]; by default one Ed25519 tenant "contoso".
pub struct TestRelayBuilder {
    dir: tempfile::TempDir,
    tenants: Vec<TestTenant>,
    tweak: Vec<ConfigTweak>,
    plaintext_clients: bool,
    packet_path_clients: bool,
}

impl TestRelay {
    pub fn builder() -> TestRelayBuilder {
        TestRelayBuilder {
            dir: tempfile::tempdir().unwrap(),
            tenants: Vec::new(),
            tweak: Vec::new(),
            plaintext_clients: false,
            packet_path_clients: false,
        }
    }

    pub async fn start() -> TestRelay {
        TestRelay::builder().start().await
    }

    /// The folder this relay writes its audit files to.
    pub fn audit_dir(&self) -> PathBuf {
        self._dir.path().join("audit")
    }

    pub fn addr(&self) -> SocketAddr {
        self.handle.local_addr()
    }

    pub fn tenant(&self, id: &str) -> &TestTenant {
        self.tenants.iter().find(|t| t.id == id).unwrap()
    }

    /// Options for a client of this relay: protecting (the SDK's default), or opted out
    /// when the relay was built with [`TestRelayBuilder::plaintext_clients`].
    pub fn options(&self, token: String, role: Role) -> ClientOptions {
        let mut options = ClientOptions::new(
            self.addr(),
            RelayTrust::Pin(self.handle.fingerprint()),
            token,
            role,
        );
        options.packet_path = self.packet_path_clients;
        if self.plaintext_clients {
            options.insecure_plaintext_for_measurement()
        } else {
            options
        }
    }

    pub async fn connect(&self, token: String, role: Role) -> Result<Client, ClientError> {
        within(Client::connect(self.options(token, role))).await
    }

    pub async fn helper(&self, tenant: &str) -> Client {
        self.connect(self.tenant(tenant).token(Persona::Helper), Role::Helper)
            .await
            .unwrap()
    }

    pub async fn sharer(&self, tenant: &str) -> Client {
        self.connect(self.tenant(tenant).token(Persona::Sharer), Role::Sharer)
            .await
            .unwrap()
    }

    /// A helper and a sharer of `tenant` in an active session in `mode`.
    pub async fn paired(&self, tenant: &str, mode: Mode) -> (Client, Client) {
        let mut helper = self.helper(tenant).await;
        let mut sharer = self.sharer(tenant).await;
        let created = within(helper.create_session(mode)).await.unwrap();
        join_and_consent(&mut helper, &mut sharer, &created.code).await;
        (helper, sharer)
    }

    /// Waits until the relay holds no sessions and no connections: nothing leaked.
    pub async fn wait_until_empty(&self) {
        within(self.handle.wait_for(|s| {
            s.sessions == 0 && s.connections == 0 && s.registered == 0 && s.tasks == 0
        }))
        .await;
    }

    pub async fn stop(self) {
        within(self.handle.shutdown()).await;
    }
}

impl TestRelayBuilder {
    pub fn tenant(self, id: &str, signer: TokenSigner) -> Self {
        self.tenant_with_keys(id, signer, Vec::new())
    }

    /// A tenant whose JWK Set holds several keys at once, as during rotation.
    pub fn tenant_with_keys(
        mut self,
        id: &str,
        signer: TokenSigner,
        more: Vec<TokenSigner>,
    ) -> Self {
        self.tenants
            .push(TestTenant::new(self.dir.path(), id, signer, more));
        self
    }

    /// A tenant shaped like an identity provider's: its own issuer, audience and claim
    /// mapping (tokens are then signed with [`TestTenant::sign_claims`]).
    pub fn provider_tenant(
        mut self,
        id: &str,
        signer: TokenSigner,
        issuer: &str,
        audience: Option<&str>,
        claims: ClaimMapping,
    ) -> Self {
        let mut tenant = TestTenant::new(self.dir.path(), id, signer, Vec::new());
        tenant.issuer = issuer.into();
        tenant.audience = audience.map(String::from);
        tenant.claims = claims;
        self.tenants.push(tenant);
        self
    }

    /// Adjusts the policy of tenant `id` before the relay starts.
    pub fn policy(self, id: &str, tweak: impl FnOnce(&mut TenantPolicy) + 'static) -> Self {
        let id = id.to_string();
        self.config(move |c| {
            let tenant = c
                .tenants
                .iter_mut()
                .find(|t| t.trust.id.as_str() == id)
                .expect("tenant");
            tweak(&mut tenant.policy);
        })
    }

    pub fn config(mut self, tweak: impl FnOnce(&mut Config) + 'static) -> Self {
        self.tweak.push(Box::new(tweak));
        self
    }

    /// For tests of the relay's forwarding, which send and read frames as they are through
    /// the SDK's unsealed calls: the tenants do not require end-to-end protection, and the
    /// clients [`TestRelay::options`] (and so `connect`, `helper`, `sharer`, `paired`)
    /// makes opt out of it, explicitly, as a protecting client refuses unsealed calls.
    /// Tests of protection itself give each client's `Protection` (`started_with`).
    pub fn plaintext_clients(mut self) -> Self {
        self.plaintext_clients = true;
        self
    }

    /// Clients announce the packet path (the SDK's default; relay/tests/packet_path.rs).
    /// Without it the clients [`TestRelay::options`] makes use the stream path, which the
    /// tests of the relay's stream forwarding and of sealed channels are about.
    pub fn packet_path_clients(mut self) -> Self {
        self.packet_path_clients = true;
        self
    }

    pub async fn start(mut self) -> TestRelay {
        if self.tenants.is_empty() {
            self = self.tenant(
                "contoso",
                TokenSigner::generate_ed25519("contoso-1").unwrap(),
            );
        }
        let mut config = Config::with_defaults(
            "127.0.0.1:0".parse().unwrap(),
            self.tenants.iter().map(TestTenant::config).collect(),
        );
        config.drain_timeout = Duration::ZERO;
        config.audit.dir = self.dir.path().join("audit");
        config.state_dir = self.dir.path().join("state");
        if self.plaintext_clients {
            for tenant in &mut config.tenants {
                tenant.policy.require_end_to_end = false;
            }
        }
        for tweak in self.tweak {
            tweak(&mut config);
        }
        let handle = server::spawn(config).unwrap();
        TestRelay {
            handle,
            tenants: self.tenants,
            plaintext_clients: self.plaintext_clients,
            packet_path_clients: self.packet_path_clients,
            _dir: self.dir,
        }
    }
}

/// The sharer joins `code` and consents; returns once the helper sees the session start,
/// with the helper's and the sharer's `SessionStart`.
pub async fn join_and_consent(
    helper: &mut Client,
    sharer: &mut Client,
    code: &str,
) -> (SessionStart, SessionStart) {
    within(sharer.join(code)).await.unwrap();
    within(helper.wait_for_sharer()).await.unwrap();
    let sharer_start = within(sharer.accept()).await.unwrap();
    let helper_start = within(helper.wait_for_start()).await.unwrap();
    (helper_start, sharer_start)
}

/// The helper raises the session to `mode` and the sharer consents; returns the consent
/// request the sharer was shown, once both sides are in `mode`.
pub async fn raise_with_consent(
    helper: &mut Client,
    sharer: &mut Client,
    mode: Mode,
    reason: &str,
) -> ConsentRequest {
    let (raised, answered) = within(async {
        tokio::join!(helper.request_mode(mode, reason), async {
            let request = sharer.wait_for_consent_request().await?;
            sharer.answer_mode_change(true).await.map(|m| (request, m))
        })
    })
    .await;
    assert_eq!(raised.unwrap(), mode);
    let (request, answered) = answered.unwrap();
    assert_eq!(answered, Some(mode));
    request
}

/// Extra claims merged over a persona's.
pub fn with_claims(mut spec: TokenSpec, extra: Value) -> TokenSpec {
    if let Value::Object(map) = extra {
        let merged: &mut Map<String, Value> = &mut spec.extra;
        merged.extend(map);
    }
    spec
}

/// One HTTP/1.1 request; returns the status and the body.
pub async fn http(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String) {
    let (status, _, body) = http_with_head(addr, method, path, token).await;
    (status, body)
}

/// One HTTP/1.1 request; returns the status, the response's head (status line and
/// headers, as sent) and the body.
pub async fn http_with_head(
    addr: SocketAddr,
    method: &str,
    path: &str,
    token: Option<&str>,
) -> (u16, String, String) {
    let mut stream = within(tokio::net::TcpStream::connect(addr)).await.unwrap();
    let auth = token
        .map(|t| format!("Authorization: Bearer {t}\r\n"))
        .unwrap_or_default();
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: relay\r\n{auth}Content-Length: 0\r\nConnection: close\r\n\r\n"
    );
    within(stream.write_all(request.as_bytes())).await.unwrap();
    let mut response = String::new();
    within(stream.read_to_string(&mut response)).await.unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.split_whitespace().nth(1).unwrap().parse().unwrap();
    let chunked = head
        .to_ascii_lowercase()
        .contains("\r\ntransfer-encoding: chunked");
    let body = if chunked {
        dechunk(body)
    } else {
        body.to_string()
    };
    (status, head.to_string(), body)
}

/// The body of a `Transfer-Encoding: chunked` response (a streamed answer, such as the
/// reports CSV export); fails the test when the last chunk is missing (an answer that
/// ended early).
pub fn dechunk(mut raw: &str) -> String {
    let mut body = String::new();
    loop {
        let (size, rest) = raw
            .split_once("\r\n")
            .unwrap_or_else(|| panic!("a chunked body without its last chunk: {raw:?}"));
        let size = usize::from_str_radix(size.split(';').next().unwrap().trim(), 16)
            .unwrap_or_else(|e| panic!("chunk size {size:?}: {e}"));
        if size == 0 {
            return body;
        }
        body.push_str(&rest[..size]);
        raw = rest[size..]
            .strip_prefix("\r\n")
            .expect("CRLF after each chunk");
    }
}

/// The relay's metrics now, by series (`name{labels}` as exposed) to value.
pub async fn metrics(admin: SocketAddr) -> std::collections::HashMap<String, f64> {
    let (_, body) = http(admin, "GET", "/metrics", None).await;
    body.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter_map(|(k, v)| Some((k.to_string(), v.parse().ok()?)))
        .collect()
}

/// A started session of `tenant` in `mode` with both sides' end-to-end key exchange done.
pub async fn secured(
    relay: &TestRelay,
    mode: remote_help_relay::core::Mode,
) -> (
    Client,
    remote_help_relay::client::secure::SecureSession,
    Client,
    remote_help_relay::client::secure::SecureSession,
) {
    secured_with(
        relay,
        mode,
        remote_help_relay::client::Protection::default(),
        remote_help_relay::client::Protection::default(),
    )
    .await
}

/// Like [`secured`], with each side's protection (announced suites) given.
pub async fn secured_with(
    relay: &TestRelay,
    mode: remote_help_relay::core::Mode,
    helper_protection: remote_help_relay::client::Protection,
    sharer_protection: remote_help_relay::client::Protection,
) -> (
    Client,
    remote_help_relay::client::secure::SecureSession,
    Client,
    remote_help_relay::client::secure::SecureSession,
) {
    use remote_help_relay::client::secure;
    let (helper, sharer, helper_start, sharer_start) =
        started_with(relay, mode, helper_protection, sharer_protection).await;
    let (h, s) = within(async {
        tokio::join!(
            secure::establish(&helper, &helper_start, Role::Helper),
            secure::establish(&sharer, &sharer_start, Role::Sharer)
        )
    })
    .await;
    (helper, h.unwrap(), sharer, s.unwrap())
}

/// A helper and a sharer of `contoso` with the given protection, in a started session;
/// with both sides' `SessionStart`.
pub async fn started_with(
    relay: &TestRelay,
    mode: remote_help_relay::core::Mode,
    helper_protection: remote_help_relay::client::Protection,
    sharer_protection: remote_help_relay::client::Protection,
) -> (Client, Client, SessionStart, SessionStart) {
    let tenant = relay.tenant("contoso");
    let mut options = relay.options(tenant.token(Persona::Helper), Role::Helper);
    options.protection = helper_protection;
    let mut helper = within(Client::connect(options)).await.unwrap();
    let mut options = relay.options(tenant.token(Persona::Sharer), Role::Sharer);
    options.protection = sharer_protection;
    let mut sharer = within(Client::connect(options)).await.unwrap();
    let created = within(helper.create_session(mode)).await.unwrap();
    within(sharer.join(&created.code)).await.unwrap();
    within(helper.wait_for_sharer()).await.unwrap();
    let sharer_start = within(sharer.accept()).await.unwrap();
    let helper_start = within(helper.wait_for_start()).await.unwrap();
    (helper, sharer, helper_start, sharer_start)
}

/// Makes tenant `id` of `config` take its keys from an identity provider (`source`: by
/// discovery or `jwks_uri`) instead of its file, and returns it for further settings.
pub fn keys_from_provider<'a>(
    config: &'a mut Config,
    id: &str,
    source: ProviderKeys,
) -> &'a mut Tenant {
    let tenant = config
        .tenants
        .iter_mut()
        .find(|t| t.trust.id.as_str() == id)
        .unwrap_or_else(|| panic!("no tenant {id} in the test config"));
    tenant.trust.keys = remote_help_relay::auth::KeySet::empty();
    tenant.keys_from = KeySource::Provider(source);
    tenant
}

/// The operator's bearer token of the reports tests' relays.
pub const OPERATOR_TOKEN: &str = "operator-token-0123456789";
/// The administration audience of the default audience (`<aud>/admin`).
pub const ADMIN_AUDIENCE: &str = "remote-help-relay/admin";

/// Grants `read_reports` to `report-readers` and `end_sessions` to `report-admins`.
pub fn report_roles(policy: &mut remote_help_relay::core::policy::TenantPolicy) {
    for (group, permission) in [
        (
            "report-readers",
            remote_help_relay::core::policy::Permission::ReadReports,
        ),
        (
            "report-admins",
            remote_help_relay::core::policy::Permission::EndSessions,
        ),
    ] {
        policy.assignments.push(Assignment {
            permissions: remote_help_relay::core::policy::PermissionSet::granting([permission]),
            role: format!("{group} role"),
            members: [group.to_string()].into(),
            scope: Scope::from_entries(["all_users"]),
        });
    }
}
