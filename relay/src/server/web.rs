//! The web surface, and the `[web]` listener that serves it to people's browsers.
//!
//! The web surface is what a browser uses: the Monitor page (`/monitor/`, [`super::monitor`]),
//! the reports API (`/api/v1/reports/...`, [`super::reports`]) and the web helper page
//! (`/helper/`, [`super::helper_page`]).
//! [`web_routes`] composes them once; the admin listener mounts them beside `/metrics` and
//! `/admin/*`, and the `[web]` listener mounts them alone, so both serve one code path and
//! the admin and metrics endpoints never reach the web listener.
//!
//! The web listener speaks HTTPS with the configured certificate (rustls through
//! tokio-rustls, HTTP/1.1 through axum), or plain HTTP on a loopback address, for a reverse
//! proxy on the same machine; the config refuses plain HTTP anywhere else.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_rustls::server::TlsStream;
use tokio_util::sync::CancellationToken;
use tracing::{debug, warn};

use super::reports::Reports;
use crate::config::WebTls;
use crate::tls::browser::{BrowserCertificates, CertificateHash};
use crate::tls::{ServerIdentity, TlsError};

/// How long a web client has to finish its TLS handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// TLS handshakes in progress at once; connections past it are closed unanswered, so a
/// flood of silent sockets cannot hold the listener's memory.
const MAX_HANDSHAKES: usize = 1024;

/// What the web surface's routes share.
#[derive(Clone)]
pub struct WebSurface {
    /// The reports API's state: one index for both listeners.
    pub reports: Reports,
    /// The short-lived certificates browsers are served over WebTransport, on a relay that
    /// uses its self-signed development certificate; `None` with a configured certificate.
    pub browser_certificates: Option<Arc<BrowserCertificates>>,
    /// The web helper page (`/helper/`).
    pub helper_page: super::helper_page::HelperPage,
}

impl WebSurface {
    /// What a page passes to `new WebTransport(url, { serverCertificateHashes })` to reach
    /// this relay: the served browser certificate's hash, then the next one's while it is
    /// published (`PROTOCOL.md` §2a). Empty when the relay presents a configured
    /// (CA-signed) certificate, which browsers check the usual way: a page then passes no
    /// hashes at all.
    pub fn browser_certificate_hashes(&self) -> Vec<CertificateHash> {
        self.browser_certificates
            .as_ref()
            .map(|c| c.hashes())
            .unwrap_or_default()
    }
}

/// The web surface's routes, for the admin listener and the web listener alike. A page that
/// needs the WebTransport certificate hashes (the helper page's configuration) is merged
/// here with a clone of `surface` as its state and calls
/// [`WebSurface::browser_certificate_hashes`] per request, so a rotation shows at once;
/// [`CertificateHash`] serialises as `serverCertificateHashes` wants it, base64-encoded.
pub fn web_routes(surface: &WebSurface) -> Router {
    Router::new()
        .merge(super::reports::router(surface.reports.clone()))
        .merge(super::monitor::router(surface.reports.hub()))
        .merge(super::helper_page::routes(
            surface.helper_page.clone(),
            surface.reports.hub(),
        ))
}

/// The web listener's TLS: the configured chain and key, TLS 1.2 or 1.3 (browsers, and
/// the proxies and scanners in front of them, still offer 1.2), HTTP/1.1.
pub fn tls_acceptor(tls: &WebTls) -> Result<TlsAcceptor, TlsError> {
    let identity = ServerIdentity::from_pem_files(&tls.cert, &tls.key)?;
    let mut config = rustls::ServerConfig::builder_with_provider(crate::tls::provider())
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(identity.chain, identity.key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(TlsAcceptor::from(Arc::new(config)))
}

/// Serves `routes` on `listener` until `stop`: over TLS with `tls`, else plain HTTP.
pub async fn serve(
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    routes: Router,
    stop: CancellationToken,
) {
    let served = match tls {
        None => {
            axum::serve(listener, routes)
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .await
        }
        Some(acceptor) => {
            let local_addr = listener.local_addr();
            let (sender, receiver) = mpsc::channel(64);
            let accepting = tokio::spawn(accept_tls(listener, acceptor, sender, stop.clone()));
            let listener = HandshakenListener {
                receiver,
                local_addr,
            };
            let served = axum::serve(listener, routes)
                .with_graceful_shutdown(stop.clone().cancelled_owned())
                .await;
            let _ = accepting.await;
            served
        }
    };
    if let Err(e) = served {
        warn!(error = %e, "web listener failed");
    }
}

/// Accepts TCP connections and runs each one's TLS handshake in its own task (a slow
/// client must not hold up the others), passing finished ones to `sender`; handshakes in
/// progress end with it at `stop`.
async fn accept_tls(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    sender: mpsc::Sender<(TlsStream<TcpStream>, SocketAddr)>,
    stop: CancellationToken,
) {
    let mut handshakes = JoinSet::new();
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            Some(_) = handshakes.join_next() => {}
            accepted = listener.accept() => {
                let (stream, remote) = match accepted {
                    Ok(accepted) => accepted,
                    Err(e) => {
                        // Out of descriptors and the like: wait a little, as axum does.
                        debug!(error = %e, "web listener: accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                };
                if handshakes.len() >= MAX_HANDSHAKES {
                    metrics::counter!("relay_web_tls_failures_total", "reason" => "busy").increment(1);
                    continue;
                }
                let (acceptor, sender) = (acceptor.clone(), sender.clone());
                handshakes.spawn(async move {
                    match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
                        Ok(Ok(tls)) => {
                            let _ = sender.send((tls, remote)).await;
                        }
                        Ok(Err(e)) => {
                            metrics::counter!("relay_web_tls_failures_total", "reason" => "handshake").increment(1);
                            debug!(%remote, error = %e, "web listener: TLS handshake failed");
                        }
                        Err(_) => {
                            metrics::counter!("relay_web_tls_failures_total", "reason" => "timeout").increment(1);
                            debug!(%remote, "web listener: TLS handshake timed out");
                        }
                    }
                });
            }
        }
    }
}

/// The TLS connections [`accept_tls`] finished, as axum's listener.
struct HandshakenListener {
    receiver: mpsc::Receiver<(TlsStream<TcpStream>, SocketAddr)>,
    local_addr: std::io::Result<SocketAddr>,
}

impl axum::serve::Listener for HandshakenListener {
    type Io = TlsStream<TcpStream>;
    type Addr = SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        match self.receiver.recv().await {
            Some(accepted) => accepted,
            // The accept task ended: only at `stop`, which ends axum's loop too.
            None => std::future::pending().await,
        }
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        match &self.local_addr {
            Ok(addr) => Ok(*addr),
            Err(e) => Err(std::io::Error::new(e.kind(), e.to_string())),
        }
    }
}
