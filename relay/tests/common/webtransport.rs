//! A minimal WebTransport client for tests: what a browser does, over
//! `web_transport_quinn`'s client (ALPN `h3`, extended CONNECT), trusting the relay's
//! certificate by its pinned fingerprint. It speaks the control protocol itself
//! (length-prefixed protobuf on the first bidirectional stream), so the tests see exactly
//! the bytes a browser page would send and receive.

use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use futures_util::{SinkExt, StreamExt};
use remote_help_proto::framing::{ControlCodec, DataCodec};
use remote_help_proto::v1::{self, client_to_relay::Msg as Out, relay_to_client::Msg as In};
use remote_help_proto::{ErrorCode, PROTOCOL_VERSION};
use remote_help_relay::core::Role;
use remote_help_relay::tls::{Fingerprint, RelayTrust};
use tokio_util::codec::{FramedRead, FramedWrite};
use web_transport_quinn::{RecvStream, SendStream, Session};

use super::{TestRelay, within};

/// The path the relay serves WebTransport on.
pub const PATH: &str = "/remote-help/1";

/// Opens a WebTransport session to `relay` at `path` (a CONNECT; no protocol messages yet).
pub async fn session(
    relay: SocketAddr,
    pin: Fingerprint,
    path: &str,
) -> Result<Session, web_transport_quinn::ClientError> {
    session_with(relay, pin, path, None).await
}

/// [`session`] with the client's own QUIC transport settings (windows), if given.
pub async fn session_with(
    relay: SocketAddr,
    pin: Fingerprint,
    path: &str,
    transport: Option<Arc<quinn::TransportConfig>>,
) -> Result<Session, web_transport_quinn::ClientError> {
    let mut tls = RelayTrust::Pin(pin).rustls_client_config().unwrap();
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
            relay.handle.fingerprint(),
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
