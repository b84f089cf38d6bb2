//! The helper's side of a session, in one small program: connect to a relay with a token and
//! the relay's pinned certificate fingerprint, create a session, print its code for the
//! person being helped, and once they have joined and consented, print the verification
//! code both must compare, count the screen frames that arrive and, after the first few,
//! send one pointer move; it runs until the session ends.
//!
//! ```text
//! cargo run -p remote-help-sdk --example helper -- RELAY FINGERPRINT TOKEN_FILE [FRAMES]
//! ```
//!
//! Each argument may come from the environment instead: `REMOTE_HELP_RELAY` (`host:port`),
//! `REMOTE_HELP_PIN` (the relay certificate's SHA-256, as `relay` logs it and writes to
//! `relay-dev-state/relay-cert.sha256`), `REMOTE_HELP_TOKEN_FILE` (a helper token, e.g.
//! from `relay dev-token --role helper --out helper.jwt`), `REMOTE_HELP_FRAMES` (how many
//! frames to receive before sending the pointer move; default 3).
//! The sharer's side is `examples/share_test_card.rs`.

use std::error::Error;

use remote_help_sdk::client::content::{Content, ContentReceiver, ContentSender, InputEvent};
use remote_help_sdk::client::{Client, ClientOptions, secure};
use remote_help_sdk::session::{Channel, Mode, Role};
use remote_help_sdk::tls::{Fingerprint, RelayTrust};

/// What a finished session came to.
#[derive(Debug)]
pub struct HelperReport {
    /// Screen frames received.
    pub frames: u64,
    /// Bytes of image data in them.
    pub bytes: u64,
    /// The code both people compared.
    pub verification_code: String,
}

/// Runs one session as the helper: `show_code` gets the session code to pass on to the
/// sharer; after `frames` screen frames it sends one pointer move (in a mode that allows
/// input), and it returns when the session ends (the sharer ends it, or the connection goes).
pub async fn run(
    options: ClientOptions,
    frames: u64,
    show_code: impl FnOnce(&str),
) -> Result<HelperReport, Box<dyn Error>> {
    let mut client = Client::connect(options).await?;
    let created = client.create_session(Mode::FullControl).await?;
    show_code(&created.code);
    let sharer = client.wait_for_sharer().await?;
    println!(
        "{} {} joined; waiting for their consent",
        sharer.given_name, sharer.family_name
    );
    let started = client.wait_for_start().await?;
    println!("session started in {} mode", started.mode.as_str());
    // The key exchange: both ends derive the same short code from it, which the two people
    // compare (by phone, say) to know that no one sits in the middle.
    let mut session = secure::channels(&client, &started, Role::Helper).await?;
    println!(
        "verification code: {} (compare it with the person you help)",
        session.verification_code().unwrap_or("none: not protected")
    );
    // Input flows helper to sharer, in modes that allow it.
    let mut input = if started.mode.allows_input() {
        Some(ContentSender::open(&session, Channel::Input, "sdk-example-helper").await?)
    } else {
        None
    };
    let mut report = HelperReport {
        frames: 0,
        bytes: 0,
        verification_code: session.verification_code().unwrap_or_default().to_string(),
    };
    // The sharer opens its screen channel; other channels (chat) are not read here.
    let mut screen = loop {
        let (channel, receiver) = session.accept_channel().await?;
        if channel == Channel::Screen {
            break ContentReceiver::new(channel, receiver);
        }
    };
    loop {
        tokio::select! {
            content = screen.recv() => match content {
                Ok(Some(Content::Screen(frame))) => {
                    report.frames += 1;
                    report.bytes += frame.data.len() as u64;
                    println!(
                        "frame {} ({}x{} {}, {} bytes)",
                        frame.frame_number,
                        frame.width,
                        frame.height,
                        frame.format.extension(),
                        frame.data.len()
                    );
                    if report.frames == frames.max(1)
                        && let Some(input) = input.as_mut()
                    {
                        input
                            .send(&Content::Input(InputEvent::PointerMove { x: 0.5, y: 0.5 }))
                            .await?;
                    }
                }
                Ok(Some(_)) => {}
                Ok(None) => break,
                Err(e) if e.is_skipped() => println!("skipped frame: {e}"),
                // The session's end cuts the stream: the control stream says why.
                Err(_) => {
                    println!("session ended: {}", client.wait_for_end().await);
                    break;
                }
            },
            reason = client.wait_for_end() => {
                println!("session ended: {reason}");
                break;
            }
        }
    }
    println!("received {} frames, {} bytes", report.frames, report.bytes);
    client.close().await;
    Ok(report)
}

/// Argument `index` of the command line, else the environment variable `env`.
fn arg(index: usize, env: &str) -> Option<String> {
    std::env::args()
        .nth(index)
        .or_else(|| std::env::var(env).ok())
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn Error>> {
    const USAGE: &str = "usage: helper RELAY FINGERPRINT TOKEN_FILE [FRAMES] \
                         (or REMOTE_HELP_RELAY, REMOTE_HELP_PIN, REMOTE_HELP_TOKEN_FILE, REMOTE_HELP_FRAMES)";
    let relay = arg(1, "REMOTE_HELP_RELAY").ok_or(USAGE)?;
    let pin = arg(2, "REMOTE_HELP_PIN").ok_or(USAGE)?;
    let token_file = arg(3, "REMOTE_HELP_TOKEN_FILE").ok_or(USAGE)?;
    let frames: u64 = arg(4, "REMOTE_HELP_FRAMES")
        .map(|n| n.parse())
        .transpose()?
        .unwrap_or(3);
    let relay = tokio::net::lookup_host(&relay)
        .await?
        .next()
        .ok_or("the relay's name resolves to no address")?;
    let pin = Fingerprint::parse(&pin).ok_or("FINGERPRINT: 64 hex digits expected")?;
    let token = std::fs::read_to_string(&token_file)?.trim().to_string();
    let options = ClientOptions::new(relay, RelayTrust::Pin(pin), token, Role::Helper);
    run(options, frames, |code| {
        println!("session code: {code} (read it to the person you are helping)")
    })
    .await?;
    Ok(())
}
