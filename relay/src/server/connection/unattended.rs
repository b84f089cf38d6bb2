//! Unattended control on a connection: a device agent registering, a helper connecting to
//! a registered device.

use super::*;

impl Conn {
    pub(super) async fn on_register_device(&mut self) -> Result<(), Close> {
        if self.principal.kind != PrincipalKind::Device {
            return Err(Close::Refuse(
                ErrorCode::WrongRole,
                "only a device token (kind \"device\") can register for unattended sessions".into(),
            ));
        }
        if self.device_registered || self.session.is_some() {
            return Err(Close::Refuse(
                ErrorCode::ProtocolViolation,
                "RegisterDevice not expected now".into(),
            ));
        }
        if let Some(cluster) = &self.hub.config.cluster
            && let Some(device) = self
                .principal
                .device
                .as_ref()
                .filter(|d| !d.device_id.is_empty())
        {
            let home = device_home(&device.device_id, cluster.nodes.len());
            if self.redirect_elsewhere(home, "register").await? {
                return Ok(());
            }
        }
        let policy = self.hub.policies().tenant(&self.principal.tenant);
        if let Err(refusal) = policy.admit_announcement(&self.e2e_suites) {
            metrics::counter!("relay_policy_refusals_total", "code" => refusal.code().as_str_name()).increment(1);
            return self.refuse(refusal.code(), refusal.message()).await;
        }
        match self.hub.register_device(self.id, &self.principal) {
            Ok(device_id) => {
                info!(%device_id, "device agent registered for unattended sessions");
                self.device_registered = true;
                self.reply(Out::DeviceRegistered(v1::DeviceRegistered { device_id }))
                    .await
            }
            Err(ErrorCode::WrongRole) => Err(Close::Refuse(
                ErrorCode::WrongRole,
                "a device agent's token needs a device_id claim".into(),
            )),
            Err(code) => {
                self.refuse(code, "this device is already registered".into())
                    .await
            }
        }
    }

    pub(super) async fn on_connect_unattended(
        &mut self,
        connect: v1::ConnectUnattended,
    ) -> Result<(), Close> {
        if !self.admit_new_session("ConnectUnattended").await? {
            return Ok(());
        }
        if let Some(cluster) = &self.hub.config.cluster {
            let home = device_home(&connect.device_id, cluster.nodes.len());
            if self.redirect_elsewhere(home, "unattended").await? {
                return Ok(());
            }
        }
        if let Err(code) = self.hub.allow_setup(&self.principal.tenant) {
            return self.refuse(code, code.describe().into()).await;
        }
        let policy = self.hub.policies().tenant(&self.principal.tenant);
        if let Err(refusal) = policy.admit_announcement(&self.e2e_suites) {
            metrics::counter!("relay_policy_refusals_total", "code" => refusal.code().as_str_name()).increment(1);
            return self.refuse(refusal.code(), refusal.message()).await;
        }
        let pending = match self.hub.connect_unattended(
            self.id,
            &self.principal,
            &connect.device_id,
            connect.reason,
        ) {
            Ok(pending) => pending,
            Err((code, message)) => {
                if code == ErrorCode::CrossTenant {
                    // The hub has recorded it in both tenants' logs.
                    warn!(tenant = %self.principal.tenant, "cross-tenant unattended connect refused");
                    metrics::counter!("relay_cross_tenant_attempts_total").increment(1);
                }
                return self.refuse(code, message).await;
            }
        };
        let session = pending.session.clone();
        self.session = Some(LocalSession {
            id: session.clone(),
            active: None,
        });
        match self.hub.begin(&pending).await {
            Ok(begun) => {
                info!(session = %session, device_id = %connect.device_id, "unattended session started");
                metrics::counter!("relay_sessions_started_total", "tenant" => self.principal.tenant.to_string())
                    .increment(1);
                let agent = pending.sharer;
                self.activate(
                    &session,
                    Mode::Unattended,
                    agent.connection,
                    pending.chat_allowed,
                    Some(agent.principal),
                    begun,
                )
                .await
            }
            Err(code) => {
                self.session = None;
                self.refuse(code, code.describe().into()).await
            }
        }
    }
}
