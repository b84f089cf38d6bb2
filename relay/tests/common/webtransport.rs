//! A minimal WebTransport client for tests: what a browser does, over
//! `web_transport_quinn`'s client (ALPN `h3`, extended CONNECT), trusting the relay's
//! certificate as a browser given `serverCertificateHashes` does ([`BrowserTrust`]: one of
//! the published hashes, ECDSA P-256, valid now for at most two weeks). It speaks the
//! control protocol itself
//! (length-prefixed protobuf on the first bidirectional stream), so the tests see exactly
//! the bytes a browser page would send and receive.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use remote_help_proto::framing::{ControlCodec, DataCodec};
use remote_help_proto::v1::{self, client_to_relay::Msg as Out, relay_to_client::Msg as In};
use remote_help_proto::{ErrorCode, PROTOCOL_VERSION};
use remote_help_relay::core::Role;
use remote_help_relay::tls::browser::CertificateHash;
use remote_help_relay::tls::{Fingerprint, browser};
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use tokio_util::codec::{FramedRead, FramedWrite};
use web_transport_quinn::{RecvStream, SendStream, Session};

use super::{TestRelay, within};

/// The path the relay serves WebTransport on.
pub const PATH: &str = "/remote-help/1";

/// What a browser accepts for a `WebTransport` given `serverCertificateHashes` (W3C
/// WebTransport, "custom certificate requirements"): a leaf whose SHA-256 is one of the
/// hashes, whose public key is ECDSA P-256, and whose validity period covers now and lasts
/// at most two weeks; the handshake signature is checked as usual.
#[derive(Debug)]
pub struct BrowserTrust {
    hashes: Vec<[u8; 32]>,
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl BrowserTrust {
    /// Trusts exactly the certificates with these (published) hashes.
    pub fn new(hashes: &[CertificateHash]) -> BrowserTrust {
        BrowserTrust {
            hashes: hashes
                .iter()
                .map(|h| {
                    assert_eq!(h.algorithm, "sha-256");
                    h.bytes().expect("a published hash is base64 of 32 bytes")
                })
                .collect(),
            provider: remote_help_relay::tls::provider(),
        }
    }
}

/// Whether `der` meets a browser's rules for a certificate given by hash (apart from the
/// hash itself): ECDSA on P-256, and valid now for a period of at most two weeks.
pub fn browser_would_accept(der: &CertificateDer<'_>) -> Result<(), String> {
    let (_, cert) = x509_parser::parse_x509_certificate(der.as_ref()).map_err(|e| e.to_string())?;
    let spki = cert.public_key();
    if spki.algorithm.algorithm != x509_parser::oid_registry::OID_KEY_TYPE_EC_PUBLIC_KEY {
        return Err(format!("public key {} is not EC", spki.algorithm.algorithm));
    }
    let curve = spki
        .algorithm
        .parameters
        .as_ref()
        .and_then(|p| p.as_oid().ok());
    if curve != Some(x509_parser::oid_registry::OID_EC_P256) {
        return Err(format!("curve {curve:?} is not P-256"));
    }
    let validity = browser::validity_of(der).ok_or("no readable validity")?;
    if !validity.accepted_at(std::time::SystemTime::now()) {
        return Err(format!(
            "validity {validity:?} is not accepted now (at most two weeks, covering now)"
        ));
    }
    Ok(())
}

impl ServerCertVerifier for BrowserTrust {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let refused = |reason: String| {
            Err(rustls::Error::InvalidCertificate(
                rustls::CertificateError::Other(rustls::OtherError(Arc::new(
                    std::io::Error::other(reason),
                ))),
            ))
        };
        if !self.hashes.contains(&Fingerprint::of(end_entity).0) {
            return refused(format!(
                "certificate {} is none of the published hashes",
                Fingerprint::of(end_entity)
            ));
        }
        match browser_would_accept(end_entity) {
            Ok(()) => Ok(ServerCertVerified::assertion()),
            Err(reason) => refused(reason),
        }
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::PeerIncompatible(
            rustls::PeerIncompatible::Tls12NotOffered,
        ))
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &rustls::DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.provider.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<rustls::SignatureScheme> {
        self.provider
            .signature_verification_algorithms
            .supported_schemes()
    }
}

/// The certificate the relay presented on a connection (a WebTransport session derefs to
/// its QUIC connection).
pub fn presented(connection: &quinn::Connection) -> CertificateDer<'static> {
    let chain = connection
        .peer_identity()
        .and_then(|id| id.downcast::<Vec<CertificateDer<'static>>>().ok())
        .expect("a QUIC connection has the server's certificates");
    chain[0].clone()
}

/// Opens a WebTransport session to `relay` at `path` (a CONNECT; no protocol messages yet),
/// trusting the certificates whose `hashes` the relay publishes, as a browser page does.
pub async fn session(
    relay: SocketAddr,
    hashes: &[CertificateHash],
    path: &str,
) -> Result<Session, web_transport_quinn::ClientError> {
    session_with(relay, hashes, path, None).await
}

/// [`session`] with the client's own QUIC transport settings (windows), if given.
pub async fn session_with(
    relay: SocketAddr,
    hashes: &[CertificateHash],
    path: &str,
    transport: Option<Arc<quinn::TransportConfig>>,
) -> Result<Session, web_transport_quinn::ClientError> {
    let tls = rustls::ClientConfig::builder_with_provider(remote_help_relay::tls::provider())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(BrowserTrust::new(hashes)))
        .with_no_client_auth();
    session_with_tls(relay, tls, path, transport).await
}

/// [`session_with`] trusting what `tls` trusts (a CA, for a relay with a configured
/// certificate); its ALPN becomes `h3`.
pub async fn session_with_tls(
    relay: SocketAddr,
    mut tls: rustls::ClientConfig,
    path: &str,
    transport: Option<Arc<quinn::TransportConfig>>,
) -> Result<Session, web_transport_quinn::ClientError> {
    tls.alpn_protocols = vec![b"h3".to_vec()];
    let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
    let mut config = quinn::ClientConfig::new(Arc::new(crypto));
    if let Some(transport) = transport {
        config.transport_config(transport);
    }
    let endpoint = quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
    let client = web_transport_quinn::Client::new(endpoint, config);
    let url = url::Url::parse(&format!("https://{relay}{path}")).unwrap();
    client.connect(url).await
}

type Reader = FramedRead<RecvStream, ControlCodec<v1::RelayToClient, v1::ClientToRelay>>;
type Writer = FramedWrite<SendStream, ControlCodec<v1::RelayToClient, v1::ClientToRelay>>;

/// A party on WebTransport, after `Hello` and `Welcome`.
pub struct WtClient {
    /// The WebTransport session (streams and datagrams).
    pub session: Session,
    reader: Reader,
    writer: Writer,
    /// What the relay said in `Welcome`.
    pub welcome: v1::Welcome,
}

/// How a WebTransport party's attempt ended when it was refused.
#[derive(Debug)]
pub struct Refusal {
    pub code: ErrorCode,
    pub message: String,
}

impl WtClient {
    /// Connects to `relay` over WebTransport and signs in with `token` as `role`.
    pub async fn connect(
        relay: &TestRelay,
        token: String,
        role: Role,
    ) -> Result<WtClient, Refusal> {
        Self::connect_with(relay, token, role, None).await
    }

    /// [`WtClient::connect`] with the client's own QUIC transport settings.
    pub async fn connect_with(
        relay: &TestRelay,
        token: String,
        role: Role,
        transport: Option<Arc<quinn::TransportConfig>>,
    ) -> Result<WtClient, Refusal> {
        let session = within(session_with(
            relay.addr(),
            &relay.handle.browser_certificate_hashes(),
            PATH,
            transport,
        ))
        .await
        .expect("WebTransport session");
        let (send, recv) = within(session.open_bi()).await.unwrap();
        let max = remote_help_proto::framing::DEFAULT_MAX_CONTROL_MESSAGE;
        let mut client = WtClient {
            session,
            reader: FramedRead::new(recv, ControlCodec::new(max)),
            writer: FramedWrite::new(send, ControlCodec::new(max)),
            welcome: v1::Welcome::default(),
        };
        client
            .send(Out::Hello(v1::Hello {
                protocol_version: PROTOCOL_VERSION,
                token,
                role: match role {
                    Role::Helper => v1::Role::Helper,
                    Role::Sharer => v1::Role::Sharer,
                } as i32,
                client_name: "webtransport test client".into(),
                e2e_suites: Vec::new(),
                ..Default::default()
            }))
            .await;
        match client.recv().await? {
            In::Welcome(welcome) => client.welcome = welcome,
            other => panic!("expected Welcome, got {other:?}"),
        }
        Ok(client)
    }

    /// Sends one control message.
    pub async fn send(&mut self, message: Out) {
        within(self.writer.send(v1::ClientToRelay { msg: Some(message) }))
            .await
            .expect("control message sent");
    }

    /// The next control message; an `Error` (or the session's close) becomes a `Refusal`.
    pub async fn recv(&mut self) -> Result<In, Refusal> {
        match within(self.reader.next()).await {
            Some(Ok(v1::RelayToClient {
                msg: Some(In::Error(e)),
            })) => Err(Refusal {
                code: ErrorCode::try_from(e.code).unwrap_or(ErrorCode::Unspecified),
                message: e.message,
            }),
            Some(Ok(v1::RelayToClient { msg: Some(m) })) => Ok(m),
            other => {
                // The stream ended: the session's close carries the code and reason.
                match within(self.session.closed()).await {
                    web_transport_quinn::SessionError::WebTransportError(
                        web_transport_quinn::WebTransportError::Closed(code, message),
                    ) => Err(Refusal {
                        code: ErrorCode::from_quic(code.into()).unwrap_or(ErrorCode::Unspecified),
                        message,
                    }),
                    closed => panic!("control stream ended ({other:?}); session closed: {closed}"),
                }
            }
        }
    }

    /// Opens a data stream for `channel`: its tag byte, then length-prefixed frames.
    pub async fn open_channel(&self, tag: u8) -> FramedWrite<SendStream, DataCodec> {
        let mut stream = within(self.session.open_uni()).await.unwrap();
        within(stream.write_all(&[tag])).await.unwrap();
        FramedWrite::new(stream, DataCodec::new(1 << 20))
    }

    /// Accepts the peer's next data stream: its tag byte and its frames.
    pub async fn accept_channel(&self) -> (u8, FramedRead<RecvStream, DataCodec>) {
        let mut stream = within(self.session.accept_uni()).await.unwrap();
        let mut tag = [0u8; 1];
        within(stream.read_exact(&mut tag)).await.unwrap();
        (tag[0], FramedRead::new(stream, DataCodec::new(1 << 20)))
    }
}

/// A WebTransport session opened by hand, as a hostile client would: HTTP/3 SETTINGS and
/// the CONNECT to `path`, with none of `web_transport_quinn`'s client behaviour after it (a
/// well-behaved client closes its connection when the relay ends the CONNECT stream; this
/// one never closes anything itself). The streams are returned so they stay open.
pub struct RawSession {
    pub endpoint: quinn::Endpoint,
    pub connection: quinn::Connection,
    /// The client's HTTP/3 control stream.
    pub control: quinn::SendStream,
    /// The CONNECT request's stream, both halves.
    pub connect: (quinn::SendStream, quinn::RecvStream),
}

impl RawSession {
    /// Opens a session to `relay` at [`PATH`] and waits for its 200.
    pub async fn open(relay: &TestRelay) -> RawSession {
        use web_transport_quinn::proto::{ConnectRequest, ConnectResponse, Settings};
        let mut tls =
            rustls::ClientConfig::builder_with_provider(remote_help_relay::tls::provider())
                .with_protocol_versions(&[&rustls::version::TLS13])
                .unwrap()
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(BrowserTrust::new(
                    &relay.handle.browser_certificate_hashes(),
                )))
                .with_no_client_auth();
        tls.alpn_protocols = vec![b"h3".to_vec()];
        let crypto = quinn::crypto::rustls::QuicClientConfig::try_from(tls).unwrap();
        let mut endpoint =
            quinn::Endpoint::client(SocketAddr::from((Ipv4Addr::LOCALHOST, 0))).unwrap();
        endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(crypto)));
        let connection = within(endpoint.connect(relay.addr(), "localhost").unwrap())
            .await
            .unwrap();
        let mut control = within(connection.open_uni()).await.unwrap();
        let mut settings = Settings::default();
        settings.enable_webtransport(1);
        within(settings.write(&mut control)).await.unwrap();
        let (mut send, mut recv) = within(connection.open_bi()).await.unwrap();
        let url = url::Url::parse(&format!("https://{}{PATH}", relay.addr())).unwrap();
        within(ConnectRequest::new(url).write(&mut send))
            .await
            .unwrap();
        let response = within(ConnectResponse::read(&mut recv)).await.unwrap();
        assert_eq!(response.status, 200);
        RawSession {
            endpoint,
            connection,
            control,
            connect: (send, recv),
        }
    }

    /// The header of a WebTransport bidirectional stream of this session (the session is
    /// named by its CONNECT stream's id, 0).
    pub fn bidi_header() -> Vec<u8> {
        use web_transport_quinn::proto::{Frame, VarInt};
        let mut header = Vec::new();
        Frame::WEBTRANSPORT.encode(&mut header);
        VarInt::from_u32(0).encode(&mut header);
        header
    }

    /// The header of a WebTransport unidirectional stream of this session.
    pub fn uni_header() -> Vec<u8> {
        use web_transport_quinn::proto::{StreamUni, VarInt};
        let mut header = Vec::new();
        StreamUni::WEBTRANSPORT.encode(&mut header);
        VarInt::from_u32(0).encode(&mut header);
        header
    }
}
