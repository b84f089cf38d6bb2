//! The connection's part in direct paths: the candidates it offers, its observed address as it changes, and what it reports of the attempt.

use super::*;

impl Conn {
    /// Tells a client that offered candidates its new observed address, if it changed.
    pub(super) async fn tell_observed(&mut self) -> Result<(), Close> {
        let now = crate::core::path::canonical(self.connection.remote_address());
        if self.observed.is_none() || self.told_addr == now {
            return Ok(());
        }
        info!(from = %self.told_addr, to = %now, "client address changed (migration)");
        self.told_addr = now;
        metrics::counter!("relay_observed_address_changes_total").increment(1);
        self.reply(Out::ObservedAddress(v1::ObservedAddress {
            address: now.to_string(),
        }))
        .await
    }

    /// `OfferCandidates`: checked, kept for the next session start; from now on the
    /// client hears when its observed address changes.
    pub(super) async fn on_offer_candidates(
        &mut self,
        offer: v1::OfferCandidates,
    ) -> Result<(), Close> {
        match Candidates::parse(&offer.addresses, &offer.certificate_sha256) {
            Ok(candidates) => {
                debug!(
                    addresses = candidates.addresses.len(),
                    "direct-path candidates offered"
                );
                self.hub.set_candidates(self.id, candidates);
                if self.observed.is_none() {
                    let mut tick = tokio::time::interval(OBSERVED_CHECK);
                    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    self.observed = Some(Box::new(tick));
                }
                Ok(())
            }
            Err(why) => {
                self.refuse(
                    ErrorCode::ProtocolViolation,
                    format!("OfferCandidates: {why}"),
                )
                .await
            }
        }
    }

    /// `DirectPathResult`: how the party's direct attempt went, or that it lost the path.
    pub(super) async fn on_direct_path_result(
        &mut self,
        result: v1::DirectPathResult,
    ) -> Result<(), Close> {
        let current = self
            .session
            .as_ref()
            .filter(|s| s.active.is_some() && s.id.as_str() == result.session_id)
            .map(|s| s.id.clone());
        let Some(session) = current else {
            // The session ended while the result was on its way: nothing to record, and
            // an error now would reach the client as the answer to its next request.
            debug!(session = %result.session_id, "direct path result for a session no longer active ignored");
            metrics::counter!("relay_direct_path_results_total", "outcome" => "stale").increment(1);
            return Ok(());
        };
        match self
            .hub
            .path_result(
                &session,
                self.role,
                result.established,
                &result.peer_address,
            )
            .await
        {
            Ok(()) => Ok(()),
            Err(why) => self.refuse(ErrorCode::ProtocolViolation, why).await,
        }
    }
}
