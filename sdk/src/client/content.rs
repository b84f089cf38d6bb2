//! Content profile v1 (PROTOCOL.md §8.8): what the screen, input and chat channels carry
//! inside their data frames, so that two independently written clients (this SDK, a web
//! page) can show each other a screen and send each other input and chat.
//!
//! Each data frame (with end-to-end protection: the plaintext of each sealed frame) is one
//! protobuf `Content`. A content stream opens with a `ContentStart` naming the profile;
//! then the channel's own members follow: screen frames (whole PNG or JPEG images) on the
//! screen channel, input events and key-frame requests on the input channel, chat
//! messages (and the helper's key-frame requests) on the chat channel.
//!
//! The rules live in two pure halves, [`ContentEncoder`] and [`ContentDecoder`], which
//! apply the same checks, so this SDK never sends what it would refuse. The async wrappers
//! [`ContentSender`] and [`ContentReceiver`] put them on a session's channels, sealed or
//! not. A malformed frame is never fatal: the receiver returns
//! [`ContentError::Malformed`] for it, counts it ([`ContentReceiver::skipped`]) and goes
//! on with the next frame.
//!
//! ```no_run
//! # async fn demo(helper: remote_help_sdk::client::secure::SessionChannels,
//! #               mut sharer: remote_help_sdk::client::secure::SessionChannels)
//! #               -> Result<(), remote_help_sdk::client::content::ContentError> {
//! use remote_help_sdk::client::content::{Content, ContentReceiver, ContentSender, InputEvent};
//! use remote_help_sdk::session::Channel;
//! let mut input = ContentSender::open(&helper, Channel::Input, "demo/1").await?;
//! input.send(&Content::Input(InputEvent::PointerMove { x: 0.5, y: 0.25 })).await?;
//! let (channel, receiver) = sharer.accept_channel().await?;
//! let mut events = ContentReceiver::new(channel, receiver);
//! if let Some(Content::Input(event)) = events.recv().await? {
//!     println!("{event}"); // pointer-move 0.5 0.25
//! }
//! # Ok(()) }
//! ```

use std::fmt;
use std::str::FromStr;

use bytes::Bytes;
use prost::Message;
use remote_help_proto::v1;

use super::ClientError;
use super::secure::{Receiver, Sender, SessionChannels};
use crate::session::Channel;

/// The content profile this SDK speaks, as `ContentStart.profile` names it.
pub const PROFILE: u32 = 1;
/// The largest encoded `Content` (4 MiB data frames, less room for sealing).
pub const MAX_CONTENT_BYTES: usize = 4 * 1024 * 1024 - 1024;
/// The largest screen width or height, in pixels.
pub const MAX_SCREEN_SIDE: u32 = 16_384;
/// The largest `TextInput.text`, in bytes.
pub const MAX_TEXT_INPUT_BYTES: usize = 4096;
/// The largest `ChatMessage.text`, in bytes.
pub const MAX_CHAT_BYTES: usize = 16_384;
/// The largest `KeyEvent.code`, in bytes.
pub const MAX_KEY_CODE_BYTES: usize = 32;
/// The largest pointer button number (`MouseEvent.button`).
pub const MAX_BUTTON: u32 = 31;

const PNG_SIGNATURE: &[u8] = &[0x89, b'P', b'N', b'G', 0x0D, 0x0A, 0x1A, 0x0A];
const JPEG_SIGNATURE: &[u8] = &[0xFF, 0xD8, 0xFF];

/// How a screen frame's image is encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ImageFormat {
    /// A whole PNG file.
    Png,
    /// A whole JPEG file.
    Jpeg,
}

impl ImageFormat {
    /// The usual file extension.
    pub fn extension(self) -> &'static str {
        match self {
            ImageFormat::Png => "png",
            ImageFormat::Jpeg => "jpg",
        }
    }

    fn to_wire(self) -> v1::ImageFormat {
        match self {
            ImageFormat::Png => v1::ImageFormat::Png,
            ImageFormat::Jpeg => v1::ImageFormat::Jpeg,
        }
    }

    fn signature(self) -> &'static [u8] {
        match self {
            ImageFormat::Png => PNG_SIGNATURE,
            ImageFormat::Jpeg => JPEG_SIGNATURE,
        }
    }
}

/// One whole picture of the shared screen.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScreenFrame {
    /// Strictly increasing on each screen stream.
    pub frame_number: u64,
    /// Capture time, microseconds on the sender's monotonic clock.
    pub timestamp_us: u64,
    /// Width of the shared screen (and of the image), pixels.
    pub width: u32,
    /// Height of the shared screen (and of the image), pixels.
    pub height: u32,
    /// The image's encoding.
    pub format: ImageFormat,
    /// The image file.
    pub data: Bytes,
}

/// W3C `WheelEvent.deltaMode`: the unit of a wheel event's deltas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WheelMode {
    /// Pixels of the shared screen (0).
    Pixel,
    /// Lines (1).
    Line,
    /// Pages (2).
    Page,
}

impl WheelMode {
    fn from_wire(mode: u32) -> Option<WheelMode> {
        match mode {
            0 => Some(WheelMode::Pixel),
            1 => Some(WheelMode::Line),
            2 => Some(WheelMode::Page),
            _ => None,
        }
    }

    fn to_wire(self) -> u32 {
        match self {
            WheelMode::Pixel => 0,
            WheelMode::Line => 1,
            WheelMode::Page => 2,
        }
    }

    fn name(self) -> &'static str {
        match self {
            WheelMode::Pixel => "pixel",
            WheelMode::Line => "line",
            WheelMode::Page => "page",
        }
    }
}

/// Modifier keys held during a key event, as the `KeyEvent.modifiers` bit set.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Modifiers(u32);

impl Modifiers {
    /// No modifier.
    pub const NONE: Modifiers = Modifiers(0);
    /// Shift (bit 1).
    pub const SHIFT: Modifiers = Modifiers(1);
    /// Control (bit 2).
    pub const CONTROL: Modifiers = Modifiers(2);
    /// Alt / Option (bit 4).
    pub const ALT: Modifiers = Modifiers(4);
    /// Meta / Windows / Command (bit 8).
    pub const META: Modifiers = Modifiers(8);
    const NAMES: [(Modifiers, &'static str); 4] = [
        (Modifiers::SHIFT, "shift"),
        (Modifiers::CONTROL, "control"),
        (Modifiers::ALT, "alt"),
        (Modifiers::META, "meta"),
    ];

    /// The modifiers of a bit set; `None` if an undefined bit is set.
    pub fn from_bits(bits: u32) -> Option<Modifiers> {
        (bits & !0xF == 0).then_some(Modifiers(bits))
    }

    /// The bit set.
    pub fn bits(self) -> u32 {
        self.0
    }

    /// Both sets together.
    pub fn with(self, other: Modifiers) -> Modifiers {
        Modifiers(self.0 | other.0)
    }

    /// Whether every modifier of `other` is held.
    pub fn contains(self, other: Modifiers) -> bool {
        self.0 & other.0 == other.0
    }
}

impl fmt::Display for Modifiers {
    /// `none`, or the held modifiers joined by `+` in the order shift, control, alt, meta.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0 == 0 {
            return f.write_str("none");
        }
        let names: Vec<&str> = Modifiers::NAMES
            .iter()
            .filter(|(m, _)| self.contains(*m))
            .map(|(_, n)| *n)
            .collect();
        f.write_str(&names.join("+"))
    }
}

/// One input event. Coordinates are normalised to the shared screen: `(0, 0)` is its
/// top-left corner, `(1, 1)` its bottom-right corner.
#[derive(Debug, Clone, PartialEq)]
pub enum InputEvent {
    /// The pointer moved.
    PointerMove {
        /// Horizontal position, 0 to 1.
        x: f64,
        /// Vertical position, 0 to 1.
        y: f64,
    },
    /// A pointer button went down or up.
    PointerButton {
        /// `MouseEvent.button`: 0 main, 1 auxiliary, 2 secondary, 3 back, 4 forward.
        button: u32,
        /// Pressed (true) or released.
        down: bool,
        /// Horizontal position, 0 to 1.
        x: f64,
        /// Vertical position, 0 to 1.
        y: f64,
    },
    /// The wheel turned at the pointer's position.
    Wheel {
        /// Horizontal amount, positive to the right.
        dx: f64,
        /// Vertical amount, positive down.
        dy: f64,
        /// The unit of `dx` and `dy`.
        mode: WheelMode,
    },
    /// A physical key went down or up.
    Key {
        /// W3C `KeyboardEvent.code` ("KeyA", "ShiftLeft", "Enter").
        code: String,
        /// Pressed (true) or released.
        down: bool,
        /// Modifiers held.
        modifiers: Modifiers,
    },
    /// Text to insert as typed.
    Text(String),
}

/// The pixel a normalised coordinate falls on, along a side of `size` pixels:
/// `min(floor(v × size), size − 1)` (PROTOCOL.md §8.8.4), so 1.0, the far edge, is the
/// last pixel. For a sharer applying pointer events to a screen `size` pixels wide (or
/// high); `v` is a checked coordinate (0 to 1), `size` at least 1.
pub fn to_pixel(v: f64, size: u32) -> u32 {
    // `as` saturates: a NaN or negative product gives 0, never a wrap.
    ((v * f64::from(size)).floor() as u32).min(size.saturating_sub(1))
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatMessage {
    /// The text, UTF-8.
    pub text: String,
    /// When it was written, milliseconds since the Unix epoch (0 if unknown).
    pub sent_at_ms: u64,
}

/// One item of content, after the stream's start.
#[derive(Debug, Clone, PartialEq)]
pub enum Content {
    /// A screen frame (screen channel).
    Screen(ScreenFrame),
    /// An input event (input channel).
    Input(InputEvent),
    /// A chat message (chat channel).
    Chat(ChatMessage),
    /// The helper asks for a whole frame soon (input or chat channel).
    KeyFrameRequest,
}

/// Why a content frame was refused. A receiver skips such a frame and goes on; a sender
/// refuses to send it.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Malformed {
    /// Over [`MAX_CONTENT_BYTES`].
    #[error("{0} bytes is over the content limit of {MAX_CONTENT_BYTES} bytes")]
    TooLarge(usize),
    /// Not a protobuf `Content`.
    #[error("not a Content message: {0}")]
    Undecodable(String),
    /// No member set, or a member this client does not know (a later addition).
    #[error("no Content member set, or one this client does not know")]
    Unknown,
    /// Content before the stream's start.
    #[error("content before the stream's start")]
    NotStarted,
    /// A second start on one stream.
    #[error("a second start on one stream")]
    SecondStart,
    /// A start naming a profile this client does not speak; the stream's frames are not
    /// interpreted.
    #[error("content profile {0} is not supported (this client speaks {PROFILE})")]
    UnsupportedProfile(u32),
    /// A member the channel does not carry.
    #[error("{what} is not carried on the {channel:?} channel")]
    WrongChannel {
        /// The member.
        what: &'static str,
        /// The channel it came on.
        channel: Channel,
    },
    /// A screen size outside 1 to [`MAX_SCREEN_SIDE`].
    #[error("screen size {width}x{height} is outside 1 to {MAX_SCREEN_SIDE} pixels")]
    ScreenSize {
        /// The width given.
        width: u32,
        /// The height given.
        height: u32,
    },
    /// An image format this profile does not define.
    #[error("unknown image format {0}")]
    ImageFormat(i32),
    /// The data does not start with the format's signature.
    #[error("the image data is not a {0:?} file")]
    NotAnImage(ImageFormat),
    /// A frame number that does not follow the previous one.
    #[error("frame number {got} does not follow {previous}")]
    FrameNumber {
        /// The last accepted frame number.
        previous: u64,
        /// The refused one.
        got: u64,
    },
    /// An input event with no member, or one this client does not know.
    #[error("no InputEvent member set, or one this client does not know")]
    UnknownInput,
    /// A coordinate that is not a number within 0 to 1.
    #[error("coordinate {0} is not within 0 to 1")]
    Coordinate(f64),
    /// A pointer button above [`MAX_BUTTON`].
    #[error("pointer button {0} is above {MAX_BUTTON}")]
    Button(u32),
    /// A wheel delta that is not finite.
    #[error("wheel delta {0} is not finite")]
    WheelDelta(f64),
    /// A wheel delta mode other than 0, 1, 2.
    #[error("unknown wheel delta mode {0}")]
    WheelMode(u32),
    /// A key code that is not 1 to 32 ASCII letters and digits.
    #[error("key code {0:?} is not 1 to {MAX_KEY_CODE_BYTES} ASCII letters and digits")]
    KeyCode(String),
    /// Modifier bits other than the four defined.
    #[error("modifier bits {0:#x} are not defined")]
    Modifiers(u32),
    /// Text (input or chat) that is empty or too long.
    #[error("text of {len} bytes is outside 1 to {max} bytes")]
    TextLength {
        /// Its length in bytes.
        len: usize,
        /// The limit.
        max: usize,
    },
}

/// Why a content call failed.
#[derive(Debug, thiserror::Error)]
pub enum ContentError {
    /// The channel itself failed (the stream broke, protection refused a frame, the
    /// session ended): the stream is done.
    #[error(transparent)]
    Transport(#[from] ClientError),
    /// One received frame was malformed and skipped; the stream goes on.
    #[error("malformed content skipped: {0}")]
    Malformed(Malformed),
    /// This side was asked to send content the profile does not allow; nothing was sent.
    #[error("refused to send invalid content: {0}")]
    Invalid(Malformed),
}

impl ContentError {
    /// Whether the stream can still be read: true for a skipped malformed frame.
    pub fn is_skipped(&self) -> bool {
        matches!(self, ContentError::Malformed(_))
    }
}

/// What one accepted frame was.
enum Step {
    Start,
    Item(Content),
}

/// The per-stream rules both directions apply: the start comes first and once, members
/// fit the channel, fields are in range, frame numbers increase.
#[derive(Debug, Clone, PartialEq, Eq)]
struct StreamRules {
    channel: Channel,
    started: bool,
    last_frame: Option<u64>,
}

impl StreamRules {
    fn new(channel: Channel) -> StreamRules {
        StreamRules {
            channel,
            started: false,
            last_frame: None,
        }
    }

    /// Checks one message and, when it is accepted, records it.
    fn accept(&mut self, content: v1::Content) -> Result<Step, Malformed> {
        use v1::content::Msg;
        let msg = content.msg.ok_or(Malformed::Unknown)?;
        if let Msg::Start(start) = &msg {
            if self.started {
                return Err(Malformed::SecondStart);
            }
            if start.profile != PROFILE {
                return Err(Malformed::UnsupportedProfile(start.profile));
            }
            self.started = true;
            return Ok(Step::Start);
        }
        if !self.started {
            return Err(Malformed::NotStarted);
        }
        let wrong = |what| Malformed::WrongChannel {
            what,
            channel: self.channel,
        };
        let content = match (self.channel, msg) {
            (Channel::Screen, Msg::ScreenFrame(frame)) => Content::Screen(self.frame(frame)?),
            (Channel::Input, Msg::Input(event)) => Content::Input(input_event(event)?),
            (Channel::Chat, Msg::Chat(chat)) => {
                text_length(&chat.text, MAX_CHAT_BYTES)?;
                Content::Chat(ChatMessage {
                    text: chat.text,
                    sent_at_ms: chat.sent_at_ms,
                })
            }
            (Channel::Input | Channel::Chat, Msg::KeyFrameRequest(_)) => Content::KeyFrameRequest,
            (_, Msg::ScreenFrame(_)) => return Err(wrong("a screen frame")),
            (_, Msg::Input(_)) => return Err(wrong("an input event")),
            (_, Msg::Chat(_)) => return Err(wrong("a chat message")),
            (_, Msg::KeyFrameRequest(_)) => return Err(wrong("a key-frame request")),
            (_, Msg::Start(_)) => unreachable!("handled above"),
        };
        Ok(Step::Item(content))
    }

    fn frame(&mut self, frame: v1::ScreenFrame) -> Result<ScreenFrame, Malformed> {
        let side = 1..=MAX_SCREEN_SIDE;
        if !side.contains(&frame.width) || !side.contains(&frame.height) {
            return Err(Malformed::ScreenSize {
                width: frame.width,
                height: frame.height,
            });
        }
        let format = match v1::ImageFormat::try_from(frame.format) {
            Ok(v1::ImageFormat::Png) => ImageFormat::Png,
            Ok(v1::ImageFormat::Jpeg) => ImageFormat::Jpeg,
            _ => return Err(Malformed::ImageFormat(frame.format)),
        };
        if !frame.data.starts_with(format.signature()) {
            return Err(Malformed::NotAnImage(format));
        }
        if let Some(previous) = self.last_frame
            && frame.frame_number <= previous
        {
            return Err(Malformed::FrameNumber {
                previous,
                got: frame.frame_number,
            });
        }
        self.last_frame = Some(frame.frame_number);
        Ok(ScreenFrame {
            frame_number: frame.frame_number,
            timestamp_us: frame.timestamp_us,
            width: frame.width,
            height: frame.height,
            format,
            data: Bytes::from(frame.data),
        })
    }
}

fn coordinate(v: f64) -> Result<f64, Malformed> {
    // `contains` is false for NaN, so NaN is refused too.
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(Malformed::Coordinate(v))
    }
}

fn finite(v: f64) -> Result<f64, Malformed> {
    if v.is_finite() {
        Ok(v)
    } else {
        Err(Malformed::WheelDelta(v))
    }
}

fn text_length(text: &str, max: usize) -> Result<(), Malformed> {
    if text.is_empty() || text.len() > max {
        return Err(Malformed::TextLength {
            len: text.len(),
            max,
        });
    }
    Ok(())
}

fn key_code(code: &str) -> Result<(), Malformed> {
    let ok = !code.is_empty()
        && code.len() <= MAX_KEY_CODE_BYTES
        && code.bytes().all(|b| b.is_ascii_alphanumeric());
    if ok {
        Ok(())
    } else {
        Err(Malformed::KeyCode(code.to_string()))
    }
}

fn input_event(event: v1::InputEvent) -> Result<InputEvent, Malformed> {
    use v1::input_event::Event;
    Ok(match event.event.ok_or(Malformed::UnknownInput)? {
        Event::PointerMove(m) => InputEvent::PointerMove {
            x: coordinate(m.x)?,
            y: coordinate(m.y)?,
        },
        Event::PointerButton(b) => {
            if b.button > MAX_BUTTON {
                return Err(Malformed::Button(b.button));
            }
            InputEvent::PointerButton {
                button: b.button,
                down: b.down,
                x: coordinate(b.x)?,
                y: coordinate(b.y)?,
            }
        }
        Event::Wheel(w) => InputEvent::Wheel {
            dx: finite(w.dx)?,
            dy: finite(w.dy)?,
            mode: WheelMode::from_wire(w.delta_mode).ok_or(Malformed::WheelMode(w.delta_mode))?,
        },
        Event::Key(k) => {
            key_code(&k.code)?;
            InputEvent::Key {
                code: k.code,
                down: k.down,
                modifiers: Modifiers::from_bits(k.modifiers)
                    .ok_or(Malformed::Modifiers(k.modifiers))?,
            }
        }
        Event::Text(t) => {
            text_length(&t.text, MAX_TEXT_INPUT_BYTES)?;
            InputEvent::Text(t.text)
        }
    })
}

impl InputEvent {
    fn to_wire(&self) -> v1::InputEvent {
        use v1::input_event::Event;
        let event = match self {
            InputEvent::PointerMove { x, y } => {
                Event::PointerMove(v1::PointerMove { x: *x, y: *y })
            }
            InputEvent::PointerButton { button, down, x, y } => {
                Event::PointerButton(v1::PointerButton {
                    button: *button,
                    down: *down,
                    x: *x,
                    y: *y,
                })
            }
            InputEvent::Wheel { dx, dy, mode } => Event::Wheel(v1::Wheel {
                dx: *dx,
                dy: *dy,
                delta_mode: mode.to_wire(),
            }),
            InputEvent::Key {
                code,
                down,
                modifiers,
            } => Event::Key(v1::KeyEvent {
                code: code.clone(),
                down: *down,
                modifiers: modifiers.bits(),
            }),
            InputEvent::Text(text) => Event::Text(v1::TextInput { text: text.clone() }),
        };
        v1::InputEvent { event: Some(event) }
    }
}

impl Content {
    fn to_wire(&self) -> v1::Content {
        use v1::content::Msg;
        let msg = match self {
            Content::Screen(f) => Msg::ScreenFrame(v1::ScreenFrame {
                frame_number: f.frame_number,
                timestamp_us: f.timestamp_us,
                width: f.width,
                height: f.height,
                format: f.format.to_wire() as i32,
                data: f.data.to_vec(),
            }),
            Content::Input(e) => Msg::Input(e.to_wire()),
            Content::Chat(c) => Msg::Chat(v1::ChatMessage {
                text: c.text.clone(),
                sent_at_ms: c.sent_at_ms,
            }),
            Content::KeyFrameRequest => Msg::KeyFrameRequest(v1::KeyFrameRequest {}),
        };
        v1::Content { msg: Some(msg) }
    }
}

/// Encodes one content stream's frames (pure): the start first, then content, each
/// checked by the rules a receiver applies.
#[derive(Debug, Clone)]
pub struct ContentEncoder {
    rules: StreamRules,
}

impl ContentEncoder {
    /// An encoder for a new stream on `channel`.
    pub fn new(channel: Channel) -> ContentEncoder {
        ContentEncoder {
            rules: StreamRules::new(channel),
        }
    }

    /// The stream's first frame: `ContentStart { profile: 1, software }`.
    pub fn start(&mut self, software: &str) -> Result<Vec<u8>, Malformed> {
        let content = v1::Content {
            msg: Some(v1::content::Msg::Start(v1::ContentStart {
                profile: PROFILE,
                software: software.to_string(),
            })),
        };
        self.checked(content)
    }

    /// One content frame.
    pub fn encode(&mut self, content: &Content) -> Result<Vec<u8>, Malformed> {
        self.checked(content.to_wire())
    }

    fn checked(&mut self, content: v1::Content) -> Result<Vec<u8>, Malformed> {
        let bytes = content.encode_to_vec();
        if bytes.len() > MAX_CONTENT_BYTES {
            return Err(Malformed::TooLarge(bytes.len()));
        }
        // The same rules as the receiver's, on a copy: a refused frame changes nothing.
        let mut rules = self.rules.clone();
        rules.accept(content)?;
        self.rules = rules;
        Ok(bytes)
    }
}

/// Decodes one content stream's frames (pure).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContentDecoder {
    rules: StreamRules,
}

impl ContentDecoder {
    /// A decoder for a stream on `channel`.
    pub fn new(channel: Channel) -> ContentDecoder {
        ContentDecoder {
            rules: StreamRules::new(channel),
        }
    }

    /// One frame: `Ok(None)` for the stream's start, `Ok(Some(_))` for content. A refused
    /// frame leaves the decoder as it was, so the next frame is judged on its own.
    pub fn decode(&mut self, frame: &[u8]) -> Result<Option<Content>, Malformed> {
        if frame.len() > MAX_CONTENT_BYTES {
            return Err(Malformed::TooLarge(frame.len()));
        }
        let content =
            v1::Content::decode(frame).map_err(|e| Malformed::Undecodable(e.to_string()))?;
        Ok(match self.rules.accept(content)? {
            Step::Start => None,
            Step::Item(content) => Some(content),
        })
    }
}

/// A content stream this side sends on: a session channel with the profile's framing.
pub struct ContentSender {
    sender: Sender,
    encoder: ContentEncoder,
}

impl fmt::Debug for ContentSender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentSender")
            .field("encoder", &self.encoder)
            .finish_non_exhaustive()
    }
}

impl ContentSender {
    /// Opens this side's `channel` of a session and sends its start; `software` names this
    /// client in the start (for the peer's logs).
    pub async fn open(
        channels: &SessionChannels,
        channel: Channel,
        software: &str,
    ) -> Result<ContentSender, ContentError> {
        let sender = channels.open_channel(channel).await?;
        ContentSender::start(sender, channel, software).await
    }

    /// Starts content on an already opened channel (sealed or not): sends the start.
    pub async fn start(
        sender: impl Into<Sender>,
        channel: Channel,
        software: &str,
    ) -> Result<ContentSender, ContentError> {
        let mut sender = sender.into();
        let mut encoder = ContentEncoder::new(channel);
        let start = encoder.start(software).map_err(ContentError::Invalid)?;
        sender.send(&start).await?;
        Ok(ContentSender { sender, encoder })
    }

    /// Sends one item; content the profile does not allow on this channel is refused with
    /// [`ContentError::Invalid`] and nothing is sent.
    pub async fn send(&mut self, content: &Content) -> Result<(), ContentError> {
        let frame = self
            .encoder
            .encode(content)
            .map_err(ContentError::Invalid)?;
        self.sender.send_bytes(Bytes::from(frame)).await?;
        Ok(())
    }

    /// Finishes the stream.
    pub async fn finish(self) -> Result<(), ContentError> {
        Ok(self.sender.finish().await?)
    }
}

/// A content stream from the peer.
pub struct ContentReceiver {
    receiver: Receiver,
    decoder: ContentDecoder,
    skipped: u64,
}

impl fmt::Debug for ContentReceiver {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ContentReceiver")
            .field("decoder", &self.decoder)
            .field("skipped", &self.skipped)
            .finish_non_exhaustive()
    }
}

impl ContentReceiver {
    /// Reads `channel`'s content from a channel the peer opened (sealed or not).
    pub fn new(channel: Channel, receiver: impl Into<Receiver>) -> ContentReceiver {
        ContentReceiver {
            receiver: receiver.into(),
            decoder: ContentDecoder::new(channel),
            skipped: 0,
        }
    }

    /// The next item; `None` once the sender finished the stream. A malformed frame is
    /// returned as [`ContentError::Malformed`] and counted; call again for the next one.
    pub async fn recv(&mut self) -> Result<Option<Content>, ContentError> {
        loop {
            let Some(frame) = self.receiver.recv().await? else {
                return Ok(None);
            };
            match self.decoder.decode(&frame) {
                Ok(Some(content)) => return Ok(Some(content)),
                Ok(None) => continue,
                Err(malformed) => {
                    self.skipped += 1;
                    tracing::debug!(%malformed, skipped = self.skipped, "content frame skipped");
                    return Err(ContentError::Malformed(malformed));
                }
            }
        }
    }

    /// How many malformed frames this stream has skipped.
    pub fn skipped(&self) -> u64 {
        self.skipped
    }
}

// ----- The line format of input events (rhelp's scripts and its printed events) -----

impl fmt::Display for InputEvent {
    /// One line: `pointer-move X Y`, `pointer-button B down|up X Y`, `wheel DX DY
    /// pixel|line|page`, `key CODE down|up MODIFIERS`, `text "JSON STRING"`. Numbers print
    /// in their shortest exact form, so parsing a line gives back the same event.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let updown = |down: bool| if down { "down" } else { "up" };
        match self {
            InputEvent::PointerMove { x, y } => write!(f, "pointer-move {x:?} {y:?}"),
            InputEvent::PointerButton { button, down, x, y } => {
                write!(f, "pointer-button {button} {} {x:?} {y:?}", updown(*down))
            }
            InputEvent::Wheel { dx, dy, mode } => {
                write!(f, "wheel {dx:?} {dy:?} {}", mode.name())
            }
            InputEvent::Key {
                code,
                down,
                modifiers,
            } => write!(f, "key {code} {} {modifiers}", updown(*down)),
            InputEvent::Text(text) => write!(
                f,
                "text {}",
                serde_json::to_string(text).map_err(|_| fmt::Error)?
            ),
        }
    }
}

impl FromStr for InputEvent {
    type Err = String;

    /// Parses the line format [`Display`](fmt::Display) writes, and checks the event as
    /// a receiver would.
    fn from_str(line: &str) -> Result<InputEvent, String> {
        let line = line.trim();
        if let Some(json) = line.strip_prefix("text ") {
            let text: String =
                serde_json::from_str(json).map_err(|e| format!("text: a JSON string: {e}"))?;
            text_length(&text, MAX_TEXT_INPUT_BYTES).map_err(|e| e.to_string())?;
            return Ok(InputEvent::Text(text));
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |s: &str| -> Result<f64, String> {
            s.parse::<f64>()
                .map_err(|_| format!("{s:?} is not a number"))
        };
        let pos =
            |s: &str| -> Result<f64, String> { coordinate(num(s)?).map_err(|e| e.to_string()) };
        let updown = |s: &str| match s {
            "down" => Ok(true),
            "up" => Ok(false),
            other => Err(format!("{other:?}: expected down or up")),
        };
        let event = match words.as_slice() {
            ["pointer-move", x, y] => InputEvent::PointerMove {
                x: pos(x)?,
                y: pos(y)?,
            },
            ["pointer-button", b, d, x, y] => {
                let button: u32 = b.parse().map_err(|_| format!("{b:?} is not a button"))?;
                if button > MAX_BUTTON {
                    return Err(Malformed::Button(button).to_string());
                }
                InputEvent::PointerButton {
                    button,
                    down: updown(d)?,
                    x: pos(x)?,
                    y: pos(y)?,
                }
            }
            ["wheel", dx, dy, mode] => InputEvent::Wheel {
                dx: finite(num(dx)?).map_err(|e| e.to_string())?,
                dy: finite(num(dy)?).map_err(|e| e.to_string())?,
                mode: match *mode {
                    "pixel" => WheelMode::Pixel,
                    "line" => WheelMode::Line,
                    "page" => WheelMode::Page,
                    other => return Err(format!("{other:?}: expected pixel, line or page")),
                },
            },
            ["key", code, d, mods] => {
                key_code(code).map_err(|e| e.to_string())?;
                let mut modifiers = Modifiers::NONE;
                if *mods != "none" {
                    for name in mods.split('+') {
                        let (m, _) = Modifiers::NAMES
                            .iter()
                            .find(|(_, n)| *n == name)
                            .ok_or_else(|| format!("{name:?}: not a modifier"))?;
                        modifiers = modifiers.with(*m);
                    }
                }
                InputEvent::Key {
                    code: code.to_string(),
                    down: updown(d)?,
                    modifiers,
                }
            }
            _ => return Err(format!("{line:?}: not an input event")),
        };
        Ok(event)
    }
}

#[cfg(test)]
#[path = "content_tests.rs"]
mod tests;
