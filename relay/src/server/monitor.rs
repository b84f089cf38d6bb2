//! The Monitor page (`/monitor/`, `docs/reports.md`, "The Monitor page"): three static files
//! built into the binary and served on the admin listener beside the reports API, so the
//! page and the API share one origin (no CORS). The page holds no data of its own: it calls
//! the reports API with the administrator's token, so it shows exactly what the API allows.
//!
//! Tenants with `[tenants.web_sign_in]` are offered as sign-in choices
//! (`/monitor/sign-in.json`, public: nothing in it is secret); the page then signs in at the
//! tenant's provider itself (authorization code with PKCE, `relay/web/shared/oidc.js`), so
//! the Content-Security-Policy lets it reach those issuers' origins, and nothing else.

use std::collections::BTreeSet;
use std::sync::Arc;

use axum::extract::State;
use axum::http::{HeaderValue, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Serialize;

use super::hub::Hub;
use crate::config::{Config, Tenant, WebSignIn};

const INDEX_HTML: &str = include_str!("../../web/monitor/index.html");
const MONITOR_JS: &str = include_str!("../../web/monitor/monitor.js");
const MONITOR_CSS: &str = include_str!("../../web/monitor/monitor.css");
/// The shared sign-in module, served to the Monitor and helper pages alike.
pub(crate) const OIDC_JS: &str = include_str!("../../web/shared/oidc.js");

/// The page's Content-Security-Policy without browser sign-in: scripts, styles and requests
/// from this origin only, no inline script or style, no frames, no forms posted anywhere.
/// `blob:` for `connect-src` lets the page (and its tests) read back the CSV it offers as a
/// download.
pub const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; connect-src 'self' blob:; img-src 'self' data:; base-uri 'none'; \
     form-action 'none'; frame-ancestors 'none'";

/// The policy when the page may sign in at `origins` (the configured issuers' origins):
/// [`CONTENT_SECURITY_POLICY`] with exactly those added to `connect-src`, for the discovery
/// document and the token endpoint. The sign-in itself is a top-level navigation to the
/// provider, which no directive of this page governs; `form-action` stays `'none'`.
pub fn content_security_policy<'a>(origins: impl IntoIterator<Item = &'a str>) -> String {
    let origins: BTreeSet<&str> = origins.into_iter().collect();
    let mut connect = String::from("'self' blob:");
    for origin in origins {
        connect.push(' ');
        connect.push_str(origin);
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; connect-src {connect}; \
         img-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    )
}

/// One tenant the page offers to sign in with (`GET /monitor/sign-in.json`): what the page
/// needs to run the authorization code flow with PKCE at the tenant's provider. All of it
/// is public (a public client has no secret).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SignInChoice {
    /// The tenant's id.
    pub tenant: String,
    /// The name to show (the tenant's `display_name`, or its id).
    pub display_name: String,
    /// The tenant's issuer: discovery is at `{issuer}/.well-known/openid-configuration`.
    pub issuer: String,
    /// The public client's id at the provider.
    pub client_id: String,
    /// The scopes to ask for (`openid` among them).
    pub scopes: Vec<String>,
    /// The `resource` parameter to send, if any (RFC 8707).
    pub resource: Option<String>,
    /// The audience the relay requires of the resulting token (the tenant's administration
    /// audience for the Monitor page, its session audience for the helper page), so the
    /// page can say what the provider must issue.
    pub audience: String,
    /// The issuer's origin, which the page's Content-Security-Policy allows.
    #[serde(skip)]
    pub origin: String,
}

impl SignInChoice {
    /// The Monitor page's choices: `config`'s tenants with `web_sign_in`, in the config's
    /// order, each for a token of the tenant's administration audience (`resource`).
    pub fn from_config(config: &Config) -> Vec<SignInChoice> {
        Self::choices(config, |tenant, sign_in| {
            (
                sign_in.resource.clone(),
                tenant
                    .admin_audience
                    .clone()
                    .unwrap_or_else(|| config.admin_audience.clone()),
            )
        })
    }

    /// The web helper page's choices (`GET /helper/sign-in.json`, docs/web-helper.md): the
    /// same tenants and public client, each for a token of the tenant's session audience
    /// (the one helpers' tokens carry), asked for with `helper_resource` (none by default),
    /// never with the administration `resource`.
    pub fn for_helpers(config: &Config) -> Vec<SignInChoice> {
        Self::choices(config, |tenant, sign_in| {
            (
                sign_in.helper_resource.clone(),
                tenant
                    .trust
                    .audience
                    .clone()
                    .unwrap_or_else(|| config.audience.clone()),
            )
        })
    }

    /// The choices of `config`'s tenants with `web_sign_in`, in the config's order, with
    /// the `resource` and the audience `target` picks for each.
    fn choices(
        config: &Config,
        target: impl Fn(&Tenant, &WebSignIn) -> (Option<String>, String),
    ) -> Vec<SignInChoice> {
        config
            .tenants
            .iter()
            .filter_map(|t| {
                let sign_in: &WebSignIn = t.web_sign_in.as_ref()?;
                let (resource, audience) = target(t, sign_in);
                Some(SignInChoice {
                    tenant: t.trust.id.as_str().to_string(),
                    display_name: sign_in
                        .display_name
                        .clone()
                        .unwrap_or_else(|| t.trust.id.as_str().to_string()),
                    issuer: t.trust.issuer.clone(),
                    client_id: sign_in.client_id.clone(),
                    scopes: sign_in.scopes.clone(),
                    resource,
                    audience,
                    // Checked at load: a tenant with web_sign_in has an https issuer.
                    origin: WebSignIn::origin_of(&t.trust.issuer)?,
                })
            })
            .collect()
    }
}

/// The Monitor page's routes, to merge into the admin listener's router. The sign-in
/// choices and the policy follow `hub`'s current configuration (a reload changes them).
pub fn router(hub: Arc<Hub>) -> Router {
    Router::new()
        .route(
            "/monitor",
            get(|| async { Redirect::permanent("/monitor/") }),
        )
        .route(
            "/monitor/",
            get(|State(hub): State<Arc<Hub>>| async move {
                file(&hub, INDEX_HTML, "text/html; charset=utf-8")
            }),
        )
        .route(
            "/monitor/monitor.js",
            get(|State(hub): State<Arc<Hub>>| async move {
                file(&hub, MONITOR_JS, "text/javascript; charset=utf-8")
            }),
        )
        .route(
            "/monitor/oidc.js",
            get(|State(hub): State<Arc<Hub>>| async move {
                file(&hub, OIDC_JS, "text/javascript; charset=utf-8")
            }),
        )
        .route(
            "/monitor/monitor.css",
            get(|State(hub): State<Arc<Hub>>| async move {
                file(&hub, MONITOR_CSS, "text/css; charset=utf-8")
            }),
        )
        .route("/monitor/sign-in.json", get(sign_in_choices))
        .with_state(hub)
}

/// `GET /monitor/sign-in.json`: the tenants the page offers to sign in with. No token: the
/// page needs it before anyone has signed in, and it holds nothing secret.
async fn sign_in_choices(State(hub): State<Arc<Hub>>) -> Response {
    let choices = hub.policies().sign_in.clone();
    let mut response = Json(choices).into_response();
    response
        .headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

/// One file with the page's headers. `no-cache`: the files change with the relay's version,
/// and a stale script against a newer API would misbehave; they are small.
fn file(hub: &Hub, body: &'static str, content_type: &'static str) -> Response {
    let policy = content_security_policy(
        hub.policies()
            .sign_in
            .iter()
            .map(|choice| choice.origin.as_str()),
    );
    let mut response = body.into_response();
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        // The origins were checked at load (https, no separators); should one still not
        // fit a header, the page keeps the strict policy and its browser sign-in fails.
        HeaderValue::from_str(&policy)
            .unwrap_or_else(|_| HeaderValue::from_static(CONTENT_SECURITY_POLICY)),
    );
    headers.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    headers.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    headers.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_adds_exactly_the_issuers_origins_to_connect_src() {
        assert_eq!(
            content_security_policy(std::iter::empty()),
            CONTENT_SECURITY_POLICY
        );
        let policy = content_security_policy([
            "https://login.b.example",
            "https://login.a.example:8443",
            "https://login.b.example",
        ]);
        assert!(
            policy.contains(
                "connect-src 'self' blob: https://login.a.example:8443 https://login.b.example;"
            ),
            "{policy}"
        );
        assert!(policy.contains("form-action 'none'"), "{policy}");
        assert!(policy.contains("script-src 'self';"), "{policy}");
    }
}
