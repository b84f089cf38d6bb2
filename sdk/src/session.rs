//! The session vocabulary both ends share: who a party is ([`Role`]), what the helper may
//! do ([`Mode`]), the data channels ([`Channel`]) and the rules for which channel may flow
//! which way ([`may_send`], [`session_channels`]) and which end-to-end suite a session uses
//! ([`choose_suite`]).
//!
//! The relay enforces these rules and the SDK follows them, so both read them from here:
//! one definition, no drift. Pure functions, no I/O.

use remote_help_proto::v1;

/// Which side of a session a connection speaks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// IT support staff who view or control another device.
    Helper,
    /// The user or device agent whose screen is shared.
    Sharer,
}

impl Role {
    /// The role a `Hello` names, if it names one.
    pub fn from_wire(role: i32) -> Option<Role> {
        match v1::Role::try_from(role) {
            Ok(v1::Role::Helper) => Some(Role::Helper),
            Ok(v1::Role::Sharer) => Some(Role::Sharer),
            _ => None,
        }
    }

    /// Lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Helper => "helper",
            Role::Sharer => "sharer",
        }
    }
}

/// What the helper may do in a session. Ordered: a later mode includes the earlier ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Mode {
    /// Screen only.
    ViewOnly,
    /// Screen and input.
    FullControl,
    /// Full control plus elevation (UAC) prompts; requested during a session.
    Elevation,
    /// Full control of a device agent with no user, without a consent prompt.
    Unattended,
}

impl Mode {
    /// The mode a message names, if it names one.
    pub fn from_wire(mode: i32) -> Option<Mode> {
        match v1::Mode::try_from(mode) {
            Ok(v1::Mode::ViewOnly) => Some(Mode::ViewOnly),
            Ok(v1::Mode::FullControl) => Some(Mode::FullControl),
            Ok(v1::Mode::Elevation) => Some(Mode::Elevation),
            Ok(v1::Mode::Unattended) => Some(Mode::Unattended),
            _ => None,
        }
    }

    /// The wire value.
    pub fn to_wire(self) -> v1::Mode {
        match self {
            Mode::ViewOnly => v1::Mode::ViewOnly,
            Mode::FullControl => v1::Mode::FullControl,
            Mode::Elevation => v1::Mode::Elevation,
            Mode::Unattended => v1::Mode::Unattended,
        }
    }

    /// Lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::ViewOnly => "view_only",
            Mode::FullControl => "full_control",
            Mode::Elevation => "elevation",
            Mode::Unattended => "unattended",
        }
    }

    /// Whether input flows in this mode.
    pub fn allows_input(self) -> bool {
        self >= Mode::FullControl
    }
}

/// The data channels of a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Channel {
    /// Sharer to helper: screen frames.
    Screen,
    /// Helper to sharer: input events.
    Input,
    /// Both ways: chat.
    Chat,
    /// Both ways: the end-to-end key exchange.
    Keys,
}

impl Channel {
    /// QUIC send priority of the channel's streams (higher goes first when a connection's
    /// congestion window is the limit): key exchange and input before chat, chat before
    /// screen, so a burst of screen frames never delays an input event.
    pub fn send_priority(self) -> i32 {
        match self {
            Channel::Keys => 3,
            Channel::Input => 2,
            Channel::Chat => 1,
            Channel::Screen => 0,
        }
    }

    /// The domain channel for a wire channel.
    pub fn from_wire(channel: v1::Channel) -> Option<Channel> {
        match channel {
            v1::Channel::Screen => Some(Channel::Screen),
            v1::Channel::Input => Some(Channel::Input),
            v1::Channel::Chat => Some(Channel::Chat),
            v1::Channel::Keys => Some(Channel::Keys),
            v1::Channel::Unspecified => None,
        }
    }

    /// The wire channel.
    pub fn to_wire(self) -> v1::Channel {
        match self {
            Channel::Screen => v1::Channel::Screen,
            Channel::Input => v1::Channel::Input,
            Channel::Chat => v1::Channel::Chat,
            Channel::Keys => v1::Channel::Keys,
        }
    }

    /// Lower-case name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            Channel::Screen => "screen",
            Channel::Input => "input",
            Channel::Chat => "chat",
            Channel::Keys => "keys",
        }
    }

    /// A small index for per-channel bookkeeping arrays.
    pub fn index(self) -> usize {
        match self {
            Channel::Screen => 0,
            Channel::Input => 1,
            Channel::Chat => 2,
            Channel::Keys => 3,
        }
    }
}

/// The channels an active session in `mode` carries; chat only where the tenant allows it.
pub fn session_channels(mode: Mode, chat_allowed: bool) -> Vec<Channel> {
    let mut channels = vec![Channel::Screen];
    if mode.allows_input() {
        channels.push(Channel::Input);
    }
    if chat_allowed {
        channels.push(Channel::Chat);
    }
    channels.push(Channel::Keys);
    channels
}

/// Whether a party in `role` may send on `channel` in an active session in `mode`.
///
/// Screen flows only from the sharer, input only from the helper and only in a mode that
/// allows input; chat flows both ways unless the tenant disabled it.
pub fn may_send(role: Role, channel: Channel, mode: Mode, chat_allowed: bool) -> bool {
    match channel {
        Channel::Screen => role == Role::Sharer,
        Channel::Input => role == Role::Helper && mode.allows_input(),
        Channel::Chat => chat_allowed,
        Channel::Keys => true,
    }
}

/// The end-to-end protection suite of a session (PROTOCOL.md §8.7): the first id of the
/// helper's announced list that the sharer's list also holds, so the helper's order wins;
/// 0 never matches. `None`: no suite in common.
pub fn choose_suite(helper: &[u32], sharer: &[u32]) -> Option<u32> {
    helper
        .iter()
        .copied()
        .find(|id| *id != 0 && sharer.contains(id))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn direction_rules_per_channel_and_mode() {
        use Channel::*;
        use Mode::*;
        use Role::*;
        let table = [
            (Sharer, Screen, ViewOnly, true, true),
            (Helper, Screen, ViewOnly, true, false),
            (Helper, Input, ViewOnly, true, false),
            (Helper, Input, FullControl, true, true),
            (Helper, Input, Elevation, true, true),
            (Helper, Input, Unattended, true, true),
            (Sharer, Input, FullControl, true, false),
            (Sharer, Screen, FullControl, true, true),
            (Helper, Chat, ViewOnly, true, true),
            (Sharer, Chat, ViewOnly, true, true),
            (Helper, Chat, FullControl, false, false),
            (Sharer, Chat, FullControl, false, false),
        ];
        for (role, channel, mode, chat_allowed, allowed) in table {
            assert_eq!(
                may_send(role, channel, mode, chat_allowed),
                allowed,
                "{role:?} on {channel:?} in {mode:?}, chat allowed {chat_allowed}"
            );
        }
        assert_eq!(session_channels(ViewOnly, true), [Screen, Chat, Keys]);
        assert_eq!(session_channels(Elevation, false), [Screen, Input, Keys]);
        assert!(may_send(Helper, Keys, ViewOnly, false) && may_send(Sharer, Keys, ViewOnly, false));
    }

    #[test]
    fn wire_enums_map_and_unspecified_is_refused() {
        assert_eq!(Role::from_wire(v1::Role::Helper as i32), Some(Role::Helper));
        assert_eq!(Role::from_wire(0), None);
        assert_eq!(Role::from_wire(99), None);
        assert_eq!(
            Mode::from_wire(v1::Mode::FullControl as i32),
            Some(Mode::FullControl)
        );
        assert_eq!(Mode::from_wire(0), None);
        assert!(Mode::ViewOnly < Mode::FullControl && Mode::FullControl < Mode::Elevation);
        assert_eq!(Channel::from_wire(v1::Channel::Unspecified), None);
    }
}
