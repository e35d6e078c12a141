//! Connections kept alive between requests (parked: only the socket kept), and the poll fast
//! path, against hostile or careless HTTP clients through real sockets: pipelining of every
//! kind, requests split across the park, HTTP/1.0 and `Connection: close`, `Expect:
//! 100-continue`, chunked trailers, bodies refused unread, upgrades, half-closes, slow readers
//! and a small connection limit. Nothing may be answered twice, lost, or read out of a body.

use std::time::Duration;

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

type Msg = corral::edge::protocol::proto::AgentToServer;

fn poll_req(msg: &Msg) -> Vec<u8> {
    raw(
        "POST",
        "/v1/opamp",
        "Content-Type: application/x-protobuf\r\n",
        &msg.encode_to_vec(),
    )
}

fn raw(method: &str, path: &str, headers: &str, body: &[u8]) -> Vec<u8> {
    let mut bytes = format!(
        "{method} {path} HTTP/1.1\r\nHost: x\r\n{headers}Content-Length: {}\r\n\r\n",
        body.len()
    )
    .into_bytes();
    bytes.extend_from_slice(body);
    bytes
}

/// Replies read until `n` are in, the connection closes, or `wait` passes with nothing new:
/// their status codes, and whether the connection closed.
async fn statuses(stream: &mut TcpStream, n: usize, wait: Duration) -> (Vec<u16>, bool) {
    let mut buf = Vec::new();
    let mut out = Vec::new();
    let mut chunk = vec![0u8; 65536];
    let mut closed = false;
    loop {
        // Parse what is buffered.
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let status: u16 = head
                .split_whitespace()
                .nth(1)
                .and_then(|s| s.parse().ok())
                .unwrap_or_else(|| panic!("not a reply: {head:?}"));
            if status == 100 {
                buf.drain(..end + 4);
                out.push(100);
                continue;
            }
            let length: Option<usize> = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length:"))
                .map(|v| v.trim().parse().unwrap());
            let chunked = head.contains("transfer-encoding: chunked");
            let total = if let Some(length) = length {
                if buf.len() < end + 4 + length {
                    break;
                }
                end + 4 + length
            } else if chunked {
                let mut at = end + 4;
                let mut done = None;
                while let Some(eol) = buf[at..].windows(2).position(|w| w == b"\r\n") {
                    let size = usize::from_str_radix(
                        String::from_utf8_lossy(&buf[at..at + eol]).trim(),
                        16,
                    )
                    .unwrap();
                    let next = at + eol + 2 + size + 2;
                    if buf.len() < next {
                        break;
                    }
                    at = next;
                    if size == 0 {
                        done = Some(at);
                        break;
                    }
                }
                match done {
                    Some(d) => d,
                    None => break,
                }
            } else {
                end + 4
            };
            out.push(status);
            buf.drain(..total);
        }
        if out.iter().filter(|s| **s != 100).count() >= n || closed {
            return (out, closed);
        }
        match tokio::time::timeout(wait, stream.read(&mut chunk)).await {
            Err(_) => return (out, false),
            Ok(Ok(0) | Err(_)) => closed = true,
            Ok(Ok(k)) => buf.extend_from_slice(&chunk[..k]),
        }
    }
}

const S: Duration = Duration::from_secs(3);

/// Every connection of a server with `max` connections can be opened and answered: none
/// is leaked.
async fn all_places_free(server: &TestServer, max: usize) {
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut held = Vec::new();
    for i in 0..max {
        let mut s = TcpStream::connect(server.opamp).await.unwrap();
        s.write_all(&raw("GET", "/nope", "", b"")).await.unwrap();
        let (st, _) = statuses(&mut s, 1, S).await;
        assert_eq!(st, vec![404], "connection {i} of {max}");
        held.push(s);
    }
}

/// Large requests then many small ones, in one write: hyper reads the first 8 KiB, then a
/// bigger read; the connection parks after 16 requests (hyper yields), with more left over
/// than the next round's first read takes from `unread`.
#[tokio::test]
async fn pipelined_mixed_sizes_are_all_answered_in_order() {
    let server = TestServer::start().await;
    for (big, pad) in [(0usize, 0usize), (8, 1000), (4, 2000), (10, 800)] {
        let mut all = Vec::new();
        for _ in 0..big {
            let headers = format!("X-Pad: {}\r\n", "p".repeat(pad));
            all.extend(raw("GET", "/big", &headers, b""));
        }
        let small = 600;
        for _ in 0..small {
            all.extend(raw("GET", "/small", "", b""));
        }
        let mut s = TcpStream::connect(server.opamp).await.unwrap();
        s.write_all(&all).await.unwrap();
        let (st, closed) = statuses(&mut s, big + small, S).await;
        assert!(
            st.len() == big + small && st.iter().all(|s| *s == 404),
            "big {big}×{pad}: {} replies of {}, closed {closed}, not 404: {:?}",
            st.len(),
            big + small,
            st.iter().filter(|s| **s != 404).collect::<Vec<_>>()
        );
    }
}

/// The same with polls (bodies) instead of GETs: one agent, every message answered once.
#[tokio::test]
async fn pipelined_polls_with_a_big_first_are_all_answered() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut all = Vec::new();
    for _ in 0..8 {
        let headers = format!("X-Pad: {}\r\n", "p".repeat(1000));
        all.extend(raw("GET", "/big", &headers, b""));
    }
    all.extend(poll_req(&full_report(&uid, 1, "pipe")));
    let n = 300;
    for seq in 2..n + 2 {
        all.extend(poll_req(&heartbeat(&uid, seq as u64)));
    }
    let mut s = TcpStream::connect(server.opamp).await.unwrap();
    s.write_all(&all).await.unwrap();
    let (st, closed) = statuses(&mut s, 8 + 1 + n, Duration::from_secs(10)).await;
    let bad: Vec<_> = st
        .iter()
        .enumerate()
        .filter(|(i, s)| **s != if *i < 8 { 404 } else { 200 })
        .collect();
    assert!(
        st.len() == 9 + n && bad.is_empty(),
        "{} replies of {}, closed {closed}, unexpected {bad:?}",
        st.len(),
        9 + n
    );
}

/// A request split at every byte, the first part arriving with the request before it (so it
/// is in hyper's buffer when the connection parks), the rest after the park.
#[tokio::test]
async fn a_request_split_at_every_byte_across_the_park_is_answered_once() {
    let server = TestServer::with(Options {
        max_connections: Some(64),
        ..Options::default()
    })
    .await;
    let probe = poll_req(&heartbeat(&new_uid(), 2));
    let len = probe.len();
    let mut tasks = Vec::new();
    for k in 0..=len {
        let addr = server.opamp;
        tasks.push(async move {
            let uid = new_uid();
            let first = poll_req(&full_report(&uid, 1, "split"));
            let second = poll_req(&heartbeat(&uid, 2));
            assert_eq!(second.len(), len);
            let mut s = TcpStream::connect(addr).await.unwrap();
            let mut bytes = first.clone();
            bytes.extend_from_slice(&second[..k]);
            s.write_all(&bytes).await.unwrap();
            if k == len {
                let (st, closed) = statuses(&mut s, 2, S).await;
                assert_eq!((st, closed), (vec![200, 200], false), "whole");
                return;
            }
            let (st, closed) = statuses(&mut s, 1, S).await;
            assert_eq!((st.as_slice(), closed), (&[200][..], false), "split at {k}");
            tokio::time::sleep(Duration::from_millis(100)).await;
            s.write_all(&second[k..]).await.unwrap();
            let (st, closed) = statuses(&mut s, 1, S).await;
            assert_eq!(st, vec![200], "split at {k}, closed {closed}");
            // Nothing more.
            let (st, _) = statuses(&mut s, 1, Duration::from_millis(200)).await;
            assert!(st.is_empty(), "split at {k}: extra {st:?}");
        });
    }
    // 32 at a time.
    let mut tasks = tasks.into_iter();
    loop {
        let batch: Vec<_> = tasks.by_ref().take(32).collect();
        if batch.is_empty() {
            break;
        }
        futures_util::future::join_all(batch).await;
    }
    all_places_free(&server, 64).await;
}

/// The next request arriving at moments around the park (right after the reply).
#[tokio::test]
async fn the_next_request_racing_the_park_is_answered() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut s = TcpStream::connect(server.opamp).await.unwrap();
    s.write_all(&poll_req(&full_report(&uid, 1, "race")))
        .await
        .unwrap();
    assert_eq!(statuses(&mut s, 1, S).await.0, vec![200]);
    for i in 0..400u64 {
        let req = raw("GET", "/x", "", b"");
        s.write_all(&req).await.unwrap();
        let (st, closed) = statuses(&mut s, 1, S).await;
        assert_eq!((st.clone(), closed), (vec![404], false), "round {i}");
        // Sometimes the next request at once, sometimes after a spin, sometimes split.
        match i % 4 {
            0 => {}
            1 => tokio::task::yield_now().await,
            2 => {
                s.write_all(&req[..3]).await.unwrap();
                tokio::task::yield_now().await;
                s.write_all(&req[3..]).await.unwrap();
                assert_eq!(statuses(&mut s, 1, S).await.0, vec![404], "split {i}");
            }
            _ => tokio::time::sleep(Duration::from_micros(200)).await,
        }
    }
}

#[tokio::test]
async fn http_1_0_and_connection_close_close_after_the_reply() {
    let server = TestServer::with(Options {
        max_connections: Some(8),
        ..Options::default()
    })
    .await;
    // HTTP/1.0 without keep-alive, with a pipelined request after it.
    let mut s = TcpStream::connect(server.opamp).await.unwrap();
    s.write_all(b"GET /a HTTP/1.0\r\n\r\nGET /b HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let (st, closed) = statuses(&mut s, 2, S).await;
    assert_eq!((st, closed), (vec![404], true), "HTTP/1.0");
    // HTTP/1.0 keep-alive: hyper keeps it; never parked but served.
    let mut s = TcpStream::connect(server.opamp).await.unwrap();
    for _ in 0..3 {
        s.write_all(b"GET /a HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .await
            .unwrap();
        let (st, closed) = statuses(&mut s, 1, S).await;
        assert_eq!((st, closed), (vec![404], false), "HTTP/1.0 keep-alive");
    }
    drop(s);
    // Connection: close (mixed case, in a list), with a request pipelined after it.
    let mut s = TcpStream::connect(server.opamp).await.unwrap();
    let mut two = raw("GET", "/a", "Connection: keep-alive, CLOSE\r\n", b"");
    two.extend(raw("GET", "/b", "", b""));
    s.write_all(&two).await.unwrap();
    let (st, closed) = statuses(&mut s, 2, S).await;
    assert_eq!((st, closed), (vec![404], true), "Connection: close");
    all_places_free(&server, 8).await;
}

#[tokio::test]
async fn expect_100_continue_then_another_request() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let body = full_report(&uid, 1, "expect").encode_to_vec();
    let mut s = TcpStream::connect(server.opamp).await.unwrap();
    let head = format!(
        "POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
         Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        body.len()
    );
    s.write_all(head.as_bytes()).await.unwrap();
    let mut buf = [0u8; 256];
    let n = tokio::time::timeout(S, s.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(
        buf[..n].starts_with(b"HTTP/1.1 100 Continue\r\n\r\n"),
        "{:?}",
        String::from_utf8_lossy(&buf[..n])
    );
    assert_eq!(n, 25, "only the 100");
    s.write_all(&body).await.unwrap();
    assert_eq!(statuses(&mut s, 1, S).await, (vec![200], false));
    s.write_all(&poll_req(&heartbeat(&uid, 2))).await.unwrap();
    assert_eq!(statuses(&mut s, 1, S).await, (vec![200], false));
}

/// A 415 to an `Expect: 100-continue` request: no 100 goes out, and the body the client sends
/// anyway (a request of its own) must not be answered.
#[tokio::test]
async fn expect_100_continue_refused_body_sent_anyway_is_not_a_request() {
    let server = TestServer::start().await;
    let hidden = poll_req(&full_report(&new_uid(), 1, "smuggled"));
    let head = format!(
        "POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\n\
         Expect: 100-continue\r\nContent-Length: {}\r\n\r\n",
        hidden.len()
    );
    let mut s = TcpStream::connect(server.opamp).await.unwrap();
    s.write_all(head.as_bytes()).await.unwrap();
    let (st, _) = statuses(&mut s, 1, S).await;
    assert_eq!(st, vec![415]);
    tokio::time::sleep(Duration::from_millis(100)).await;
    let _ = s.write_all(&hidden).await;
    let (st, _) = statuses(&mut s, 1, Duration::from_secs(1)).await;
    assert!(st.is_empty(), "the body was answered: {st:?}");
    assert_eq!(server.fleet().await.total, 0);
}

#[tokio::test]
async fn a_chunked_body_with_trailers_then_another_request() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let body = full_report(&uid, 1, "chunked").encode_to_vec();
    let (a, b) = body.split_at(body.len() / 2);
    let mut req = b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
                    Transfer-Encoding: chunked\r\nTrailer: X-T\r\n\r\n"
        .to_vec();
    for part in [a, b] {
        req.extend(format!("{:x};ext=1\r\n", part.len()).into_bytes());
        req.extend_from_slice(part);
        req.extend(b"\r\n");
    }
    req.extend(b"0\r\nX-T: 1\r\n\r\n");
    let mut s = TcpStream::connect(server.opamp).await.unwrap();
    s.write_all(&req).await.unwrap();
    assert_eq!(statuses(&mut s, 1, S).await, (vec![200], false));
    tokio::time::sleep(Duration::from_millis(100)).await;
    s.write_all(&poll_req(&heartbeat(&uid, 2))).await.unwrap();
    assert_eq!(statuses(&mut s, 1, S).await, (vec![200], false));
    // Pipelined chunked, then a poll.
    let mut two = req.clone();
    two.extend(poll_req(&heartbeat(&uid, 3)));
    s.write_all(&two).await.unwrap();
    assert_eq!(statuses(&mut s, 2, S).await, (vec![200, 200], false));
}

/// Bodies refused without being read, each carrying a request that must never be answered:
/// whether the body arrives with its head (hyper may drain it) or after the reply.
#[tokio::test]
async fn refused_bodies_are_never_answered_as_requests() {
    let server = TestServer::with(Options {
        max_message_size: Some(64 * 1024),
        max_connections: Some(8),
        ..Options::default()
    })
    .await;
    let big = vec![b'x'; 70 * 1024];
    let cases: Vec<(&str, &str, &str, u16, usize)> = vec![
        ("POST", "/v1/opamp", "Content-Type: text/plain\r\n", 415, 0),
        (
            "POST",
            "/elsewhere",
            "Content-Type: application/x-protobuf\r\n",
            404,
            0,
        ),
        (
            "PUT",
            "/v1/opamp",
            "Content-Type: application/x-protobuf\r\n",
            405,
            0,
        ),
        (
            "POST",
            "/v1/opamp",
            "Content-Type: application/x-protobuf\r\n",
            413,
            big.len(),
        ),
    ];
    for (method, path, headers, expected, pad) in cases {
        for later in [false, true] {
            let hidden = poll_req(&full_report(&new_uid(), 1, "smuggled"));
            let mut body = big[..pad].to_vec();
            body.extend_from_slice(&hidden);
            let head_len = raw(method, path, headers, &body).len() - body.len();
            let whole = raw(method, path, headers, &body);
            let mut s = TcpStream::connect(server.opamp).await.unwrap();
            let what = format!("{method} {path} later={later}");
            if later {
                s.write_all(&whole[..head_len + pad]).await.unwrap();
            } else {
                s.write_all(&whole).await.unwrap();
            }
            let (st, _) = statuses(&mut s, 1, S).await;
            assert_eq!(st, vec![expected], "{what}");
            if later {
                tokio::time::sleep(Duration::from_millis(150)).await;
                let _ = s.write_all(&whole[head_len + pad..]).await;
            }
            let (st, _) = statuses(&mut s, 1, Duration::from_millis(700)).await;
            assert!(st.is_empty(), "{what}: the body was answered: {st:?}");
            // If still open, a real request after it is answered exactly once.
            let uid = new_uid();
            if s.write_all(&poll_req(&full_report(&uid, 1, "after")))
                .await
                .is_ok()
            {
                let (st, closed) = statuses(&mut s, 2, Duration::from_millis(700)).await;
                assert!(
                    st == vec![200] || (st.is_empty() && closed),
                    "{what}: {st:?} {closed}"
                );
            }
        }
    }
    let total = server.fleet().await.total;
    let smuggled = server.get("/api/v1/agents?limit=100").await.1.to_string();
    assert!(!smuggled.contains("smuggled"), "{total} agents: {smuggled}");
    all_places_free(&server, 8).await;
}

/// A WebSocket upgrade as the second request of a kept-alive (parked) connection.
#[tokio::test]
async fn a_websocket_upgrade_after_a_parked_poll() {
    let server = TestServer::with(Options {
        max_connections: Some(8),
        ..Options::default()
    })
    .await;
    let uid = new_uid();
    let mut s = TcpStream::connect(server.opamp).await.unwrap();
    s.write_all(&poll_req(&full_report(&uid, 1, "upgrade")))
        .await
        .unwrap();
    assert_eq!(statuses(&mut s, 1, S).await.0, vec![200]);
    tokio::time::sleep(Duration::from_millis(200)).await;
    let (ws, response) = tokio_tungstenite::client_async(server.ws_url(), s)
        .await
        .expect("upgrade on a parked connection");
    assert_eq!(response.status(), 101);
    let mut agent = WsAgent {
        ws: tokio_tungstenite::WebSocketStream::from_raw_socket(
            tokio_tungstenite::MaybeTlsStream::Plain(ws.into_inner()),
            tokio_tungstenite::tungstenite::protocol::Role::Client,
            None,
        )
        .await,
    };
    let reply = agent.exchange(&heartbeat(&uid, 2)).await;
    assert_eq!(reply.instance_uid.as_ref(), &uid);
    agent.exchange(&heartbeat(&uid, 3)).await;
    drop(agent);
    all_places_free(&server, 8).await;
}

/// A client that half-closes while parked, and one that half-closes right after its request.
#[tokio::test]
async fn half_close_while_parked_and_after_a_request() {
    let server = TestServer::with(Options {
        max_connections: Some(8),
        ..Options::default()
    })
    .await;
    for _ in 0..8 {
        let mut s = TcpStream::connect(server.opamp).await.unwrap();
        s.write_all(&raw("GET", "/a", "", b"")).await.unwrap();
        assert_eq!(statuses(&mut s, 1, S).await.0, vec![404]);
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.shutdown().await.unwrap();
        let (st, closed) = statuses(&mut s, 1, S).await;
        assert_eq!((st, closed), (vec![], true), "closed after a half-close");
    }
    all_places_free(&server, 8).await;
    // Request then FIN at once: is the request answered? (hyper's half_close is off.)
    let mut s = TcpStream::connect(server.opamp).await.unwrap();
    s.write_all(&raw("GET", "/a", "", b"")).await.unwrap();
    s.shutdown().await.unwrap();
    let (st, _) = statuses(&mut s, 1, S).await;
    assert_eq!(
        st,
        vec![404],
        "a request followed by a half-close is still answered"
    );
    all_places_free(&server, 8).await;
}

/// Parked connections near a small connection limit: the README says past 15/16 each new
/// connection closes the connection parked last, so new agents are not refused.
#[tokio::test]
async fn parked_connections_make_room_under_a_small_limit() {
    let server = TestServer::with(Options {
        max_connections: Some(4),
        ..Options::default()
    })
    .await;
    let mut kept = Vec::new();
    for _ in 0..4 {
        let mut s = TcpStream::connect(server.opamp).await.unwrap();
        s.write_all(&raw("GET", "/a", "", b"")).await.unwrap();
        assert_eq!(statuses(&mut s, 1, S).await.0, vec![404]);
        kept.push(s);
    }
    tokio::time::sleep(Duration::from_millis(100)).await;
    let mut s = TcpStream::connect(server.opamp).await.unwrap();
    s.write_all(&raw("GET", "/a", "", b"")).await.unwrap();
    let (st, _) = statuses(&mut s, 1, S).await;
    assert_eq!(
        st,
        vec![404],
        "refused although 4 idle connections are parked"
    );
}

/// Many pipelined polls from a client that reads nothing for a while: every one answered
/// once, none lost when the connection parks with replies still unwritten.
#[tokio::test]
async fn a_slow_reader_of_pipelined_replies_loses_none() {
    let server = TestServer::start().await;
    let uid = new_uid();
    // Full reports: each goes to the actor (its handler is not ready at once), so hyper never
    // yields with requests left over (see pipelined_mixed_sizes_are_all_answered_in_order).
    let mut all = Vec::new();
    let n = 1500u64;
    for seq in 1..n + 1 {
        all.extend(poll_req(&full_report(&uid, seq, "slow")));
    }
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let s = socket.connect(server.opamp).await.unwrap();
    let (r, mut w) = s.into_split();
    let writer = tokio::spawn(async move {
        w.write_all(&all).await.unwrap();
        w
    });
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut s = r.reunite(writer.await.unwrap()).unwrap();
    let (st, closed) = statuses(&mut s, n as usize, Duration::from_secs(5)).await;
    assert!(
        st.len() == n as usize && st.iter().all(|s| *s == 200),
        "{} of {n}, closed {closed}",
        st.len()
    );
    let (extra, _) = statuses(&mut s, 1, Duration::from_millis(300)).await;
    assert!(extra.is_empty(), "answered twice: {extra:?}");
}

async fn http_poll(server: &TestServer, msg: &Msg) -> corral::edge::protocol::proto::ServerToAgent {
    server.poll(msg).await
}

/// Settles a polling agent so that the fast path may answer (its interval learned).
async fn settle(server: &TestServer, uid: &[u8; 16]) -> u64 {
    http_poll(server, &full_report(uid, 1, "fast")).await;
    let mut seq = 1;
    for _ in 0..6 {
        tokio::time::sleep(Duration::from_millis(250)).await;
        seq += 1;
        http_poll(server, &heartbeat(uid, seq)).await;
    }
    seq
}

/// Out-of-order and extreme sequence numbers on polls: answered, never a panic, and the
/// agent is asked for its full state after a gap.
#[tokio::test]
async fn out_of_order_sequence_numbers_on_polls() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut seq = settle(&server, &uid).await;
    let jump = http_poll(&server, &heartbeat(&uid, seq + 5)).await;
    assert_eq!(jump.flags & 1, 1, "a gap asks for the full state");
    for s in [seq + 1, seq + 2, 0, 1, u64::MAX - 1, u64::MAX, u64::MAX, 3] {
        let reply = http_poll(&server, &heartbeat(&uid, s)).await;
        assert_eq!(reply.instance_uid.as_ref(), &uid, "seq {s} answered");
    }
    seq += 100;
    http_poll(&server, &full_report(&uid, seq, "fast")).await;
    let a = server.wait_status(&uid, "connected").await;
    assert_eq!(a.agent.status, "connected");
}

/// An agent attached over WebSocket that also polls over HTTP with the next number: the poll
/// is not answered on the fast path behind the WebSocket's back.
#[tokio::test]
async fn an_agent_polling_while_attached_over_websocket() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let mut ws = WsAgent::connect(&server.ws_url()).await;
    ws.exchange(&full_report(&uid, 1, "both")).await;
    for seq in 2..6 {
        tokio::time::sleep(Duration::from_millis(200)).await;
        ws.exchange(&heartbeat(&uid, seq)).await;
    }
    let reply = http_poll(&server, &heartbeat(&uid, 6)).await;
    assert_eq!(reply.instance_uid.as_ref(), &uid);
    // The session heard the move: the WebSocket is let go.
    assert_eq!(ws.closed_with().await, 1000, "agent moved to plain HTTP");
    let a = server.wait_status(&uid, "connected").await;
    assert_eq!(a.agent.transport.as_deref(), Some("http"));
}

/// 300 pipelined polls of one agent: heartbeats (answered at once by the fast path, so hyper
/// yields after 16 with requests left over and the connection parks), full reports of other
/// agents, full reports of the same agent, and heartbeats trickled in.
#[tokio::test]
async fn pipelined_polls_of_every_kind_are_all_answered() {
    let server = TestServer::start().await;
    let (mut results, mut ok) = (Vec::new(), true);
    for variant in 0..4 {
        let uid = new_uid();
        let n = 300u64;
        let mut all = poll_req(&full_report(&uid, 1, "p"));
        for seq in 2..=n {
            let m = match variant {
                0 => heartbeat(&uid, seq),
                1 => full_report(&new_uid(), 1, "q"),
                2 => full_report(&uid, seq, "p"),
                _ => heartbeat(&uid, seq),
            };
            all.extend(poll_req(&m));
        }
        let mut s = TcpStream::connect(server.opamp).await.unwrap();
        if variant == 3 {
            // one at a time, written in small pieces without waiting
            for piece in all.chunks(100) {
                s.write_all(piece).await.unwrap();
                tokio::time::sleep(Duration::from_micros(300)).await;
            }
        } else {
            s.write_all(&all).await.unwrap();
        }
        let (st, closed) = statuses(&mut s, n as usize, S).await;
        results.push(format!(
            "variant {variant} ({} B): {} replies, closed {closed}",
            all.len(),
            st.len()
        ));
        ok &= st.len() == n as usize && st.iter().all(|s| *s == 200);
    }
    let decode = server
        .metric("corral_decode_errors_total{kind=\"malformed_protobuf\"}")
        .await;
    assert!(
        ok && decode == 0.0,
        "{results:#?}; malformed bodies: {decode}"
    );
}
