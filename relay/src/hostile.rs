//! A hostile-client campaign: the attacks a relay on the internet must shrug off, run over
//! real QUIC against any relay address.
//!
//! Used twice: by the integration tests (against an in-process relay, after which they check
//! that nothing leaked) and by `rhelp hostile` (against a running daemon, whose memory the
//! operator compares before and after; see BENCHMARKS.md). Every attack states what the
//! relay must answer; anything else — another code, silence past a deadline, a refused
//! honest session afterwards — is reported as a finding, never hidden.
//!
//! The campaign needs only what any client has: the relay's address and trust, and a helper
//! and a sharer token of one tenant. Forged tokens are derived from the helper token (a
//! flipped signature, a rewritten payload, `alg: none`), so no signing key is needed.

use std::time::Duration;

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::{BufMut, BytesMut};
use prost::Message as _;
use rand::Rng;
use remote_help_proto::ErrorCode;
use remote_help_proto::v1::{self, client_to_relay::Msg};

use crate::client::{Client, ClientError, ClientOptions, connect_quic};
use crate::core::{Channel, Mode, Role};

/// How long one step of an attack may take before the silence is itself a finding.
/// Longer than any deadline of the relay's defaults (authentication 10 s, idle 6 s), so a
/// client the relay is right to keep waiting (a half-sent Hello) is closed before this.
const STEP: Duration = Duration::from_secs(30);

/// Where to attack and with which credentials.
#[derive(Debug, Clone)]
pub struct Target {
    /// Connection settings (relay address and trust); token and role are replaced per attack.
    pub options: ClientOptions,
    /// A valid helper token of some tenant.
    pub helper_token: String,
    /// A valid sharer token of the same tenant.
    pub sharer_token: String,
}

/// How large the campaign is.
#[derive(Debug, Clone, Copy)]
pub struct Campaign {
    /// Times each attack is repeated.
    pub rounds: u32,
    /// Data streams opened per stream flood.
    pub streams_per_flood: u32,
    /// Connections opened at once per connection flood.
    pub connections_per_flood: u32,
    /// Codes guessed per guessing round.
    pub guesses: u32,
}

impl Default for Campaign {
    fn default() -> Campaign {
        Campaign {
            rounds: 1,
            streams_per_flood: 64,
            connections_per_flood: 32,
            guesses: 12,
        }
    }
}

/// What one attack did.
#[derive(Debug, Clone, Default, serde::Serialize)]
pub struct AttackReport {
    /// The attack's name.
    pub attack: &'static str,
    /// Hostile inputs sent (frames, tokens, streams, connections, guesses).
    pub inputs: u64,
    /// Inputs the relay answered as this module expects.
    pub as_expected: u64,
    /// Everything else, described.
    pub findings: Vec<String>,
}

impl AttackReport {
    fn new(attack: &'static str) -> AttackReport {
        AttackReport {
            attack,
            ..AttackReport::default()
        }
    }

    fn check(&mut self, what: &str, outcome: Result<(), String>) {
        self.inputs += 1;
        match outcome {
            Ok(()) => self.as_expected += 1,
            Err(finding) => self.findings.push(format!("{what}: {finding}")),
        }
    }
}

/// Runs every attack `campaign.rounds` times, then an honest session, and reports each.
pub async fn run(target: &Target, campaign: Campaign) -> Vec<AttackReport> {
    let mut reports = vec![
        AttackReport::new("malformed_frames"),
        AttackReport::new("random_garbage"),
        AttackReport::new("forged_tokens"),
        AttackReport::new("wrong_order"),
        AttackReport::new("stream_flood"),
        AttackReport::new("connection_flood"),
        AttackReport::new("code_guessing"),
    ];
    for _ in 0..campaign.rounds {
        malformed_frames(target, &mut reports[0]).await;
        random_garbage(target, &mut reports[1]).await;
        forged_tokens(target, &mut reports[2]).await;
        wrong_order(target, &mut reports[3]).await;
        stream_flood(target, campaign.streams_per_flood, &mut reports[4]).await;
        connection_flood(target, campaign.connections_per_flood, &mut reports[5]).await;
        code_guessing(target, campaign.guesses, &mut reports[6]).await;
    }
    let mut honest = AttackReport::new("honest_session_after");
    let outcome = honest_session(target).await;
    honest.check("pair, send input, end", outcome);
    reports.push(honest);
    reports
}

async fn step<T>(future: impl std::future::Future<Output = T>) -> Result<T, String> {
    tokio::time::timeout(STEP, future)
        .await
        .map_err(|_| format!("no answer within {STEP:?}"))
}

fn options(target: &Target, token: &str, role: Role) -> ClientOptions {
    let mut options = target.options.clone();
    options.token = token.to_string();
    options.role = role;
    options
}

/// One control message as it goes on the wire: 4-byte big-endian length, then protobuf.
pub fn frame(message: &v1::ClientToRelay) -> Vec<u8> {
    let body = message.encode_to_vec();
    let mut out = BytesMut::with_capacity(4 + body.len());
    out.put_u32(u32::try_from(body.len()).unwrap_or(u32::MAX));
    out.put_slice(&body);
    out.to_vec()
}

/// A `Hello` with any token, role and protocol version (valid or not).
pub fn hello(token: &str, role: v1::Role, version: u32) -> v1::ClientToRelay {
    v1::ClientToRelay {
        msg: Some(Msg::Hello(v1::Hello {
            protocol_version: version,
            token: token.to_string(),
            role: role as i32,
            client_name: "hostile".into(),
            e2e_suites: crate::client::Protection::default().announced(),
            ..Default::default()
        })),
    }
}

/// Opens a connection, writes `bytes` on its control stream (optionally finishing it), and
/// returns how the relay closed the connection.
async fn send_raw(
    target: &Target,
    bytes: &[u8],
    finish: bool,
) -> Result<Option<ErrorCode>, String> {
    let options = options(target, "", Role::Helper);
    let (_endpoint, connection) = step(connect_quic(&options))
        .await?
        .map_err(|e| format!("connect: {e}"))?;
    let (mut send, _recv) = step(connection.open_bi())
        .await?
        .map_err(|e| format!("open control stream: {e}"))?;
    // The relay may close the connection before it has read everything: not an error.
    let _ = step(send.write_all(bytes)).await?;
    if finish {
        let _ = send.finish();
    }
    let closed = step(connection.closed()).await?;
    Ok(match closed {
        quinn::ConnectionError::ApplicationClosed(close) => {
            ErrorCode::from_quic(close.error_code.into_inner())
        }
        _ => None,
    })
}

fn expect_close(got: Result<Option<ErrorCode>, String>, expected: ErrorCode) -> Result<(), String> {
    match got? {
        Some(code) if code == expected => Ok(()),
        other => Err(format!("closed with {other:?}, expected {expected:?}")),
    }
}

/// A malformed first control frame and the code it must close the connection with.
pub type FrameCase = (&'static str, Vec<u8>, bool, ErrorCode);

/// Malformed or wrong first control frames (`name`, bytes, whether the stream is finished
/// after them, the close code the relay must give), made with `token` where a valid token
/// is needed: what [`run`] sends, and what the relay's own tests send.
pub fn malformed_frame_cases(token: &str) -> Vec<FrameCase> {
    let ping = v1::ClientToRelay {
        msg: Some(Msg::Ping(v1::Ping { nonce: 1 })),
    };
    let unsupported = hello(token, v1::Role::Helper, 0xffff);
    vec![
        (
            "garbage body",
            vec![0, 0, 0, 3, 0xff, 0xff, 0xff],
            false,
            ErrorCode::ProtocolViolation,
        ),
        (
            "oversized length",
            vec![0x7f, 0xff, 0xff, 0xff],
            false,
            ErrorCode::MessageTooLarge,
        ),
        (
            "truncated frame",
            vec![0, 0, 0, 10, 1, 2],
            true,
            ErrorCode::ProtocolViolation,
        ),
        (
            "first message not Hello",
            frame(&ping),
            false,
            ErrorCode::ProtocolViolation,
        ),
        (
            "empty message",
            frame(&v1::ClientToRelay { msg: None }),
            false,
            ErrorCode::ProtocolViolation,
        ),
        (
            "unsupported version",
            frame(&unsupported),
            false,
            ErrorCode::UnsupportedVersion,
        ),
        (
            "no role",
            frame(&hello(
                token,
                v1::Role::Unspecified,
                remote_help_proto::PROTOCOL_VERSION,
            )),
            false,
            ErrorCode::ProtocolViolation,
        ),
        (
            "forged token",
            frame(&hello(
                "a.b.c",
                v1::Role::Helper,
                remote_help_proto::PROTOCOL_VERSION,
            )),
            false,
            ErrorCode::TokenInvalid,
        ),
    ]
}

async fn malformed_frames(target: &Target, report: &mut AttackReport) {
    let cases = malformed_frame_cases(&target.helper_token);
    for (name, bytes, finish, expected) in cases {
        let got = send_raw(target, &bytes, finish).await;
        report.check(name, expect_close(got, expected));
    }
    // A control stream finished before Hello is a client leaving: closed, not refused.
    let outcome = match send_raw(target, &[], true).await {
        Ok(None | Some(ErrorCode::Unspecified)) => Ok(()),
        Ok(Some(code)) => Err(format!("closed with {code:?}, expected a plain close")),
        Err(e) => Err(e),
    };
    report.check("empty control stream", outcome);
}

async fn random_garbage(target: &Target, report: &mut AttackReport) {
    for i in 0..8 {
        let bytes: Vec<u8> = {
            let mut rng = rand::rng();
            let len = rng.random_range(1..2048);
            (0..len).map(|_| rng.random()).collect()
        };
        let outcome = match send_raw(target, &bytes, i % 2 == 0).await {
            Ok(Some(_)) => Ok(()),
            Ok(None) => Err("closed without one of our codes".to_string()),
            Err(e) => Err(e),
        };
        let head: String = bytes.iter().take(8).map(|b| format!("{b:02x}")).collect();
        report.check(
            &format!("{} random bytes starting {head}", bytes.len()),
            outcome,
        );
    }
}

/// Variants of a valid token that must all be refused.
fn forgeries(token: &str) -> Vec<(&'static str, String)> {
    let parts: Vec<&str> = token.split('.').collect();
    let mut out = vec![
        ("empty", String::new()),
        ("not a JWT", "a.b.c".to_string()),
        // By characters: the token comes from a file and need not be ASCII.
        (
            "truncated",
            token.chars().take(token.chars().count() / 2).collect(),
        ),
    ];
    if let [header, payload, signature] = parts[..] {
        let mut flipped = signature.as_bytes().to_vec();
        if let Some(first) = flipped.first_mut() {
            *first = if *first == b'A' { b'B' } else { b'A' };
        }
        out.push((
            "flipped signature",
            format!("{header}.{payload}.{}", String::from_utf8_lossy(&flipped)),
        ));
        if let Ok(claims) = URL_SAFE_NO_PAD.decode(payload)
            && let Ok(mut claims) = serde_json::from_slice::<serde_json::Value>(&claims)
        {
            claims["exp"] = serde_json::json!(4_102_444_800u64);
            claims["roles"] = serde_json::json!(["Help Desk Operator", "admin"]);
            let rewritten = URL_SAFE_NO_PAD.encode(claims.to_string());
            out.push((
                "rewritten payload",
                format!("{header}.{rewritten}.{signature}"),
            ));
            let none = URL_SAFE_NO_PAD.encode(r#"{"alg":"none","typ":"JWT"}"#);
            out.push(("alg none", format!("{none}.{rewritten}.")));
            let hs = URL_SAFE_NO_PAD.encode(r#"{"alg":"HS256","typ":"JWT"}"#);
            out.push(("HS256 header", format!("{hs}.{payload}.{signature}")));
        }
    }
    out
}

async fn forged_tokens(target: &Target, report: &mut AttackReport) {
    for (name, token) in forgeries(&target.helper_token) {
        let outcome = match step(Client::connect(options(target, &token, Role::Helper))).await {
            Ok(Ok(_)) => Err("accepted".to_string()),
            Ok(Err(ClientError::Refused { code, .. })) if is_auth_refusal(code) => Ok(()),
            Ok(Err(e)) => Err(format!("refused oddly: {e}")),
            Err(e) => Err(e),
        };
        report.check(name, outcome);
    }
}

fn is_auth_refusal(code: ErrorCode) -> bool {
    matches!(
        code,
        ErrorCode::TokenInvalid
            | ErrorCode::TokenExpired
            | ErrorCode::TenantUnknown
            | ErrorCode::ProtocolViolation
    )
}

async fn wrong_order(target: &Target, report: &mut AttackReport) {
    // Each role tries the other role's first step (a helper presenting a code, a sharer
    // creating a session); then a second Hello.
    for (name, role) in [
        ("helper joins by code", Role::Helper),
        ("sharer creates a session", Role::Sharer),
    ] {
        let token = match role {
            Role::Helper => &target.helper_token,
            Role::Sharer => &target.sharer_token,
        };
        let outcome = async {
            let mut client = step(Client::connect(options(target, token, role)))
                .await?
                .map_err(|e| format!("connect: {e}"))?;
            let result = match role {
                Role::Helper => step(client.join("00000-00000")).await?.map(|_| ()),
                Role::Sharer => step(client.create_session(Mode::ViewOnly))
                    .await?
                    .map(|_| ()),
            };
            match result {
                Err(ClientError::Refused {
                    code: ErrorCode::WrongRole,
                    ..
                }) => Ok(()),
                other => Err(format!("got {other:?}, expected WRONG_ROLE")),
            }
        }
        .await;
        report.check(name, outcome);
    }
    let second_hello = [
        frame(&hello(
            &target.helper_token,
            v1::Role::Helper,
            remote_help_proto::PROTOCOL_VERSION,
        )),
        frame(&hello(
            &target.helper_token,
            v1::Role::Helper,
            remote_help_proto::PROTOCOL_VERSION,
        )),
    ]
    .concat();
    let got = send_raw(target, &second_hello, false).await;
    report.check(
        "second Hello",
        expect_close(got, ErrorCode::ProtocolViolation),
    );
}

async fn stream_flood(target: &Target, streams: u32, report: &mut AttackReport) {
    let mut client = match step(Client::connect(options(
        target,
        &target.helper_token,
        Role::Helper,
    )))
    .await
    {
        Ok(Ok(client)) => client,
        other => {
            report.check("connect", Err(format!("{other:?}")));
            return;
        }
    };
    let connection = client.connection().clone();
    for _ in 0..streams {
        // Outside a session every data stream is stopped; the connection lives on.
        let outcome = async {
            let mut stream = step(connection.open_uni())
                .await?
                .map_err(|e| format!("open: {e}"))?;
            let _ = step(stream.write_all(&[Channel::Input.to_wire() as u8, 0xde, 0xad])).await?;
            match step(stream.stopped()).await? {
                Ok(Some(code))
                    if code.into_inner() == u64::from(ErrorCode::ProtocolViolation.to_quic()) =>
                {
                    Ok(())
                }
                other => Err(format!("stream ended with {other:?}")),
            }
        }
        .await;
        report.check("data stream outside a session", outcome);
    }
    let alive = step(client.ping())
        .await
        .and_then(|r| r.map_err(|e| e.to_string()));
    report.check("connection alive after the flood", alive.map(|_| ()));
    client.close().await;
}

async fn connection_flood(target: &Target, connections: u32, report: &mut AttackReport) {
    // Many handshakes at once that never authenticate; each is either served or refused at
    // a limit, and all go away when dropped.
    let attempts = (0..connections).map(|_| {
        let options = options(target, "", Role::Helper);
        async move { step(connect_quic(&options)).await }
    });
    let results = futures_util::future::join_all(attempts).await;
    let mut held = Vec::new();
    for result in results {
        let outcome = match result {
            Ok(Ok(pair)) => {
                held.push(pair);
                Ok(())
            }
            // Refused at a connection limit (QUIC CONNECTION_REFUSED): the relay protecting
            // itself is fine. Anything else (a handshake timing out, a local socket failure)
            // is not evidence of that, and is reported.
            Ok(Err(ClientError::Connection(quinn::ConnectionError::ConnectionClosed(close))))
                if close.error_code == quinn_proto::TransportErrorCode::CONNECTION_REFUSED =>
            {
                Ok(())
            }
            Ok(Err(e)) => Err(format!("not served and not refused: {e}")),
            Err(e) => Err(e),
        };
        report.check("silent connection", outcome);
    }
    drop(held);
}

async fn code_guessing(target: &Target, guesses: u32, report: &mut AttackReport) {
    let mut client: Option<Client> = None;
    for _ in 0..guesses {
        if client.is_none() {
            match step(Client::connect(options(
                target,
                &target.sharer_token,
                Role::Sharer,
            )))
            .await
            {
                Ok(Ok(c)) => client = Some(c),
                other => {
                    report.check("connect to guess", Err(format!("{other:?}")));
                    return;
                }
            }
        }
        let Some(guesser) = client.as_mut() else {
            return;
        };
        let guess: String = {
            let mut rng = rand::rng();
            crate::core::code::SessionCode::generate(&mut rng).to_string()
        };
        let outcome = match step(guesser.join(&guess)).await {
            Err(e) => Err(e),
            Ok(Ok(_)) => Err(format!("guess {guess} joined a session")),
            Ok(Err(ClientError::Refused { code, .. })) => match code {
                ErrorCode::CodeInvalid | ErrorCode::RateLimited => Ok(()),
                // The connection's failed-join limit: it is closed, guess on a new one.
                ErrorCode::LimitExceeded => {
                    client = None;
                    Ok(())
                }
                other => Err(format!("refused with {other:?}")),
            },
            Ok(Err(e)) => Err(e.to_string()),
        };
        report.check("random code", outcome);
    }
}

/// A full honest session: pair by code, consent, one input event through, end.
pub async fn honest_session(target: &Target) -> Result<(), String> {
    let fail = |what: &str| {
        let what = what.to_string();
        move |e: ClientError| format!("{what}: {e}")
    };
    let mut helper = step(Client::connect(options(
        target,
        &target.helper_token,
        Role::Helper,
    )))
    .await?
    .map_err(fail("helper connect"))?;
    let mut sharer = step(Client::connect(options(
        target,
        &target.sharer_token,
        Role::Sharer,
    )))
    .await?
    .map_err(fail("sharer connect"))?;
    let created = step(helper.create_session(Mode::FullControl))
        .await?
        .map_err(fail("create"))?;
    // The guessing may have spent this address's join budget: RATE_LIMITED means "try
    // again later", so an honest client does, for up to a minute.
    let mut tries = 0;
    loop {
        match step(sharer.join(&created.code)).await? {
            Ok(_) => break,
            Err(ClientError::Refused { code, .. })
                if code == ErrorCode::RateLimited && tries < 30 =>
            {
                tries += 1;
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
            Err(e) => return Err(format!("join: {e}")),
        }
    }
    step(helper.wait_for_sharer())
        .await?
        .map_err(fail("wait for sharer"))?;
    let sharer_start = step(sharer.accept()).await?.map_err(fail("accept"))?;
    let helper_start = step(helper.wait_for_start())
        .await?
        .map_err(fail("start"))?;
    // As an honest client does: the session's channels as the options say (sealed end to
    // end unless they opted out).
    let (h, s) = step(async {
        tokio::join!(
            crate::client::secure::channels(&helper, &helper_start, Role::Helper),
            crate::client::secure::channels(&sharer, &sharer_start, Role::Sharer)
        )
    })
    .await?;
    let (h, mut s) = (
        h.map_err(fail("helper keys"))?,
        s.map_err(fail("sharer keys"))?,
    );
    let mut input = step(h.open_channel(Channel::Input))
        .await?
        .map_err(fail("open input"))?;
    step(input.send(b"ok")).await?.map_err(fail("send"))?;
    let (_, mut received) = step(s.accept_channel())
        .await?
        .map_err(fail("accept input"))?;
    match step(received.recv()).await?.map_err(fail("receive"))? {
        Some(frame) if &frame[..] == b"ok" => {}
        other => return Err(format!("input arrived as {other:?}")),
    }
    step(helper.end_session()).await?.map_err(fail("end"))?;
    let reason = step(sharer.wait_for_end()).await?;
    if reason != ErrorCode::PeerEnded {
        return Err(format!("sharer saw the end as {reason:?}"));
    }
    helper.close().await;
    sharer.close().await;
    Ok(())
}
