//! The connection's data plane on the stream path: its data streams (tag, checks, forwarding to the peer) and datagrams; on a packet-path session, the refusal of both.

use super::*;

impl Conn {
    pub(super) fn stop_forwarding(&mut self) {
        self.tag_readers.abort_all();
        self.forwarders.abort_all();
    }

    pub(super) fn on_data_stream(&mut self, mut stream: PartyRecv) {
        let Some(session) = self.session.as_ref().filter(|s| s.active.is_some()) else {
            // Not fatal: the client may have opened it just before learning the
            // session ended. The stream alone is refused.
            metrics::counter!("relay_refusals_total", "code" => ErrorCode::ProtocolViolation.as_str_name())
                .increment(1);
            debug!("data stream outside an active session refused");
            stream.stop(ErrorCode::ProtocolViolation.to_quic());
            return;
        };
        if session.active.as_ref().is_some_and(|a| a.packet_path) {
            // The session's data goes the packet path: the relay forwards no streams here.
            metrics::counter!("relay_packet_path_refusals_total", "what" => "data_stream")
                .increment(1);
            metrics::counter!("relay_refusals_total", "code" => ErrorCode::ProtocolViolation.as_str_name())
                .increment(1);
            debug!(session = %session.id, "data stream on the relay connection of a packet-path session refused");
            stream.stop(ErrorCode::ProtocolViolation.to_quic());
            return;
        }
        if !self.data_streams.admit(&mut stream) {
            metrics::counter!("relay_refusals_total", "code" => ErrorCode::LimitExceeded.as_str_name())
                .increment(1);
            debug!(
                limit = crate::transport::UNI_STREAMS,
                "data stream over the per-connection limit refused"
            );
            stream.stop(ErrorCode::LimitExceeded.to_quic());
            return;
        }
        let session = session.id.clone();
        self.tag_readers.spawn(self.hub.tracked(async move {
            let mut tag = [0u8; 1];
            let tag = match stream.read_exact(&mut tag).await {
                Ok(()) => Ok(tag[0]),
                Err(e) => Err(e.to_string()),
            };
            TaggedStream {
                session,
                tag,
                stream,
            }
        }));
    }

    pub(super) fn on_tagged_stream(&mut self, tagged: TaggedStream) -> Result<(), Close> {
        let role = self.role;
        let Some(active) = self
            .session
            .as_mut()
            .filter(|s| s.id == tagged.session)
            .and_then(|s| s.active.as_mut())
        else {
            return Ok(());
        };
        let tag = match tagged.tag {
            Ok(tag) => tag,
            Err(e) => {
                debug!(error = %e, "data stream ended before its channel tag");
                return Ok(());
            }
        };
        let channel = channel_from_tag(tag)
            .ok()
            .and_then(Channel::from_wire)
            .ok_or_else(|| {
                Close::Refuse(
                    ErrorCode::ProtocolViolation,
                    format!("unknown data channel tag {tag}"),
                )
            })?;
        if channel == Channel::Chat && !active.chat_allowed {
            // Not fatal: the client was told chat is unavailable; refuse the stream alone.
            metrics::counter!("relay_refusals_total", "code" => ErrorCode::ChatDisabled.as_str_name()).increment(1);
            let mut stream = tagged.stream;
            stream.stop(ErrorCode::ChatDisabled.to_quic());
            return Ok(());
        }
        if !may_send(role, channel, active.mode, active.chat_allowed) {
            return Err(Close::Refuse(
                ErrorCode::ProtocolViolation,
                format!(
                    "a {} may not send on the {} channel in {} mode",
                    role.as_str(),
                    channel.as_str(),
                    active.mode.as_str()
                ),
            ));
        }
        if tag & CONTINUATION != 0 && !active.direct_offered {
            return Err(Close::Refuse(
                ErrorCode::ProtocolViolation,
                format!(
                    "a continuation of the {} channel in a session without a direct path",
                    channel.as_str()
                ),
            ));
        }
        let live =
            |f: &Option<tokio::task::AbortHandle>| f.as_ref().is_some_and(|f| !f.is_finished());
        if live(&active.forwarders[channel.index()]) {
            // A continuation (the channel coming back from a direct path) may overlap the
            // previous stream's tail; the receiver reads that to its move marker first.
            if tag & CONTINUATION == 0 || live(&active.moved_from[channel.index()]) {
                return Err(Close::Refuse(
                    ErrorCode::ProtocolViolation,
                    format!("the {} channel is already open", channel.as_str()),
                ));
            }
            active.moved_from[channel.index()] = active.forwarders[channel.index()].take();
        }
        let peer = active.peer.clone();
        let counters = active.counters.clone();
        let handle = self.forwarders.spawn(self.hub.tracked(forward::stream(
            tagged.stream,
            tag,
            channel,
            peer,
            counters,
        )));
        active.forwarders[channel.index()] = Some(handle);
        if channel == Channel::Chat {
            self.hub.note_chat(&tagged.session);
        }
        Ok(())
    }

    pub(super) fn on_datagram(&mut self, datagram: Bytes) {
        // Datagrams are lossy screen frames, sharer to helper only.
        let Some(active) = self.session.as_ref().and_then(|s| s.active.as_ref()) else {
            metrics::counter!("relay_datagrams_dropped_total", "reason" => "no_session")
                .increment(1);
            return;
        };
        if active.packet_path {
            metrics::counter!("relay_packet_path_refusals_total", "what" => "datagram")
                .increment(1);
            metrics::counter!("relay_datagrams_dropped_total", "reason" => "packet_path")
                .increment(1);
            // One log line per connection, not one per datagram: the metric counts them.
            if !std::mem::replace(&mut self.packet_path_datagram_logged, true) {
                info!(
                    "datagrams on the relay connection of a packet-path session are dropped (the session's data goes the packet path)"
                );
            }
            return;
        }
        if self.role != Role::Sharer {
            metrics::counter!("relay_datagrams_dropped_total", "reason" => "wrong_direction")
                .increment(1);
            return;
        }
        forward::datagram(&active.peer, datagram, &active.counters);
    }
}
