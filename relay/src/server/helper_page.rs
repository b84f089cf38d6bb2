//! The web helper page (`/helper/`, `docs/web-helper.md`): a browser client of the relay.
//! Its static files are built into the binary; the page signs in with a pasted token,
//! reaches the relay over WebTransport (PROTOCOL.md §2a) and speaks the same protocol as
//! native clients, end-to-end protection (suite 2, WebCrypto) and content profile v1
//! included. `GET /helper/config.json` tells it where the relay's WebTransport endpoint is
//! and, when the relay's certificate allows it, which certificate hash to accept.
//!
//! The routes live here and join the web surface ([`super::web::web_routes`]), which both
//! the admin listener and the `[web]` HTTPS listener serve.
//!
//! Besides a pasted token, the page signs in at a tenant's OpenID Connect provider where the
//! tenant has `[tenants.web_sign_in]` (`GET /helper/sign-in.json`; authorization code with
//! PKCE by the Monitor page's module, served here as `/helper/oidc.js`), for a token of the
//! tenant's session audience; the page's Content-Security-Policy then lets it reach exactly
//! those issuers' origins.

use axum::Router;
use axum::extract::State;
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use base64::Engine as _;
use rustls_pki_types::CertificateDer;
use std::sync::Arc;

use super::hub::Hub;
use crate::tls::browser::BrowserCertificates;

/// The page's files: name under `/helper/`, content, media type.
const FILES: &[(&str, &str, &str)] = &[
    ("", include_str!("../../web/helper/index.html"), HTML),
    (
        "helper.css",
        include_str!("../../web/helper/helper.css"),
        CSS,
    ),
    ("helper.js", include_str!("../../web/helper/helper.js"), JS),
    ("relay.js", include_str!("../../web/helper/relay.js"), JS),
    ("wire.js", include_str!("../../web/helper/wire.js"), JS),
    ("e2e.js", include_str!("../../web/helper/e2e.js"), JS),
    (
        "content.js",
        include_str!("../../web/helper/content.js"),
        JS,
    ),
    ("errors.js", include_str!("../../web/helper/errors.js"), JS),
    ("oidc.js", super::monitor::OIDC_JS, JS),
];

const HTML: &str = "text/html; charset=utf-8";
const CSS: &str = "text/css; charset=utf-8";
const JS: &str = "text/javascript; charset=utf-8";

/// The longest validity a certificate may have for browsers to accept it by hash
/// (WebTransport's `serverCertificateHashes`: at most two weeks).
pub const MAX_HASHED_CERTIFICATE_VALIDITY_SECS: i64 = 14 * 24 * 3600;

/// What the page needs to know about the relay it is served by.
#[derive(Clone, Debug)]
pub struct HelperPage {
    /// The relay's QUIC (and so WebTransport) UDP port.
    pub webtransport_port: u16,
    /// SHA-256 digests of the configured certificate when browsers may accept it by hash
    /// (an operator's own short-lived ECDSA certificate); empty when it does not qualify
    /// (then browsers verify it by Web PKI) or when `browser_certificates` serve browsers.
    pub certificate_hashes: Vec<[u8; 32]>,
    /// The rotating short-lived certificates a relay on its self-signed development
    /// certificate serves WebTransport clients (`tls::browser`); read at every request, so
    /// a rotation shows at once.
    pub browser_certificates: Option<Arc<BrowserCertificates>>,
}

impl HelperPage {
    /// The page for a relay on `webtransport_port` presenting `leaf`: its hash is published
    /// when the certificate qualifies ([`qualifies_for_certificate_hashes`]).
    pub fn new(
        webtransport_port: u16,
        leaf: &CertificateDer<'_>,
        browser_certificates: Option<Arc<BrowserCertificates>>,
    ) -> HelperPage {
        let certificate_hashes =
            if browser_certificates.is_none() && qualifies_for_certificate_hashes(leaf) {
                vec![crate::tls::Fingerprint::of(leaf).0]
            } else {
                Vec::new()
            };
        HelperPage {
            webtransport_port,
            certificate_hashes,
            browser_certificates,
        }
    }
}

/// Whether browsers accept `leaf` by its hash alone (WebTransport `serverCertificateHashes`):
/// an X.509 certificate with an ECDSA key, valid for at most 14 days in all. Chromium refuses
/// any other, so publishing its hash would only make the connection fail.
pub fn qualifies_for_certificate_hashes(leaf: &CertificateDer<'_>) -> bool {
    let Ok((_, cert)) = x509_parser::parse_x509_certificate(leaf.as_ref()) else {
        return false;
    };
    let validity = cert.validity();
    let span = validity.not_after.timestamp() - validity.not_before.timestamp();
    let ecdsa = cert.public_key().algorithm.algorithm
        == x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY;
    ecdsa && (0..=MAX_HASHED_CERTIFICATE_VALIDITY_SECS).contains(&span)
}

/// What the page's routes share: the page, and the hub whose current configuration says
/// which tenants it offers to sign in with (a reload changes them).
#[derive(Clone)]
struct PageState {
    page: HelperPage,
    hub: Arc<Hub>,
}

impl PageState {
    /// The policy for a page loaded from `host`: the WebTransport origin and the sign-in
    /// issuers' origins.
    fn csp(&self, host: &str) -> String {
        let policies = self.hub.policies();
        csp_with_sign_in(
            host,
            self.page.webtransport_port,
            policies.helper_sign_in.iter().map(|c| c.origin.as_str()),
        )
    }
}

/// The helper page's routes (`/helper`, `/helper/`, its files, `/helper/config.json` and
/// `/helper/sign-in.json`), to merge into a listener's router.
pub fn routes(page: HelperPage, hub: Arc<Hub>) -> Router {
    let mut router = Router::new()
        .route("/helper", get(|| async { Redirect::permanent("/helper/") }))
        .route("/helper/config.json", get(config_json))
        .route("/helper/sign-in.json", get(sign_in_choices));
    for &(name, body, content_type) in FILES {
        router = router.route(
            &format!("/helper/{name}"),
            get(
                move |State(state): State<PageState>, headers: HeaderMap| async move {
                    match host_of(&headers) {
                        Some(host) => file(body, content_type, &state.csp(&host)),
                        None => bad_host(),
                    }
                },
            ),
        );
    }
    router.with_state(PageState { page, hub })
}

/// `GET /helper/sign-in.json`: the tenants the page offers to sign in with at their
/// provider, each for a token of the tenant's session audience. No token: the page needs it
/// before anyone has signed in, and nothing in it is secret.
async fn sign_in_choices(State(state): State<PageState>, headers: HeaderMap) -> Response {
    let Some(host) = host_of(&headers) else {
        return bad_host();
    };
    let choices = state.hub.policies().helper_sign_in.clone();
    let body = serde_json::to_string(&choices).unwrap_or_else(|_| "[]".into());
    with_headers(body.into_response(), "application/json", &state.csp(&host))
}

/// `GET /helper/config.json`: the WebTransport URL on the host the page was loaded from, and
/// the certificate hashes a browser may accept.
async fn config_json(State(state): State<PageState>, headers: HeaderMap) -> Response {
    let Some(host) = host_of(&headers) else {
        return bad_host();
    };
    let page = &state.page;
    let hashes: Vec<serde_json::Value> = match &page.browser_certificates {
        Some(browser) => browser
            .hashes()
            .into_iter()
            .map(|h| serde_json::json!({ "algorithm": h.algorithm, "value": h.value }))
            .collect(),
        None => page
            .certificate_hashes
            .iter()
            .map(|h| {
                serde_json::json!({
                    "algorithm": "sha-256",
                    "value": base64::engine::general_purpose::STANDARD.encode(h),
                })
            })
            .collect(),
    };
    let body = serde_json::json!({
        "webtransport_url": format!("https://{host}:{}/remote-help/1", page.webtransport_port),
        "server_certificate_hashes": hashes,
    });
    with_headers(
        body.to_string().into_response(),
        "application/json",
        &state.csp(&host),
    )
}

/// The host (no port) of the request's `Host` header, when it is a plain DNS name, IPv4
/// literal or bracketed IPv6 literal. It goes into a URL and into the Content-Security-Policy,
/// so anything else (which could add a directive) is refused.
fn host_of(headers: &HeaderMap) -> Option<String> {
    let value = headers.get(header::HOST)?.to_str().ok()?;
    let host = if let Some(rest) = value.strip_prefix('[') {
        let (inner, _) = rest.split_once(']')?;
        if inner.is_empty()
            || !inner
                .chars()
                .all(|c| c.is_ascii_hexdigit() || c == ':' || c == '.')
        {
            return None;
        }
        return Some(format!("[{inner}]"));
    } else {
        value.split_once(':').map_or(value, |(h, _)| h)
    };
    let valid = !host.is_empty()
        && host.len() <= 253
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '-');
    valid.then(|| host.to_ascii_lowercase())
}

fn bad_host() -> Response {
    metrics::counter!("relay_helper_page_refused_total", "reason" => "host").increment(1);
    tracing::debug!("helper page: request without a usable Host header refused");
    (
        StatusCode::BAD_REQUEST,
        "the Host header names no usable host\n",
    )
        .into_response()
}

/// The page's Content-Security-Policy: like the Monitor page's (this origin only, no inline
/// script or style, no frames, no forms), plus the relay's WebTransport origin for
/// `connect-src`, which governs `new WebTransport(...)`.
pub fn csp(host: &str, webtransport_port: u16) -> String {
    csp_with_sign_in(host, webtransport_port, std::iter::empty())
}

/// [`csp`] when the page may sign in at `origins` (the configured issuers' origins): exactly
/// those join `connect-src`, for the discovery document and the token endpoint. The sign-in
/// itself is a top-level navigation to the provider, which no directive governs;
/// `form-action` stays `'none'`.
pub fn csp_with_sign_in<'a>(
    host: &str,
    webtransport_port: u16,
    origins: impl IntoIterator<Item = &'a str>,
) -> String {
    let origins: std::collections::BTreeSet<&str> = origins.into_iter().collect();
    let mut connect = format!("'self' https://{host}:{webtransport_port}");
    for origin in origins {
        connect.push(' ');
        connect.push_str(origin);
    }
    format!(
        "default-src 'none'; script-src 'self'; style-src 'self'; \
         connect-src {connect}; img-src 'self'; base-uri 'none'; \
         form-action 'none'; frame-ancestors 'none'"
    )
}

/// One file with the page's headers (as the Monitor page's, `no-cache` for the same reason:
/// the files change with the relay's version).
fn file(body: &'static str, content_type: &'static str, csp: &str) -> Response {
    with_headers(body.into_response(), content_type, csp)
}

fn with_headers(mut response: Response, content_type: &'static str, csp: &str) -> Response {
    let headers = response.headers_mut();
    headers.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    if let Ok(value) = HeaderValue::from_str(csp) {
        headers.insert(header::CONTENT_SECURITY_POLICY, value);
    }
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
    use remote_help_proto::ErrorCode;

    fn headers(host: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(header::HOST, HeaderValue::from_str(host).unwrap());
        h
    }

    #[test]
    fn the_policy_adds_exactly_the_issuers_origins_to_connect_src() {
        assert_eq!(
            csp("127.0.0.1", 4433),
            "default-src 'none'; script-src 'self'; style-src 'self'; \
             connect-src 'self' https://127.0.0.1:4433; img-src 'self'; base-uri 'none'; \
             form-action 'none'; frame-ancestors 'none'"
        );
        let policy = csp_with_sign_in(
            "relay.example",
            443,
            [
                "https://login.b.example",
                "https://login.a.example:8443",
                "https://login.b.example",
            ],
        );
        assert!(
            policy.contains(
                "connect-src 'self' https://relay.example:443 https://login.a.example:8443 \
                 https://login.b.example;"
            ),
            "{policy}"
        );
        assert!(policy.contains("form-action 'none'"), "{policy}");
    }

    #[test]
    fn the_host_header_is_taken_only_when_it_cannot_change_the_policy() {
        assert_eq!(
            host_of(&headers("127.0.0.1:8080")).as_deref(),
            Some("127.0.0.1")
        );
        assert_eq!(
            host_of(&headers("Relay.Example")).as_deref(),
            Some("relay.example")
        );
        assert_eq!(host_of(&headers("[::1]:9000")).as_deref(), Some("[::1]"));
        for bad in ["a;b", "evil; script-src *", "", "[::1", "[]:80", "a b"] {
            assert_eq!(host_of(&headers(bad)), None, "{bad:?}");
        }
    }

    #[test]
    fn only_a_short_lived_ecdsa_certificate_is_published_by_hash() {
        let make = |days: i64, alg: &'static rcgen::SignatureAlgorithm| {
            let key = rcgen::KeyPair::generate_for(alg).unwrap();
            let mut params = rcgen::CertificateParams::new(vec!["127.0.0.1".into()]).unwrap();
            params.not_before = time::OffsetDateTime::now_utc();
            params.not_after = params.not_before + time::Duration::days(days);
            params.self_signed(&key).unwrap().der().clone()
        };
        assert!(qualifies_for_certificate_hashes(&make(
            13,
            &rcgen::PKCS_ECDSA_P256_SHA256
        )));
        assert!(qualifies_for_certificate_hashes(&make(
            14,
            &rcgen::PKCS_ECDSA_P256_SHA256
        )));
        assert!(!qualifies_for_certificate_hashes(&make(
            15,
            &rcgen::PKCS_ECDSA_P256_SHA256
        )));
        assert!(!qualifies_for_certificate_hashes(&make(
            3,
            &rcgen::PKCS_ED25519
        )));
        assert!(!qualifies_for_certificate_hashes(&CertificateDer::from(
            vec![1, 2, 3]
        )));
        let page = HelperPage::new(4433, &make(10, &rcgen::PKCS_ECDSA_P256_SHA256), None);
        assert_eq!(page.certificate_hashes.len(), 1);
        let page = HelperPage::new(4433, &make(400, &rcgen::PKCS_ECDSA_P256_SHA256), None);
        assert!(page.certificate_hashes.is_empty());
    }

    /// The page shows each code's sentence from one table in `errors.js`; it must hold every
    /// code of the protocol, with the sentence `ErrorCode::describe` gives (PROTOCOL.md §7.2),
    /// and nothing else, so the two cannot drift apart.
    #[test]
    fn the_pages_error_table_has_every_code_with_its_sentence() {
        let js = include_str!("../../web/helper/errors.js");
        let codes: Vec<ErrorCode> = (0..).map_while(|n| ErrorCode::try_from(n).ok()).collect();
        assert!(codes.len() > 40);
        for code in &codes {
            let line = format!(
                "{}: [{}, {}],",
                *code as i32,
                serde_json::to_string(code.as_str_name()).unwrap(),
                serde_json::to_string(code.describe()).unwrap()
            );
            assert!(js.contains(&line), "errors.js lacks `{line}`");
        }
        let entries = js
            .lines()
            .filter(|l| {
                let l = l.trim_start();
                l.split_once(": [")
                    .is_some_and(|(n, _)| !n.is_empty() && n.chars().all(|c| c.is_ascii_digit()))
            })
            .count();
        assert_eq!(
            entries,
            codes.len(),
            "errors.js has codes the protocol lacks"
        );
    }
}
