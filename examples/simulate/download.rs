//! Package downloads over HTTP, one task per download: progress every 25% of a big file,
//! resumption with range requests, and the SHA-256 check of what arrived.

use std::time::Duration;

use bytes::Bytes;
use futures_util::StreamExt;
use sha2::Digest as _;
use tokio::sync::mpsc::UnboundedSender;
use tokio::time::{Instant, sleep, timeout};

use crate::http::error_chain;

/// Files at least this big report download progress every 25%.
const PROGRESS_MIN_BYTES: u64 = 256 * 1024;
/// Attempts (the first request and resumes after errors) before a download fails.
const DOWNLOAD_ATTEMPTS: u32 = 5;
/// A download that receives nothing for this long is broken (and resumed).
const DOWNLOAD_READ_TIMEOUT: Duration = Duration::from_secs(30);

/// What a download task tells its agent.
pub enum DownloadEvent {
    Progress {
        percent: f64,
        bytes_per_second: f64,
    },
    /// The server answered a Range request with 206 from the right offset.
    Resumed,
    /// Something worth logging.
    Note(String),
    /// All bytes arrived; whether their SHA-256 matched.
    Done {
        bytes: u64,
        verified: Result<(), String>,
    },
    /// The transfer failed for good.
    Failed(String),
}

/// Downloads a package file in its own task, reporting progress, and verifies its SHA-256.
pub async fn download(
    client: reqwest::Client,
    url: String,
    content_hash: Bytes,
    interrupt: bool,
    events: UnboundedSender<DownloadEvent>,
) {
    let last = fetch(&client, &url, &content_hash, interrupt, &events).await;
    let _ = events.send(last);
}

/// The transfer: resumes with `Range: bytes=N-` after a broken connection (and once on
/// purpose with `interrupt`). Returns the final event.
async fn fetch(
    client: &reqwest::Client,
    url: &str,
    content_hash: &[u8],
    mut interrupt: bool,
    events: &UnboundedSender<DownloadEvent>,
) -> DownloadEvent {
    let started = Instant::now();
    let mut hasher = sha2::Sha256::new();
    let mut got = 0u64;
    let mut total: Option<u64> = None;
    let mut next_mark = 25u64;
    let mut failures = 0u32;
    let mut last_error = String::new();
    'attempts: loop {
        if failures >= DOWNLOAD_ATTEMPTS {
            return DownloadEvent::Failed(format!(
                "download of {url} failed after {failures} attempts ({got} bytes received): {last_error}"
            ));
        }
        if failures > 0 {
            sleep(Duration::from_millis(250 << failures)).await;
        }
        let mut request = client.get(url);
        if got > 0 {
            request = request.header(reqwest::header::RANGE, format!("bytes={got}-"));
        }
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                failures += 1;
                last_error = error_chain(&e);
                continue;
            }
        };
        let status = response.status();
        match status.as_u16() {
            200 => {
                if got > 0 {
                    let _ = events.send(DownloadEvent::Note(format!(
                        "download: the server ignored Range: bytes={got}- (HTTP 200); starting again"
                    )));
                    hasher = sha2::Sha256::new();
                    got = 0;
                }
                total = response.content_length();
            }
            206 if got > 0 => match content_range(response.headers()) {
                Some((start, size)) if start == got => {
                    total = size.or(total);
                    let _ = events.send(DownloadEvent::Resumed);
                }
                other => {
                    return DownloadEvent::Failed(format!(
                        "resuming {url} at byte {got}: the server answered 206 with Content-Range {:?} (parsed {other:?})",
                        response.headers().get(reqwest::header::CONTENT_RANGE)
                    ));
                }
            },
            // Everything had arrived before the connection broke.
            416 if total == Some(got) => break,
            500..=599 => {
                failures += 1;
                last_error = format!("HTTP {status}");
                continue;
            }
            _ => {
                return DownloadEvent::Failed(format!(
                    "GET {url} (from byte {got}): HTTP {status}"
                ));
            }
        }
        let mut body = response.bytes_stream();
        loop {
            let chunk = match timeout(DOWNLOAD_READ_TIMEOUT, body.next()).await {
                Ok(Some(Ok(chunk))) => chunk,
                Ok(None) => break,
                Ok(Some(Err(e))) => {
                    failures += 1;
                    last_error = error_chain(&e);
                    continue 'attempts;
                }
                Err(_) => {
                    failures += 1;
                    last_error = format!("nothing received for {DOWNLOAD_READ_TIMEOUT:?}");
                    continue 'attempts;
                }
            };
            hasher.update(&chunk);
            got += chunk.len() as u64;
            if let Some(size) = total.filter(|t| *t >= PROGRESS_MIN_BYTES) {
                let percent = got * 100 / size;
                if percent >= next_mark && percent < 100 {
                    let seconds = started.elapsed().as_secs_f64().max(1e-6);
                    let _ = events.send(DownloadEvent::Progress {
                        percent: percent as f64,
                        bytes_per_second: got as f64 / seconds,
                    });
                    while next_mark <= percent {
                        next_mark += 25;
                    }
                }
            }
            if interrupt && total.is_some_and(|t| got * 2 >= t && got < t) {
                // Stop reading (the connection is dropped) and resume with a range request.
                interrupt = false;
                continue 'attempts;
            }
        }
        match total {
            Some(size) if got < size => {
                failures += 1;
                last_error = format!("the connection ended after {got} of {size} bytes");
            }
            Some(size) if got > size => {
                return DownloadEvent::Failed(format!(
                    "received {got} bytes from {url}, more than the {size} announced"
                ));
            }
            _ => break,
        }
    }
    let digest = hasher.finalize();
    let verified = if digest.as_slice() == content_hash {
        Ok(())
    } else {
        Err(format!(
            "SHA-256 mismatch: the downloaded file ({got} bytes) hashes to {}, but the offer's file.content_hash is {}",
            hex::encode(digest),
            hex::encode(content_hash)
        ))
    };
    DownloadEvent::Done {
        bytes: got,
        verified,
    }
}

/// `Content-Range: bytes START-END/SIZE` as (START, SIZE); SIZE may be `*`.
fn content_range(headers: &reqwest::header::HeaderMap) -> Option<(u64, Option<u64>)> {
    let value = headers.get(reqwest::header::CONTENT_RANGE)?.to_str().ok()?;
    let (range, size) = value.trim().strip_prefix("bytes ")?.split_once('/')?;
    let (start, _end) = range.split_once('-')?;
    Some((start.trim().parse().ok()?, size.trim().parse().ok()))
}
