//! A whole session in one process, measured: the operator's smoke test (`rhelp probe`)
//! and the narrated `relay demo` both run it.
//!
//! Steps: connect and authenticate both parties, create, join, consent, open the
//! channels, measure input round trips (input event helper→sharer, echoed back on chat),
//! measure screen throughput (sharer→helper), end, and check the sharer is told.

use std::time::{Duration, Instant};

use bytes::Bytes;
use remote_help_proto::ErrorCode;
use serde::Serialize;

use crate::client::secure::{self, Receiver, Sender, SessionChannels};
use crate::client::{ChannelReceiver, Client, ClientError, ClientOptions, SessionStart};
use crate::core::{Channel, Mode, Role};

/// What to measure.
#[derive(Debug, Clone, Copy)]
pub struct ProbeSettings {
    /// Input round trips to time.
    pub round_trips: usize,
    /// Screen bytes to send for the throughput figure.
    pub screen_bytes: usize,
    /// Size of each screen frame.
    pub frame_size: usize,
}

impl Default for ProbeSettings {
    fn default() -> ProbeSettings {
        ProbeSettings {
            round_trips: 200,
            screen_bytes: 64 * 1024 * 1024,
            frame_size: 64 * 1024,
        }
    }
}

/// The figures of one probe run.
#[derive(Debug, Clone, Serialize)]
pub struct ProbeReport {
    /// Always true in a report (failures are errors).
    pub ok: bool,
    /// From the first connect to both parties seeing the session start, milliseconds.
    pub setup_ms: f64,
    /// Input round trip through the relay (helper→sharer→helper), median, milliseconds.
    pub input_rtt_p50_ms: f64,
    /// Input round trip, 99th percentile, milliseconds.
    pub input_rtt_p99_ms: f64,
    /// Input round trip, worst, milliseconds.
    pub input_rtt_max_ms: f64,
    /// Screen bytes moved sharer→helper.
    pub screen_bytes: u64,
    /// Screen throughput, megabits per second.
    pub throughput_mbit_s: f64,
    /// How the sharer learned the session ended (`PEER_ENDED` when all is well).
    pub sharer_end_reason: String,
    /// The end-to-end protection: the SDK's suite on the stream path (`chacha20`,
    /// `aes256gcm`), `peer-tls13` on the packet path (the peer connection's TLS), or `off`
    /// for a measurement run without it.
    pub e2e: String,
}

/// Runs the probe; `narrate` is told each step as it happens.
pub async fn run(
    helper_options: ClientOptions,
    sharer_options: ClientOptions,
    settings: ProbeSettings,
    mut narrate: impl FnMut(&str),
) -> Result<ProbeReport, ClientError> {
    let start = Instant::now();
    let Opened {
        mut helper,
        helper_start,
        mut sharer,
        sharer_start,
    } = open_session(
        helper_options,
        sharer_options,
        Mode::FullControl,
        &mut narrate,
    )
    .await?;
    let setup = start.elapsed();
    narrate(&format!(
        "sharer consented; session started after {:.1} ms",
        ms(setup)
    ));

    // End-to-end protection, as the options say (on unless opted out for a measurement).
    let (h, s) = tokio::join!(
        secure::channels(&helper, &helper_start, Role::Helper),
        secure::channels(&sharer, &sharer_start, Role::Sharer)
    );
    let (mut h, mut s) = (h?, s?);
    let protection = match (h.verification_code(), s.verification_code(), h.suite()) {
        (Some(a), Some(b), _) if a != b => {
            return Err(ClientError::Unexpected(format!(
                "the verification codes differ ({a} and {b}): the keys were substituted on the way"
            )));
        }
        // The packet path: the peer connection's own TLS, no SDK suite.
        (Some(code), Some(_), None) => {
            narrate(&format!(
                "end-to-end protection on (the peer connection's TLS 1.3, packet path); both sides show verification code {code}"
            ));
            "peer-tls13".to_string()
        }
        (Some(code), Some(_), Some(suite)) => {
            narrate(&format!(
                "end-to-end protection on ({}); both sides show verification code {code}",
                suite.as_str()
            ));
            suite.as_str().to_string()
        }
        _ => {
            narrate("end-to-end protection OFF (measurement run): the relay sees the content");
            "off".to_string()
        }
    };

    // Channels: the sharer sends screen and chat, the helper sends input. A tenant may
    // disable chat (the relay would refuse the stream): then input is echoed on the screen
    // stream, before the throughput run uses it.
    let chat = sharer_start.channels.contains(&Channel::Chat);
    let mut screen_out = s.open_channel(Channel::Screen).await?;
    let mut chat_out = match chat {
        true => Some(s.open_channel(Channel::Chat).await?),
        false => None,
    };
    let mut input_out = h.open_channel(Channel::Input).await?;
    // Quinn makes a stream visible to the peer with its first bytes: send one frame each.
    screen_out.send(b"hello").await?;
    if let Some(chat_out) = chat_out.as_mut() {
        chat_out.send(b"hi, I can see you").await?;
    }
    input_out.send(b"start").await?;
    let (mut screen_in, mut chat_in) = match chat {
        true => {
            let (screen, chat) = accept_two(&mut h, Channel::Screen, Channel::Chat).await?;
            (screen, Some(chat))
        }
        false => (accept_one(&mut h, Channel::Screen).await?, None),
    };
    let (_, mut input_in) = s.accept_channel().await?;
    expect(&mut screen_in).await?;
    if let Some(chat_in) = chat_in.as_mut() {
        expect(chat_in).await?;
    }
    expect(&mut input_in).await?;
    narrate(if chat {
        "screen, input and chat channels are open through the relay"
    } else {
        "screen and input channels are open through the relay (the tenant disabled chat)"
    });

    // Input round trips: the sharer echoes each input event back, on chat or screen.
    let (mut echo_out, screen_out) = match chat_out {
        Some(chat_out) => (chat_out, Some(screen_out)),
        None => (screen_out, None),
    };
    let round_trips = settings.round_trips;
    let echo = tokio::spawn(async move {
        for _ in 0..round_trips {
            let event = expect(&mut input_in).await?;
            echo_out.send(&event).await?;
        }
        // Both kept: dropping the input receiver would stop the helper's input stream.
        Ok::<_, ClientError>((echo_out, input_in))
    });
    let mut rtts = Vec::with_capacity(round_trips);
    {
        let echo_in = chat_in.as_mut().unwrap_or(&mut screen_in);
        for seq in 0..round_trips as u64 {
            let sent = Instant::now();
            input_out.send(&seq.to_be_bytes()).await?;
            let echoed = expect(echo_in).await?;
            if echoed[..] != seq.to_be_bytes() {
                return Err(ClientError::Unexpected("input echoed out of order".into()));
            }
            rtts.push(sent.elapsed());
        }
    }
    let (echo_out, _input_in) = echo
        .await
        .map_err(|e| ClientError::Unexpected(format!("input echo failed: {e}")))??;
    let mut screen_out = screen_out.unwrap_or(echo_out);
    rtts.sort();
    narrate(&format!(
        "{} input events went helper→sharer and back, in order; median round trip {:.3} ms",
        rtts.len(),
        ms(percentile(&rtts, 0.5))
    ));

    // Screen throughput.
    let frame_size = settings.frame_size.max(1);
    let frames = settings.screen_bytes.div_ceil(frame_size);
    let sent_at = Instant::now();
    let sender = tokio::spawn(async move {
        let frame = vec![0x5au8; frame_size];
        for _ in 0..frames {
            screen_out.send(&frame).await?;
        }
        Ok::<Sender, ClientError>(screen_out)
    });
    let mut received = 0u64;
    for _ in 0..frames {
        received += expect(&mut screen_in).await?.len() as u64;
    }
    let elapsed = sent_at.elapsed();
    sender
        .await
        .map_err(|e| ClientError::Unexpected(format!("screen sender failed: {e}")))??;
    let throughput = received as f64 * 8.0 / elapsed.as_secs_f64() / 1e6;
    narrate(&format!(
        "sharer streamed {:.1} MiB of screen frames at {throughput:.0} Mbit/s",
        received as f64 / (1024.0 * 1024.0)
    ));

    input_out.finish().await?;
    helper.end_session().await?;
    let sharer_end = sharer.wait_for_end().await;
    narrate(&format!(
        "helper ended the session; sharer was told {sharer_end}"
    ));
    if sharer_end != ErrorCode::PeerEnded {
        return Err(ClientError::Refused {
            code: sharer_end,
            message: "sharer was not told PEER_ENDED".into(),
        });
    }
    helper.close().await;
    sharer.close().await;

    Ok(ProbeReport {
        ok: true,
        setup_ms: ms(setup),
        input_rtt_p50_ms: ms(percentile(&rtts, 0.5)),
        input_rtt_p99_ms: ms(percentile(&rtts, 0.99)),
        input_rtt_max_ms: ms(rtts.last().copied().unwrap_or_default()),
        screen_bytes: received,
        throughput_mbit_s: throughput,
        sharer_end_reason: sharer_end.as_str_name().to_string(),
        e2e: protection,
    })
}

/// Both parties connected, in a started session.
struct Opened {
    helper: Client,
    helper_start: SessionStart,
    sharer: Client,
    sharer_start: SessionStart,
}

/// Connects both parties and runs create, join and consent, telling `narrate` each step.
async fn open_session(
    helper_options: ClientOptions,
    sharer_options: ClientOptions,
    mode: Mode,
    narrate: &mut impl FnMut(&str),
) -> Result<Opened, ClientError> {
    let mut helper = Client::connect(helper_options).await?;
    narrate(&format!(
        "helper connected and authenticated as {}",
        name(helper.me())
    ));
    let mut sharer = Client::connect(sharer_options).await?;
    narrate(&format!(
        "sharer connected and authenticated as {}",
        name(sharer.me())
    ));
    let created = helper.create_session(mode).await?;
    narrate(&format!(
        "helper created session {} and got code {} to read to the sharer",
        created.session_id, created.code
    ));
    let request = sharer.join(&created.code).await?;
    narrate(&format!(
        "sharer joined with the code; the relay asks the sharer to let {} connect in {} mode",
        name(request.helper.as_ref()),
        mode.as_str()
    ));
    let joined = helper.wait_for_sharer().await?;
    narrate(&format!(
        "helper sees {} joined and waits for consent",
        name(Some(&joined))
    ));
    let sharer_start = sharer.accept().await?;
    let helper_start = helper.wait_for_start().await?;
    Ok(Opened {
        helper,
        helper_start,
        sharer,
        sharer_start,
    })
}

async fn accept_one(
    client: &mut SessionChannels,
    channel: Channel,
) -> Result<Receiver, ClientError> {
    match client.accept_channel().await? {
        (got, receiver) if got == channel => Ok(receiver),
        (other, _) => Err(ClientError::Unexpected(format!(
            "unexpected channel {other:?}"
        ))),
    }
}

async fn accept_two(
    client: &mut SessionChannels,
    first: Channel,
    second: Channel,
) -> Result<(Receiver, Receiver), ClientError> {
    let (a_channel, a) = client.accept_channel().await?;
    let (b_channel, b) = client.accept_channel().await?;
    match (a_channel, b_channel) {
        (x, y) if x == first && y == second => Ok((a, b)),
        (x, y) if x == second && y == first => Ok((b, a)),
        other => Err(ClientError::Unexpected(format!(
            "unexpected channels {other:?}"
        ))),
    }
}

async fn expect(receiver: &mut Receiver) -> Result<Bytes, ClientError> {
    receiver
        .recv()
        .await?
        .ok_or_else(|| ClientError::Unexpected("a channel ended early".into()))
}

async fn expect_frame(receiver: &mut ChannelReceiver) -> Result<bytes::BytesMut, ClientError> {
    receiver.recv().await?.ok_or_else(|| {
        ClientError::Unexpected(format!(
            "{} channel ended early",
            receiver.channel().as_str()
        ))
    })
}

fn name(profile: Option<&remote_help_proto::v1::Profile>) -> String {
    match profile {
        Some(p) if !p.given_name.is_empty() => {
            format!("{} {} ({})", p.given_name, p.family_name, p.tenant_id)
        }
        Some(p) => format!("{} ({})", p.subject, p.tenant_id),
        None => "(unknown)".into(),
    }
}

fn percentile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() as f64 - 1.0) * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

/// Figures for end-to-end protection: crypto speed on one core, and screen throughput
/// through the relay without and with it, in the same run.
#[derive(Debug, Clone, Serialize)]
pub struct E2eReport {
    /// Sealing speed on one core, MB/s (64 KiB frames).
    pub seal_mb_s: f64,
    /// Opening speed on one core, MB/s.
    pub open_mb_s: f64,
    /// Screen throughput through the relay, unprotected, Mbit/s.
    pub plain_mbit_s: f64,
    /// Screen throughput through the relay, sealed end to end, Mbit/s.
    pub sealed_mbit_s: f64,
    /// The two users' verification codes matched.
    pub codes_match: bool,
}

/// Measures [`E2eReport`]: `screen_bytes` of 64 KiB frames per session.
pub async fn e2e_bench(
    helper_options: ClientOptions,
    sharer_options: ClientOptions,
    screen_bytes: usize,
) -> Result<E2eReport, ClientError> {
    // The SDK's sealing is the stream path's protection: measured there (the packet path's
    // protection is its peer connection's TLS).
    let (mut helper_options, mut sharer_options) = (helper_options, sharer_options);
    helper_options.packet_path = false;
    sharer_options.packet_path = false;
    const FRAME: usize = 64 * 1024;
    let frames = screen_bytes.div_ceil(FRAME).max(1);
    // The crypto alone is timed for the helper's most preferred suite.
    let suite = match &helper_options.protection {
        crate::client::Protection::EndToEnd(suites) => suites.first().copied(),
        crate::client::Protection::PlaintextForMeasurement => None,
    }
    .unwrap_or(crate::e2e::Suite::X25519ChaCha20Poly1305);

    // Crypto alone, one core.
    let (keys_h, keys_s) = {
        let (h, s) = (
            crate::e2e::KeyExchange::start()?,
            crate::e2e::KeyExchange::start()?,
        );
        let party = |x: &str| crate::e2e::Party {
            tenant: "bench".into(),
            subject: x.into(),
        };
        let t = crate::e2e::Transcript {
            session_id: "bench".into(),
            helper: party("h"),
            sharer: party("s"),
            helper_suites: vec![suite.id()],
            sharer_suites: vec![suite.id()],
            suite,
            helper_key: h.public_key(),
            sharer_key: s.public_key(),
        };
        (h.finish(Role::Helper, &t)?, s.finish(Role::Sharer, &t)?)
    };
    let domain = crate::e2e::stream_domain(Channel::Screen);
    let plain = vec![0x42u8; FRAME];
    // Timed as a sender uses it: seal a frame, hand it on, drop it.
    let mut timed_sealer = keys_s.sealer(crate::e2e::stream_domain(Channel::Chat));
    let started = Instant::now();
    for _ in 0..frames {
        std::hint::black_box(timed_sealer.seal(&plain)?);
    }
    let seal_secs = started.elapsed().as_secs_f64();
    let mut sealer = keys_s.sealer(domain);
    let sealed: Vec<Vec<u8>> = (0..frames)
        .map(|_| sealer.seal(&plain))
        .collect::<Result<_, _>>()?;
    let mut opener = keys_h.stream_opener(domain);
    let started = Instant::now();
    for frame in &sealed {
        opener.open(frame)?;
    }
    let open_secs = started.elapsed().as_secs_f64();
    let mb = (frames * FRAME) as f64 / 1e6;
    drop(sealed);

    // Through the relay: one unprotected session, then one protected.
    let mut results = [0.0f64; 2];
    let mut codes_match = true;
    for (round, sealed_round) in [false, true].into_iter().enumerate() {
        let Opened {
            mut helper,
            helper_start,
            mut sharer,
            sharer_start,
        } = open_session(
            helper_options.clone(),
            sharer_options.clone(),
            Mode::ViewOnly,
            &mut |_| {},
        )
        .await?;
        let frame = Bytes::from(vec![0x5au8; FRAME]);
        let elapsed = if sealed_round {
            let (h, s) = tokio::join!(
                secure::establish(&helper, &helper_start, Role::Helper),
                secure::establish(&sharer, &sharer_start, Role::Sharer)
            );
            let (mut h, s) = (h?, s?);
            codes_match = h.verification_code() == s.verification_code();
            let mut out = s.open_channel(Channel::Screen).await?;
            let start = Instant::now();
            let sender = tokio::spawn(async move {
                for _ in 0..frames {
                    out.send(&frame).await?;
                }
                Ok::<_, ClientError>(out)
            });
            let (_, mut input) = h.accept_channel().await?;
            for _ in 0..frames {
                input.recv().await?;
            }
            let elapsed = start.elapsed();
            sender
                .await
                .map_err(|e| ClientError::Unexpected(e.to_string()))??;
            elapsed
        } else {
            // The measurement's baseline: the same kind of session, its synthetic frames
            // unsealed. The SDK's measurement transport, not the public unsealed API, so
            // the baseline runs against relays that require protection too.
            let mut out = sharer
                .insecure_transport_for_measurement()
                .open_channel(Channel::Screen)
                .await?;
            let start = Instant::now();
            let sender = tokio::spawn(async move {
                for _ in 0..frames {
                    out.send(frame.clone()).await?;
                }
                Ok::<_, ClientError>(out)
            });
            let (_, mut input) = helper
                .insecure_transport_for_measurement()
                .accept_channel()
                .await?;
            for _ in 0..frames {
                expect_frame(&mut input).await?;
            }
            let elapsed = start.elapsed();
            sender
                .await
                .map_err(|e| ClientError::Unexpected(e.to_string()))??;
            elapsed
        };
        results[round] = (frames * FRAME) as f64 * 8.0 / elapsed.as_secs_f64() / 1e6;
        helper.end_session().await?;
        sharer.wait_for_end().await;
        helper.close().await;
        sharer.close().await;
    }
    Ok(E2eReport {
        seal_mb_s: mb / seal_secs,
        open_mb_s: mb / open_secs,
        plain_mbit_s: results[0],
        sealed_mbit_s: results[1],
        codes_match,
    })
}
