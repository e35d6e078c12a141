//! The listeners' limits through real sockets: slow and silent clients are cut off, a storm of
//! new connections is paced with spread-out retry hints, and the connection cap holds.

use std::time::{Duration, Instant};

use prost::Message;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::common::*;

/// A server whose timeouts are short enough to watch.
async fn impatient() -> TestServer {
    TestServer::with(Options {
        header_timeout: Some(1),
        body_timeout: Some(1),
        idle_timeout: Some(2),
        keep_alive_timeout: Some(2),
        first_message_timeout: Some(1),
        ping_interval: Some(1),
        ..Options::default()
    })
    .await
}

/// Reads until the server closes the connection; how long that took, or `None` if it was
/// still open after `limit`.
async fn closed_after(
    stream: &mut (impl AsyncReadExt + Unpin),
    limit: Duration,
) -> Option<Duration> {
    let start = Instant::now();
    let mut buf = [0u8; 4096];
    loop {
        match tokio::time::timeout_at((start + limit).into(), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0) | Err(_)) => return Some(start.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

/// Bytes written one at a time, `every` apart, until the server stops taking them.
fn trickle(mut writer: tokio::net::tcp::OwnedWriteHalf, bytes: Vec<u8>, every: Duration) {
    tokio::spawn(async move {
        for byte in bytes {
            if writer.write_all(&[byte]).await.is_err() {
                return;
            }
            tokio::time::sleep(every).await;
        }
    });
}

fn cut(listener: &str, reason: &str) -> String {
    format!("corral_connections_cut_total{{listener=\"{listener}\",reason=\"{reason}\"}}")
}

#[tokio::test]
async fn headers_sent_a_byte_at_a_time_are_cut_off_at_the_header_timeout() {
    let server = impatient().await;
    let stream = TcpStream::connect(server.opamp).await.unwrap();
    let (mut reader, writer) = stream.into_split();
    let headers = format!(
        "POST /v1/opamp HTTP/1.1\r\nHost: {}\r\nX-Slow: {}",
        server.opamp,
        "a".repeat(200)
    );
    trickle(writer, headers.into_bytes(), Duration::from_millis(100));
    let closed = closed_after(&mut reader, Duration::from_secs(5)).await;
    assert!(closed.is_some(), "a slow client kept its connection");
    assert_eq!(server.metric(&cut("opamp", "header_timeout")).await, 1.0);
}

#[tokio::test]
async fn a_connection_that_never_speaks_is_closed() {
    let server = impatient().await;
    let mut opamp = TcpStream::connect(server.opamp).await.unwrap();
    let mut api = TcpStream::connect(server.api).await.unwrap();
    assert!(
        closed_after(&mut opamp, Duration::from_secs(5))
            .await
            .is_some()
    );
    assert!(
        closed_after(&mut api, Duration::from_secs(5))
            .await
            .is_some()
    );
    assert_eq!(server.metric(&cut("api", "header_timeout")).await, 1.0);
}

#[tokio::test]
async fn a_body_that_stalls_or_never_ends_is_cut_off_at_the_body_timeout() {
    let server = impatient().await;
    let stalled = format!(
        "POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
         Content-Length: 1000\r\n\r\n{}",
        "a".repeat(10)
    );
    let mut stream = TcpStream::connect(server.opamp).await.unwrap();
    stream.write_all(stalled.as_bytes()).await.unwrap();
    assert!(
        closed_after(&mut stream, Duration::from_secs(5))
            .await
            .is_some()
    );

    // Chunks keep coming, but the body never ends.
    let stream = TcpStream::connect(server.opamp).await.unwrap();
    let (mut reader, mut writer) = stream.into_split();
    writer
        .write_all(
            b"POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
              Transfer-Encoding: chunked\r\n\r\n",
        )
        .await
        .unwrap();
    trickle(writer, b"1\r\na\r\n".repeat(100), Duration::from_millis(20));
    assert!(
        closed_after(&mut reader, Duration::from_secs(5))
            .await
            .is_some()
    );
    assert_eq!(server.metric(&cut("opamp", "body_timeout")).await, 2.0);
}

#[tokio::test]
async fn a_keep_alive_connection_waits_the_keep_alive_timeout_not_the_header_timeout() {
    let server = impatient().await;
    let mut stream = TcpStream::connect(server.opamp).await.unwrap();
    let request = b"GET /nowhere HTTP/1.1\r\nHost: x\r\n\r\n";
    let mut buf = [0u8; 1024];
    stream.write_all(request).await.unwrap();
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 404"));
    // Longer than the header timeout, shorter than the keep-alive one: still open.
    tokio::time::sleep(Duration::from_millis(1500)).await;
    stream.write_all(request).await.unwrap();
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 404"), "kept alive");
    let closed = closed_after(&mut stream, Duration::from_secs(5)).await;
    let closed = closed.expect("an idle connection is closed");
    assert!(
        closed >= Duration::from_millis(1500),
        "closed after {closed:?}"
    );
    assert_eq!(server.metric(&cut("opamp", "idle_timeout")).await, 1.0);
}

/// With no keep-alive, each reply says `Connection: close` and the connection ends after it,
/// so a client reconnects at once instead of finding its connection gone later.
#[tokio::test]
async fn with_no_keep_alive_each_reply_closes_its_connection() {
    let server = TestServer::with(Options {
        keep_alive_timeout: Some(0),
        ..Options::default()
    })
    .await;
    let mut stream = TcpStream::connect(server.opamp).await.unwrap();
    let body = full_report(&new_uid(), 1, "once").encode_to_vec();
    let head = format!(
        "POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    let mut reply = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), stream.read_to_end(&mut reply))
        .await
        .expect("the server closes the connection after its reply")
        .unwrap();
    let text = String::from_utf8_lossy(&reply).to_ascii_lowercase();
    assert!(text.starts_with("http/1.1 200"), "{text}");
    assert!(text.contains("connection: close"), "{text}");
    // The admin API keeps its connections.
    let mut api = TcpStream::connect(server.api).await.unwrap();
    api.write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = api.read(&mut buf).await.unwrap();
    assert!(
        !String::from_utf8_lossy(&buf[..n])
            .to_ascii_lowercase()
            .contains("connection: close")
    );
    assert!(
        closed_after(&mut api, Duration::from_millis(500))
            .await
            .is_none(),
        "kept alive"
    );
}

#[tokio::test]
async fn a_websocket_without_a_first_message_is_closed_with_1008() {
    let server = impatient().await;
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    assert_eq!(agent.closed_with().await, 1008);
    assert_eq!(
        server.metric(&cut("opamp", "first_message_timeout")).await,
        1.0
    );
}

/// An agent that does not report heartbeats.
fn quiet_report(uid: &[u8; 16]) -> corral::edge::protocol::proto::AgentToServer {
    let mut report = full_report(uid, 1, "quiet");
    report.capabilities = CAPS & !0x2000;
    report
}

#[tokio::test]
async fn a_silent_websocket_agent_without_heartbeats_is_pinged_then_disconnected() {
    let server = impatient().await;
    let uid = new_uid();
    let mut silent = WsAgent::connect(&server.ws_url()).await;
    silent.exchange(&quiet_report(&uid)).await;

    // This one answers pings (its client does, while it reads).
    let alive_uid = new_uid();
    let mut alive = WsAgent::connect(&server.ws_url()).await;
    alive.exchange(&quiet_report(&alive_uid)).await;
    let listening = tokio::spawn(async move {
        let until = tokio::time::Instant::now() + Duration::from_secs(4);
        let mut pings = 0;
        while let Ok(Some(Ok(frame))) =
            tokio::time::timeout_at(until, futures_util::StreamExt::next(&mut alive.ws)).await
        {
            if matches!(frame, WsMessage::Ping(_)) {
                pings += 1;
            }
        }
        (alive, pings)
    });

    // The silent one reads nothing, so answers no ping.
    server.wait_status(&uid, "disconnected").await;
    assert_eq!(server.metric(&cut("opamp", "ping_timeout")).await, 1.0);
    let (_alive, pings) = listening.await.unwrap();
    assert!(
        pings >= 2,
        "a quiet agent is pinged every interval ({pings})"
    );
    assert_eq!(
        server.agent(&alive_uid).await.unwrap().agent.status,
        "connected"
    );
}

#[tokio::test]
async fn an_agent_reporting_heartbeats_is_not_pinged() {
    let server = impatient().await;
    let uid = new_uid();
    let mut agent = WsAgent::connect(&server.ws_url()).await;
    agent.exchange(&full_report(&uid, 1, "beating")).await;
    let frame = tokio::time::timeout(
        Duration::from_millis(2500),
        futures_util::StreamExt::next(&mut agent.ws),
    )
    .await;
    assert!(frame.is_err(), "nothing was sent: {frame:?}");
}

/// Opens `n` connections at once, each with one plain-HTTP poll; gives each answer's status
/// and `Retry-After`.
async fn storm(server: &TestServer, n: usize) -> Vec<(u16, Option<u64>)> {
    let mut polls = Vec::new();
    for _ in 0..n {
        let url = server.http_url();
        polls.push(tokio::spawn(async move {
            // A client of its own: a connection of its own.
            let client = reqwest::Client::new();
            let body = full_report(&new_uid(), 1, "storm").encode_to_vec();
            let response = client
                .post(url)
                .header("content-type", "application/x-protobuf")
                .body(body)
                .send()
                .await
                .expect("poll");
            let retry = response
                .headers()
                .get("retry-after")
                .and_then(|v| v.to_str().ok()?.parse().ok());
            (response.status().as_u16(), retry)
        }));
    }
    let mut answers = Vec::new();
    for poll in polls {
        answers.push(poll.await.unwrap());
    }
    answers
}

#[tokio::test]
async fn a_storm_of_new_connections_is_paced_with_retry_hints_spread_at_random() {
    let server = TestServer::with(Options {
        max_new_connections_per_second: Some(5),
        ..Options::default()
    })
    .await;
    let answers = storm(&server, 40).await;
    let served = answers.iter().filter(|(status, _)| *status == 200).count();
    let refused: Vec<u64> = answers
        .iter()
        .filter(|(status, _)| *status == 503)
        .map(|(_, retry)| retry.expect("a refusal says when to retry"))
        .collect();
    assert_eq!(served + refused.len(), 40, "{answers:?}");
    assert!((5..=10).contains(&served), "{served} served");
    assert!(refused.iter().all(|s| (1..=30).contains(s)), "{refused:?}");
    let distinct: std::collections::HashSet<_> = refused.iter().collect();
    assert!(distinct.len() >= 5, "retry hints are spread: {refused:?}");
    assert_eq!(
        server.metric(&cut("opamp", "connection_rate")).await,
        refused.len() as f64
    );

    // A WebSocket handshake beyond the rate is refused the same way.
    let mut refused_ws = 0;
    for _ in 0..20 {
        if let Err(tokio_tungstenite::tungstenite::Error::Http(response)) =
            tokio_tungstenite::connect_async(server.ws_url()).await
        {
            assert_eq!(response.status(), 503);
            assert!(response.headers().contains_key("retry-after"));
            refused_ws += 1;
        }
    }
    assert!(refused_ws >= 10, "{refused_ws} refused");
}

#[tokio::test]
async fn connections_that_have_not_sent_a_first_message_are_capped() {
    let server = TestServer::with(Options {
        max_pending_handshakes: Some(2),
        ..Options::default()
    })
    .await;
    let mut first = WsAgent::connect(&server.ws_url()).await;
    let _second = WsAgent::connect(&server.ws_url()).await;
    match tokio_tungstenite::connect_async(server.ws_url()).await {
        Err(tokio_tungstenite::tungstenite::Error::Http(response)) => {
            assert_eq!(response.status(), 503)
        }
        other => panic!("a third handshake was let in: {:?}", other.map(|_| ())),
    }
    // Once one is past its first message, its place is free again.
    first.exchange(&full_report(&new_uid(), 1, "first")).await;
    let _third = WsAgent::connect(&server.ws_url()).await;
    assert_eq!(
        server.metric(&cut("opamp", "pending_handshakes")).await,
        1.0
    );
}

#[tokio::test]
async fn connections_beyond_the_maximum_are_closed_and_the_api_stays_reachable() {
    let server = TestServer::with(Options {
        max_connections: Some(3),
        ..Options::default()
    })
    .await;
    let mut held = Vec::new();
    for _ in 0..3 {
        held.push(TcpStream::connect(server.opamp).await.unwrap());
    }
    let mut fourth = TcpStream::connect(server.opamp).await.unwrap();
    let mut told = [0u8; 64];
    let n = fourth.read(&mut told).await.unwrap();
    let told = String::from_utf8_lossy(&told[..n]);
    assert!(told.starts_with("HTTP/1.1 503"), "{told}");
    assert!(
        closed_after(&mut fourth, Duration::from_secs(2))
            .await
            .is_some()
    );
    assert_eq!(server.fleet().await.total, 0);
    assert_eq!(server.metric(&cut("opamp", "max_connections")).await, 1.0);
    drop(held);
    // Places come back when connections close.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let reply = server.poll(&full_report(&new_uid(), 1, "after")).await;
    assert!(reply.error_response.is_none());
}

/// Regression: the idle timeout ran from the moment a reply's headers were ready, so a
/// download that took longer than it was cut off while the client was still reading.
#[tokio::test]
async fn a_download_slower_than_the_idle_timeout_completes_while_it_moves() {
    let server = impatient().await;
    let size = 32 << 20;
    let bytes: Vec<u8> = (0..size).map(|i| (i % 251) as u8).collect();
    let uploaded: serde_json::Value = server
        .client()
        .post(server.api_url("/api/v1/packages?name=big&version=v1.0.0"))
        .header("content-type", "application/octet-stream")
        .body(bytes)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let sha = uploaded["sha256"].as_str().unwrap().to_string();
    let mut stream = TcpStream::connect(server.opamp).await.unwrap();
    let request = format!("GET /v1/packages/{sha} HTTP/1.1\r\nHost: x\r\n\r\n");
    stream.write_all(request.as_bytes()).await.unwrap();
    // About 4 MiB a second: 8 s for the whole, four times the idle timeout.
    let start = Instant::now();
    let mut received = 0usize;
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        match tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf)).await {
            Ok(Ok(0)) | Ok(Err(_)) | Err(_) => break,
            Ok(Ok(n)) => received += n,
        }
        if received >= size {
            break;
        }
        tokio::time::sleep(Duration::from_millis(15)).await;
    }
    assert!(
        start.elapsed() > Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
    assert!(
        received > size,
        "got {received} of {size} bytes and headers"
    );
    assert_eq!(server.metric(&cut("opamp", "reply_stalled")).await, 0.0);
    // A client that stops reading is still cut off.
    let mut stalled = TcpStream::connect(server.opamp).await.unwrap();
    stalled.write_all(request.as_bytes()).await.unwrap();
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        closed_after(&mut stalled, Duration::from_secs(10))
            .await
            .is_some()
    );
    assert_eq!(server.metric(&cut("opamp", "reply_stalled")).await, 1.0);
}

/// Regression: an admin API connection kept alive after a request its handler answered at
/// once was never closed.
#[tokio::test]
async fn an_idle_admin_api_connection_is_closed_after_a_quick_answer() {
    let server = impatient().await;
    let mut stream = TcpStream::connect(server.api).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        .await
        .unwrap();
    let mut buf = [0u8; 1024];
    let n = stream.read(&mut buf).await.unwrap();
    assert!(buf[..n].starts_with(b"HTTP/1.1 200"));
    let closed = closed_after(&mut stream, Duration::from_secs(6)).await;
    assert!(closed.is_some(), "still open");
    assert_eq!(server.metric(&cut("api", "idle_timeout")).await, 1.0);
}

/// Between requests a connection is parked (its HTTP state dropped, its socket kept). Bytes
/// of the next request that were read before that, as from a client that pipelines, are kept
/// and answered; so is a request that comes after a pause.
#[tokio::test]
async fn pipelined_and_later_requests_on_one_connection_are_all_answered() {
    let server = TestServer::start().await;
    let uid = new_uid();
    let request = |msg: corral::edge::protocol::proto::AgentToServer| {
        let body = msg.encode_to_vec();
        let mut bytes = format!(
            "POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
             Content-Length: {}\r\n\r\n",
            body.len()
        )
        .into_bytes();
        bytes.extend_from_slice(&body);
        bytes
    };
    let mut stream = TcpStream::connect(server.opamp).await.unwrap();
    let mut three = request(full_report(&uid, 1, "pipelined"));
    three.extend(request(heartbeat(&uid, 2)));
    three.extend(request(heartbeat(&uid, 3)));
    stream.write_all(&three).await.unwrap();
    let replies = read_replies(&mut stream, 3).await;
    assert_eq!(replies.len(), 3);
    for _ in 0..3 {
        tokio::time::sleep(Duration::from_millis(300)).await;
        stream
            .write_all(&request(heartbeat(&uid, 4)))
            .await
            .unwrap();
        assert_eq!(read_replies(&mut stream, 1).await.len(), 1, "kept alive");
    }
    server.wait_status(&uid, "connected").await;
    assert_eq!(
        server
            .metric("corral_messages_in_total{transport=\"http\"}")
            .await,
        6.0
    );
}

/// Reads `n` HTTP replies with a Content-Length; their status lines.
async fn read_replies(stream: &mut TcpStream, n: usize) -> Vec<String> {
    let mut buf = Vec::new();
    let mut replies = Vec::new();
    let mut chunk = [0u8; 4096];
    while replies.len() < n {
        let read = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut chunk))
            .await
            .expect("a reply")
            .unwrap();
        assert!(read > 0, "closed after {} replies", replies.len());
        buf.extend_from_slice(&chunk[..read]);
        while let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
            let length: usize = head
                .lines()
                .find_map(|l| l.strip_prefix("content-length: "))
                .map_or(0, |v| v.trim().parse().unwrap());
            if buf.len() < end + 4 + length {
                break;
            }
            assert!(head.starts_with("http/1.1 200"), "{head}");
            replies.push(head.lines().next().unwrap_or_default().to_string());
            buf.drain(..end + 4 + length);
        }
    }
    replies
}

/// A POST of `msg` on `stream`, and its reply's status line.
async fn poll_on(
    stream: &mut TcpStream,
    msg: &corral::edge::protocol::proto::AgentToServer,
) -> String {
    let body = msg.encode_to_vec();
    let head = format!(
        "POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
         Content-Length: {}\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&body).await.unwrap();
    read_replies(stream, 1).await.remove(0)
}

/// Near the connection limit, idle kept-alive connections make room for new ones instead of
/// the new ones being refused: past 15/16 of it, each new connection closes the connection
/// parked last, so the agents that keep their connections stay the same ones.
#[tokio::test]
async fn parked_connections_make_room_near_the_limit_the_last_parked_first() {
    let server = TestServer::with(Options {
        max_connections: Some(16),
        ..Options::default()
    })
    .await;
    // Fifteen agents poll once each on their own connection, which stays open, parked.
    let mut kept = Vec::new();
    for i in 0..15 {
        let uid = new_uid();
        let mut stream = TcpStream::connect(server.opamp).await.unwrap();
        let status = poll_on(&mut stream, &full_report(&uid, 1, &format!("kept-{i}"))).await;
        assert!(status.starts_with("http/1.1 200"), "{status}");
        kept.push((uid, stream));
    }
    // Ten more come and go: each is served, and each closes the connection parked last.
    for i in 0..10 {
        let mut stream = TcpStream::connect(server.opamp).await.unwrap();
        let status = poll_on(
            &mut stream,
            &full_report(&new_uid(), 1, &format!("new-{i}")),
        )
        .await;
        assert!(status.starts_with("http/1.1 200"), "{status}");
        kept.push((new_uid(), stream));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert_eq!(server.metric(&cut("opamp", "max_connections")).await, 0.0);
    assert!(server.metric(&cut("opamp", "reclaimed")).await >= 10.0);
    // The first agents still hold their connections; the latest were closed.
    let (uid, first) = &mut kept[0];
    let status = poll_on(first, &heartbeat(uid, 2)).await;
    assert!(
        status.starts_with("http/1.1 200"),
        "the first parked is kept"
    );
    // Each newcomer closed the one before it; the last newcomer is still parked.
    let at = kept.len() - 2;
    assert!(
        closed_after(&mut kept[at].1, Duration::from_secs(2))
            .await
            .is_some(),
        "the connection parked last was closed"
    );
}

/// A reply sent before the request's body was read (here a 415) ends the connection once the
/// body cannot be drained, as before connections were parked: the rest of that body, arriving
/// later, is never read as a request of its own (which a proxy in front would not expect).
#[tokio::test]
async fn the_rest_of_an_unread_body_is_never_taken_for_a_request() {
    let server = TestServer::start().await;
    let inner = full_report(&new_uid(), 1, "smuggled").encode_to_vec();
    let mut hidden = format!(
        "POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: application/x-protobuf\r\n\
         Content-Length: {}\r\n\r\n",
        inner.len()
    )
    .into_bytes();
    hidden.extend_from_slice(&inner);
    let padding = vec![b'x'; 64];
    let head = format!(
        "POST /v1/opamp HTTP/1.1\r\nHost: x\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n",
        padding.len() + hidden.len()
    );
    let mut stream = TcpStream::connect(server.opamp).await.unwrap();
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(&padding).await.unwrap();
    let mut buf = [0u8; 1024];
    let n = tokio::time::timeout(Duration::from_secs(5), stream.read(&mut buf))
        .await
        .expect("a reply")
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 415"));
    // The rest of the body, which reads like a request of its own.
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = stream.write_all(&hidden).await;
    let mut rest = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(3), stream.read_to_end(&mut rest)).await;
    assert!(
        !String::from_utf8_lossy(&rest).contains("HTTP/1.1 200"),
        "the body was answered as a request"
    );
    assert_eq!(server.fleet().await.total, 0, "no agent came from the body");
}
