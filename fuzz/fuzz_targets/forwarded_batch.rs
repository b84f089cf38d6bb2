//! What the relay's UDP sockets receive: one received message (a GRO batch of segments of
//! one stride, the last possibly shorter) through `ForwardingSocket::poll_recv`
//! (relay/src/server/forwarder.rs, PROTOCOL.md §8a), which takes out the datagrams with
//! QUIC's fixed bit clear for the packet forwarder and hands the rest to quinn.
//!
//! Input: `[stride (2 bytes, big endian; 0: one datagram), message bytes...]`, from an
//! address with no route (every forwarded datagram is then `malformed` or `unknown_key`).
//!
//! Invariants:
//! - no panic, whatever the stride and bytes;
//! - quinn gets exactly the segments whose first byte has the fixed bit set, in their order,
//!   packed at the stride (so that quinn splits them as the kernel did), and nothing else;
//! - nothing is sent on: no route, so no forwarded datagram goes anywhere;
//! - `proto::forwarded::parse` agrees with the header's definition on every segment.
#![no_main]

use std::io::{self, IoSliceMut};
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, Waker};

use libfuzzer_sys::fuzz_target;
use quinn::udp::{RecvMeta, Transmit};
use quinn::{AsyncUdpSocket, UdpPoller};
use remote_help_proto::forwarded;
use remote_help_relay::config::ForwarderConfig;
use remote_help_relay::core::cluster::NodeId;
use remote_help_relay::server::forwarder::{Forwarder, ForwardingSocket};

/// A socket that yields one message, then nothing; it fails the run if anything is sent.
#[derive(Debug)]
struct OneMessage {
    message: Mutex<Option<(Vec<u8>, usize)>>,
}

#[derive(Debug)]
struct AlwaysWritable;

impl UdpPoller for AlwaysWritable {
    fn poll_writable(self: Pin<&mut Self>, _: &mut Context) -> Poll<io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

fn peer() -> SocketAddr {
    "192.0.2.7:4433".parse().unwrap()
}

impl AsyncUdpSocket for OneMessage {
    fn create_io_poller(self: Arc<Self>) -> Pin<Box<dyn UdpPoller>> {
        Box::pin(AlwaysWritable)
    }

    fn try_send(&self, transmit: &Transmit) -> io::Result<()> {
        panic!("sent {} bytes with no route", transmit.contents.len());
    }

    fn poll_recv(
        &self,
        _: &mut Context,
        bufs: &mut [IoSliceMut<'_>],
        meta: &mut [RecvMeta],
    ) -> Poll<io::Result<usize>> {
        let Some((bytes, stride)) = self.message.lock().unwrap().take() else {
            return Poll::Pending;
        };
        bufs[0][..bytes.len()].copy_from_slice(&bytes);
        meta[0] = RecvMeta {
            addr: peer(),
            len: bytes.len(),
            stride,
            ecn: None,
            dst_ip: None,
        };
        Poll::Ready(Ok(1))
    }

    fn local_addr(&self) -> io::Result<SocketAddr> {
        Ok("127.0.0.1:443".parse().unwrap())
    }

    fn max_transmit_segments(&self) -> usize {
        64
    }

    fn max_receive_segments(&self) -> usize {
        64
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((head, bytes)) = input.split_first_chunk::<2>() else {
        return;
    };
    let bytes = &bytes[..bytes.len().min(64 * 1024)];
    let stride = usize::from(u16::from_be_bytes(*head));
    let effective = if stride == 0 { bytes.len() } else { stride };
    // What quinn must get: the QUIC segments, in order.
    let mut expected = Vec::new();
    if effective > 0 {
        for segment in bytes.chunks(effective) {
            let quic = !forwarded::is_forwarded(segment);
            assert_eq!(quic, segment[0] & forwarded::QUIC_FIXED_BIT != 0);
            if let Some((_, payload)) = forwarded::parse(segment) {
                assert_eq!(segment[0], forwarded::MARKER);
                assert_eq!(payload.len(), segment.len() - forwarded::HEADER_LEN);
            }
            if quic {
                expected.extend_from_slice(segment);
            }
        }
    }
    let inner = Arc::new(OneMessage {
        message: Mutex::new(Some((bytes.to_vec(), stride))),
    });
    let forwarder = Arc::new(Forwarder::new(ForwarderConfig::default(), NodeId::FIRST));
    let socket = ForwardingSocket::new(inner, forwarder);
    let mut buf = vec![0u8; 64 * 1024];
    let mut bufs = [IoSliceMut::new(&mut buf)];
    let mut meta = [RecvMeta::default()];
    let mut cx = Context::from_waker(Waker::noop());
    let got = match socket.poll_recv(&mut cx, &mut bufs, &mut meta) {
        Poll::Ready(Ok(1)) => &buf[..meta[0].len],
        Poll::Ready(Ok(n)) => panic!("{n} messages from one"),
        Poll::Ready(Err(e)) => panic!("receive error {e}"),
        // Everything went to the forwarder (and was dropped): nothing for quinn.
        Poll::Pending => &[][..],
    };
    assert_eq!(got, &expected[..], "quinn must get exactly the QUIC segments");
    if meta[0].len > 0 {
        assert_eq!(meta[0].addr, peer());
    }
});
