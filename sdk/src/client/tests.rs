//! Redirect rules of the client: which names and addresses a redirect may take it to.

use super::*;

#[test]
fn redirects_stay_within_the_name_the_client_was_given() {
    for ok in [
        "relay.example.com",
        "relay-2.relay.example.com",
        "RELAY-2.Relay.Example.com.",
    ] {
        assert!(redirect_host_allowed("relay.example.com", ok), "{ok}");
    }
    for refused in [
        "relay-2.example.com",
        "example.com.evil.net",
        "relay.example.net",
        "evilrelay.example.com",
        "com",
    ] {
        assert!(
            !redirect_host_allowed("relay.example.com", refused),
            "{refused}"
        );
    }
    // A registry-level parent gives nothing away.
    assert!(!redirect_host_allowed("relay.example.co.uk", "evil.co.uk"));
    assert!(!redirect_host_allowed("localhost", "evil.localhost.net"));
}

#[test]
fn a_redirect_dials_an_address_the_socket_can_reach() {
    let v4: SocketAddr = "192.0.2.1:443".parse().unwrap();
    let v6: SocketAddr = "[2001:db8::1]:443".parse().unwrap();
    assert_eq!(redirect_target(&[v6, v4], false), Some(v4));
    assert_eq!(redirect_target(&[v4, v6], true), Some(v6));
    // A dual-stack IPv6 socket reaches an IPv4-only node; an IPv4 socket never IPv6.
    assert_eq!(redirect_target(&[v4], true), Some(v4));
    assert_eq!(redirect_target(&[v6], false), None);
    assert_eq!(redirect_target(&[], true), None);
}
