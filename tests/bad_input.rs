//! Every bad input in the table of docs/api.md, sent as raw bytes on the wire: what it gets,
//! and that it changes nothing and leaves the service serving others.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use bytes::{BufMut, Bytes};
use common::{Backend, TestServer, check, peek};
use ratelimitd::grpc::pb::CheckAndConsumeResponse;
use tonic::Code;
use tonic::codec::{Codec, EncodeBuf, Encoder};
use tonic::transport::Channel;

const PATH: &str = "/ratelimit.v1.RateLimiter/CheckAndConsume";

/// Sends its bytes as the request message, verbatim.
#[derive(Default)]
struct Raw;

struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = tonic::Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), tonic::Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

type Response = ratelimitd::grpc::codec::Codec<CheckAndConsumeResponse, CheckAndConsumeResponse>;

impl Codec for Raw {
    type Encode = Vec<u8>;
    type Decode = CheckAndConsumeResponse;
    type Encoder = RawEncoder;
    type Decoder = <Response as Codec>::Decoder;

    fn encoder(&mut self) -> RawEncoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        Response::default().decoder()
    }
}

async fn send_raw(server: &TestServer, message: Vec<u8>) -> Result<CheckAndConsumeResponse, tonic::Status> {
    server.client().await;
    let channel = Channel::from_shared(format!("http://{}", server.addr)).unwrap().connect().await.unwrap();
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready().await.expect("ready");
    let path = http::uri::PathAndQuery::from_static(PATH);
    grpc.unary(tonic::Request::new(message), path, Raw).await.map(tonic::Response::into_inner)
}

fn key_field(bytes: &[u8]) -> Vec<u8> {
    [&[0x0a, bytes.len() as u8][..], bytes].concat()
}

#[tokio::test(flavor = "multi_thread")]
async fn malformed_messages_are_invalid_argument_and_change_nothing() {
    let server = Backend::memory().server(5, "60s").await;
    let cases: Vec<(&str, Vec<u8>, Code, &str)> = vec![
        ("empty message", vec![], Code::InvalidArgument, "key_id: must not be empty"),
        ("key_id not UTF-8", key_field(&[0xff, 0xfe, 0xfd]), Code::InvalidArgument, "UTF-8"),
        ("truncated field", vec![0x0a, 0x10, b'k', b'k'], Code::InvalidArgument, "does not decode"),
        ("wrong wire type", vec![0x0d, 1, 2, 3, 4], Code::InvalidArgument, "does not decode"),
        (
            "huge cost",
            [key_field(b"k"), vec![0x10, 0xff, 0xff, 0xff, 0xff, 0x0f]].concat(),
            Code::InvalidArgument,
            "cost:",
        ),
        ("key_id of 257 bytes", [vec![0x0a, 0x81, 0x02], vec![b'k'; 257]].concat(), Code::InvalidArgument, "key_id:"),
        ("20 KiB message", [vec![0x0a, 0x80, 0xa0, 0x01], vec![b'k'; 20 * 1024]].concat(), Code::OutOfRange, ""),
    ];
    for (what, message, code, says) in cases {
        let status = send_raw(&server, message).await.expect_err(what);
        println!("{what}: {:?} {:?}", status.code(), status.message());
        assert_eq!(status.code(), code, "{what}: {}", status.message());
        assert!(status.message().contains(says), "{what}: {}", status.message());
        assert!(!status.message().contains("kkkk"), "{what}: the key is echoed");
    }
    let untouched = peek(&mut server.client().await, "k", 1).await;
    assert_eq!(untouched.remaining, 4, "no rejected request counted anything");
    // Unknown fields are skipped (clients newer than the server keep working).
    let unknown = [key_field(b"k"), vec![0x98, 0x06, 0x01]].concat();
    assert!(send_raw(&server, unknown).await.expect("unknown fields are ignored").allowed);
    // Cost 0 means 1.
    let zero_cost = [key_field(b"k"), vec![0x10, 0x00]].concat();
    assert_eq!(send_raw(&server, zero_cost).await.unwrap().remaining, 3);
}

/// A raw HTTP/2 connection, for what a gRPC client would never send.
async fn h2(addr: SocketAddr) -> h2::client::SendRequest<Bytes> {
    let tcp = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let (send, connection) = h2::client::handshake(tcp).await.expect("HTTP/2 handshake");
    tokio::spawn(async move {
        let _ = connection.await;
    });
    send
}

fn grpc_request(addr: SocketAddr) -> http::Request<()> {
    http::Request::builder()
        .method("POST")
        .uri(format!("http://{addr}{PATH}"))
        .header("content-type", "application/grpc")
        .header("te", "trailers")
        .body(())
        .unwrap()
}

/// The call's grpc-status, from the headers (trailers-only) or the trailers.
async fn grpc_status(response: h2::client::ResponseFuture) -> Option<String> {
    let response = response.await.ok()?;
    let (parts, mut body) = response.into_parts();
    if let Some(status) = parts.headers.get("grpc-status") {
        return Some(status.to_str().ok()?.to_owned());
    }
    while let Some(chunk) = body.data().await {
        let chunk = chunk.ok()?;
        let _ = body.flow_control().release_capacity(chunk.len());
    }
    Some(body.trailers().await.ok()??.get("grpc-status")?.to_str().ok()?.to_owned())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_truncated_frame_fails_alone() {
    let server = Backend::memory().server(5, "60s").await;
    server.client().await;
    let mut send = h2(server.addr).await.ready().await.expect("ready");
    let (response, mut stream) = send.send_request(grpc_request(server.addr), false).expect("send");
    // The frame header announces 100 bytes; 3 follow, then the stream ends.
    stream.send_data(Bytes::from_static(&[0, 0, 0, 0, 100, 0x0a, 0x01, b'k']), true).expect("data");
    let status = grpc_status(response).await.expect("a status");
    println!("truncated frame: grpc-status {status}");
    assert_ne!(status, "0", "a truncated frame is not a call");
    assert!(check(&mut server.client().await, "k", 1).await.allowed, "others are still served");
    assert_eq!(peek(&mut server.client().await, "k", 1).await.remaining, 3, "the truncated call counted nothing");
}

#[tokio::test(flavor = "multi_thread")]
async fn streams_that_never_send_are_ended_by_the_request_timeout() {
    let server = TestServer::start(Backend::memory().config_with(5, "60s", &["--request-timeout", "300ms"])).await;
    server.client().await;
    let mut send = h2(server.addr).await.ready().await.expect("ready");
    // One whole call first, so the server's SETTINGS have arrived.
    let (response, mut stream) = send.send_request(grpc_request(server.addr), false).expect("send");
    stream.send_data(Bytes::from_static(&[0, 0, 0, 0, 3, 0x0a, 0x01, b'j']), true).expect("data");
    assert_eq!(grpc_status(response).await.as_deref(), Some("0"));
    let mut send = send.ready().await.expect("ready");
    assert_eq!(send.current_max_send_streams(), 1024, "the server bounds concurrent streams per connection");
    let started = Instant::now();
    let mut silent = Vec::new();
    for _ in 0..100 {
        let (response, stream) = send.send_request(grpc_request(server.addr), false).expect("open a stream");
        silent.push((response, stream)); // headers only: no message, no end of stream
        send = send.ready().await.expect("ready");
    }
    // Meanwhile, everyone else is served.
    assert!(check(&mut server.client().await, "k", 1).await.allowed);
    for (response, _stream) in silent {
        let status = grpc_status(response).await.expect("a status");
        assert_eq!(status, "1", "CANCELLED by the server-side timeout");
    }
    let took = started.elapsed();
    println!("100 silent streams ended after {took:?} (timeout 300 ms)");
    assert!(took < Duration::from_secs(2), "{took:?}");
}
