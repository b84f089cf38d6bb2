//! Connection limits against floods: per source address, unauthenticated connections, and
//! QUIC address validation (Retry) under handshake load. Over real QUIC on 127.0.0.1.

mod common;

use common::{TestRelay, http, within};
use remote_help_relay::client::connect_quic;
use remote_help_relay::core::{Mode, Role};
use remote_help_relay::dev::Persona;
use remote_help_relay::issuer::TokenSigner;

#[tokio::test]
async fn one_source_address_cannot_hold_more_than_its_share_of_connections() {
    let relay = TestRelay::builder()
        .config(|c| c.limits.max_connections_per_source = 2)
        .start()
        .await;
    let first = relay.helper("contoso").await;
    let _second = relay.helper("contoso").await;
    let refused = relay
        .connect(relay.tenant("contoso").token(Persona::Helper), Role::Helper)
        .await;
    assert!(
        refused.is_err(),
        "a third connection from 127.0.0.1 was accepted"
    );
    // When one goes, there is room again.
    first.close().await;
    within(relay.handle.wait_for(|s| s.connections <= 1)).await;
    relay.helper("contoso").await.close().await;
    relay.stop().await;
}

#[tokio::test]
async fn connections_that_never_authenticate_are_capped() {
    let relay = TestRelay::builder()
        .config(|c| c.limits.max_unauthenticated_connections = 2)
        .start()
        .await;
    let options = relay.options(String::new(), Role::Helper);
    // Two silent connections (handshake done, no Hello) fill the unauthenticated budget.
    let silent: Vec<_> = {
        let mut v = Vec::new();
        for _ in 0..2 {
            v.push(within(connect_quic(&options)).await.unwrap());
        }
        v
    };
    within(relay.handle.wait_for(|s| s.connections == 2)).await;
    let third = within(connect_quic(&options)).await;
    assert!(
        third.is_err(),
        "a third unauthenticated connection was accepted"
    );
    // Authenticated clients do not count: once the silent ones go, clients get in again.
    drop(silent);
    within(relay.handle.wait_for(|s| s.connections == 0)).await;
    let helper = relay.helper("contoso").await;
    let other = relay.helper("contoso").await;
    let also = relay.sharer("contoso").await;
    for c in [helper, other, also] {
        c.close().await;
    }
    relay.stop().await;
}

#[tokio::test]
async fn under_handshake_load_clients_must_pass_a_retry_and_still_get_in() {
    // Threshold 0: every new client is asked to prove its address first.
    let relay = TestRelay::builder()
        .config(|c| c.limits.retry_above_unauthenticated = 0)
        .start()
        .await;
    let (mut helper, mut sharer) = relay.paired("contoso", Mode::ViewOnly).await;
    within(helper.end_session()).await.unwrap();
    within(sharer.wait_for_end()).await;
    let (_, metrics) = http(relay.handle.admin_addr().unwrap(), "GET", "/metrics", None).await;
    let retries: f64 = metrics
        .lines()
        .find(|l| l.starts_with("relay_retries_total"))
        .and_then(|l| l.rsplit_once(' '))
        .and_then(|(_, v)| v.parse().ok())
        .unwrap_or(0.0);
    assert!(
        retries >= 2.0,
        "each client should have been sent a Retry ({retries})"
    );
    relay.stop().await;
}

#[tokio::test]
async fn code_guessing_from_one_address_is_rate_limited() {
    use remote_help_proto::ErrorCode;
    let relay = TestRelay::builder()
        .config(|c| c.limits.joins_per_source_per_minute = 1)
        .start()
        .await;
    let mut guesser = relay.sharer("contoso").await;
    let first = within(guesser.join("AAAAA-AAAAA")).await.unwrap_err();
    assert_eq!(first.code(), Some(ErrorCode::CodeInvalid));
    let second = within(guesser.join("AAAAA-AAAAB")).await.unwrap_err();
    assert_eq!(second.code(), Some(ErrorCode::RateLimited));
    // A second connection from the same address shares the budget.
    let mut other = relay.sharer("contoso").await;
    let third = within(other.join("AAAAA-AAAAC")).await.unwrap_err();
    assert_eq!(third.code(), Some(ErrorCode::RateLimited));
    // Not fatal: the connection still works.
    within(guesser.ping()).await.unwrap();
    relay.stop().await;
}

#[tokio::test]
async fn a_tenant_cannot_exceed_its_session_cap_or_setup_rate() {
    use remote_help_proto::ErrorCode;
    let relay = TestRelay::builder()
        .config(|c| c.limits.max_sessions_per_tenant = 2)
        .start()
        .await;
    let mut a = relay.helper("contoso").await;
    let mut b = relay.helper("contoso").await;
    let mut c = relay.helper("contoso").await;
    within(a.create_session(Mode::ViewOnly)).await.unwrap();
    within(b.create_session(Mode::ViewOnly)).await.unwrap();
    let err = within(c.create_session(Mode::ViewOnly)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::LimitExceeded));
    within(a.end_session()).await.unwrap();
    within(c.create_session(Mode::ViewOnly)).await.unwrap();
    relay.stop().await;

    let relay = TestRelay::builder()
        .config(|c| c.limits.session_setups_per_tenant_per_minute = 1)
        .start()
        .await;
    let mut helper = relay.helper("contoso").await;
    within(helper.create_session(Mode::ViewOnly)).await.unwrap();
    within(helper.end_session()).await.unwrap();
    let err = within(helper.create_session(Mode::ViewOnly))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::RateLimited));
    relay.stop().await;
}

#[tokio::test]
async fn wrong_attempts_against_a_code_burn_it_and_tell_its_helper() {
    use remote_help_proto::ErrorCode;
    let relay = TestRelay::builder()
        .config(|c| c.limits.wrong_attempts_per_code = 3)
        .tenant("contoso", TokenSigner::generate_ed25519("c1").unwrap())
        .tenant("fabrikam", TokenSigner::generate_ed25519("f1").unwrap())
        .start()
        .await;
    let mut helper = relay.helper("contoso").await;
    let created = within(helper.create_session(Mode::ViewOnly)).await.unwrap();
    let (locator, secret) = created.code.split_once('-').unwrap();
    let wrong: Vec<String> = ["00000", "00001", "00002", "00003"]
        .into_iter()
        .filter(|s| *s != secret)
        .take(3)
        .map(|s| format!("{locator}-{s}"))
        .collect();

    // Another tenant's wrong attempts at the same locator never count against the code.
    let mut outsider = relay.sharer("fabrikam").await;
    for code in &wrong[..2] {
        let err = within(outsider.join(code)).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::CodeInvalid));
    }
    // The same tenant's do: the third one burns it. Each guesser uses its own connection
    // so that the per-connection failed-join limit is not what stops them.
    for code in &wrong {
        let mut guesser = relay.sharer("contoso").await;
        let err = within(guesser.join(code)).await.unwrap_err();
        assert_eq!(err.code(), Some(ErrorCode::CodeInvalid), "{code}");
    }
    assert_eq!(within(helper.wait_for_end()).await, ErrorCode::CodeBurned);
    within(relay.handle.wait_for(|s| s.sessions == 0)).await;

    // The rightful sharer is told the code is burned; the other tenant still learns nothing.
    let mut sharer = relay.sharer("contoso").await;
    let err = within(sharer.join(&created.code)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CodeBurned));
    let err = within(outsider.join(&created.code)).await.unwrap_err();
    assert_eq!(err.code(), Some(ErrorCode::CrossTenant));

    let (_, metrics) = http(relay.handle.admin_addr().unwrap(), "GET", "/metrics", None).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("relay_codes_burned_total") && !l.ends_with(" 0")),
        "no relay_codes_burned_total in:\n{metrics}"
    );
    // The helper goes on with a new session and code.
    let fresh = within(helper.create_session(Mode::ViewOnly)).await.unwrap();
    within(sharer.join(&fresh.code)).await.unwrap();
    relay.stop().await;
}

#[tokio::test]
async fn the_buffer_budget_caps_connections() {
    // Budget for exactly two connections at their worst-case buffering.
    let relay = TestRelay::builder()
        .config(|c| {
            c.limits.max_buffered_bytes = 2 * c.limits.connection_memory_bound();
        })
        .start()
        .await;
    let _first = relay.helper("contoso").await;
    let _second = relay.sharer("contoso").await;
    let refused = relay
        .connect(relay.tenant("contoso").token(Persona::Helper), Role::Helper)
        .await;
    assert!(refused.is_err(), "a third connection fit a budget of two");
    let (_, metrics) = http(relay.handle.admin_addr().unwrap(), "GET", "/metrics", None).await;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("relay_connections_refused_total{reason=\"max_buffered\"}")),
        "no max_buffered refusal in:\n{metrics}"
    );
    relay.stop().await;
}
