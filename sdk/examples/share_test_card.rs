//! The sharer's side of a session, in one small program: connect to a relay with a token and
//! the relay's pinned certificate fingerprint, join the session whose code the helper gave,
//! show who asks and consent, then stream a moving test card (a PNG with a frame counter)
//! as the shared screen and print every input event the helper sends.
//!
//! ```text
//! cargo run -p remote-help-sdk --example share_test_card -- RELAY FINGERPRINT TOKEN_FILE CODE
//! ```
//!
//! Each argument may come from the environment instead: `REMOTE_HELP_RELAY` (`host:port`),
//! `REMOTE_HELP_PIN` (the relay certificate's SHA-256), `REMOTE_HELP_TOKEN_FILE` (a sharer
//! token, e.g. from `relay dev-token --role sharer --out sharer.jwt`), `REMOTE_HELP_CODE`
//! (the session code), `REMOTE_HELP_INPUTS` (end the session after this many input events;
//! 0 or absent: run until the helper ends it). Consent is given without asking: a real
//! sharer asks its user first (and calls `Client::decline` on a no). The helper's side is
//! `examples/helper.rs`.

use std::error::Error;
use std::time::{Duration, Instant};

use bytes::Bytes;
use remote_help_sdk::client::content::{
    Content, ContentReceiver, ContentSender, ImageFormat, ScreenFrame,
};
use remote_help_sdk::client::test_card::TestCard;
use remote_help_sdk::client::{Client, ClientOptions, secure};
use remote_help_sdk::session::{Channel, Mode, Role};
use remote_help_sdk::tls::{Fingerprint, RelayTrust};

/// What a finished session came to.
#[derive(Debug)]
pub struct SharerReport {
    /// Screen frames sent.
    pub frames: u64,
    /// Input events received, in their line format (`pointer-move 0.5 0.5`).
    pub input_events: Vec<String>,
    /// The code both people compared.
    pub verification_code: String,
}

/// Runs one session as the sharer of `code`, sending `fps` test-card frames a second until
/// the helper ends the session, or until `end_after_inputs` input events have arrived
/// (0: never), when the sharer ends it.
pub async fn run(
    options: ClientOptions,
    code: &str,
    fps: u32,
    end_after_inputs: usize,
) -> Result<SharerReport, Box<dyn Error>> {
    let card = TestCard::new(640, 360)?;
    let mut client = Client::connect(options).await?;
    let request = client.join(code).await?;
    let helper = request.helper.unwrap_or_default();
    let mode = Mode::from_wire(request.mode).map_or("unknown", Mode::as_str);
    println!(
        "{} {} ({}) asks to connect in {mode} mode; consenting",
        helper.given_name, helper.family_name, helper.company_name
    );
    let started = client.accept().await?;
    let mut session = secure::channels(&client, &started, Role::Sharer).await?;
    let mut report = SharerReport {
        frames: 0,
        input_events: Vec::new(),
        verification_code: session.verification_code().unwrap_or_default().to_string(),
    };
    println!(
        "verification code: {} (compare it with the helper)",
        session.verification_code().unwrap_or("none: not protected")
    );
    let mut screen = ContentSender::open(&session, Channel::Screen, "sdk-example-sharer").await?;
    let mut input: Option<ContentReceiver> = None;
    let mut ticker = tokio::time::interval(Duration::from_secs(1) / fps.max(1));
    // A slow encoder drops frames rather than bunching them up.
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let first = Instant::now();
    loop {
        tokio::select! {
            _ = ticker.tick() => {
                let frame = ScreenFrame {
                    frame_number: report.frames,
                    timestamp_us: first.elapsed().as_micros() as u64,
                    width: card.width(),
                    height: card.height(),
                    format: ImageFormat::Png,
                    data: Bytes::from(card.png(report.frames)?),
                };
                // The helper may end the session at any moment: a refused send means the
                // session's end is on its way on the control stream.
                if screen.send(&Content::Screen(frame)).await.is_err() {
                    println!("session ended: {}", client.wait_for_end().await);
                    break;
                }
                report.frames += 1;
            }
            accepted = session.accept_channel() => {
                match accepted {
                    Ok((channel @ Channel::Input, receiver)) => {
                        input = Some(ContentReceiver::new(channel, receiver));
                    }
                    Ok(_) => {}
                    // The connection is going: the control stream says why.
                    Err(_) => {
                        println!("session ended: {}", client.wait_for_end().await);
                        break;
                    }
                }
            }
            event = next(&mut input) => match event {
                Ok(Some(Content::Input(event))) => {
                    println!("input {event}");
                    report.input_events.push(event.to_string());
                    if report.input_events.len() == end_after_inputs {
                        client.end_session().await?;
                        println!("session ended by the sharer");
                        break;
                    }
                }
                // Key-frame requests and other content: the next tick sends a whole frame
                // anyway (every frame of this profile is whole).
                Ok(Some(_)) => {}
                Err(e) if e.is_skipped() => println!("skipped input: {e}"),
                _ => input = None,
            },
            reason = client.wait_for_end() => {
                println!("session ended: {reason}");
                break;
            }
        }
    }
    println!(
        "sent {} frames, received {} input events",
        report.frames,
        report.input_events.len()
    );
    client.close().await;
    Ok(report)
}

/// The next content on `receiver`, or never while there is none yet.
async fn next(
    receiver: &mut Option<ContentReceiver>,
) -> Result<Option<Content>, remote_help_sdk::client::content::ContentError> {
    match receiver {
        Some(receiver) => receiver.recv().await,
        None => std::future::pending().await,
    }
}

/// Argument `index` of the command line, else the environment variable `env`.
fn arg(index: usize, env: &str) -> Option<String> {
    std::env::args()
        .nth(index)
        .or_else(|| std::env::var(env).ok())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    const USAGE: &str = "usage: share_test_card RELAY FINGERPRINT TOKEN_FILE CODE \
                         (or REMOTE_HELP_RELAY, REMOTE_HELP_PIN, REMOTE_HELP_TOKEN_FILE, REMOTE_HELP_CODE)";
    let relay = arg(1, "REMOTE_HELP_RELAY").ok_or(USAGE)?;
    let pin = arg(2, "REMOTE_HELP_PIN").ok_or(USAGE)?;
    let token_file = arg(3, "REMOTE_HELP_TOKEN_FILE").ok_or(USAGE)?;
    let code = arg(4, "REMOTE_HELP_CODE").ok_or(USAGE)?;
    let end_after_inputs: usize = std::env::var("REMOTE_HELP_INPUTS")
        .ok()
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(0);
    let relay = tokio::net::lookup_host(&relay)
        .await?
        .next()
        .ok_or("the relay's name resolves to no address")?;
    let pin = Fingerprint::parse(&pin).ok_or("FINGERPRINT: 64 hex digits expected")?;
    let token = std::fs::read_to_string(&token_file)?.trim().to_string();
    let options = ClientOptions::new(relay, RelayTrust::Pin(pin), token, Role::Sharer);
    run(options, &code, 10, end_after_inputs).await?;
    Ok(())
}
