//! The backend side of the load: keep-alive connections that create ids, publish and delete,
//! one request at a time each (no pipelining), as a web app's backend would.
//!
//! A pool of `conns` tasks takes numbered jobs from a shared counter, either a fixed number
//! (create, fan-out, delete) or until a deadline (notify rate). Each job names the server it
//! goes to, and each task keeps one keep-alive connection per server it has sent to (one,
//! unless `--publish-base` names several). For each job it keeps
//! the wall-clock send time (to pair with the workers' receive times) and, when asked, the
//! request's latency.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::time::Instant;

use crate::http::{self, Response};
use crate::target::{Answer, Outcome};
use crate::{clock, net};

/// Longest a single request may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
/// Failures in a row after which a connection stops taking jobs (the server is gone).
const MAX_FAILURES_IN_A_ROW: u32 = 100;
/// Largest answer accepted.
const MAX_RESPONSE: usize = 64 * 1024;

/// Why a request got no answer.
#[derive(Debug, thiserror::Error)]
pub enum SendError {
    #[error("connect to {0}: {1}")]
    Connect(SocketAddr, std::io::Error),
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Http(#[from] http::HttpError),
    #[error("connection closed before the answer was complete")]
    Closed,
    #[error("answer larger than {MAX_RESPONSE} bytes")]
    TooLarge,
    #[error("no answer within {} s", REQUEST_TIMEOUT.as_secs())]
    Timeout,
}

/// One keep-alive connection to the server, opened on first use and reopened as needed.
pub struct Connection {
    addr: SocketAddr,
    stream: Option<TcpStream>,
    buf: Vec<u8>,
}

impl Connection {
    pub fn new(addr: SocketAddr) -> Self {
        Self {
            addr,
            stream: None,
            buf: Vec::with_capacity(1024),
        }
    }

    /// Sends `request` and reads its answer. A reused connection that turns out closed is
    /// reopened once and the request sent again (it cannot have been processed).
    pub async fn send(&mut self, request: &[u8]) -> Result<Response, SendError> {
        let result = tokio::time::timeout(REQUEST_TIMEOUT, self.send_inner(request)).await;
        let result = result.unwrap_or(Err(SendError::Timeout));
        if result.is_err() {
            self.stream = None;
        }
        result
    }

    async fn send_inner(&mut self, request: &[u8]) -> Result<Response, SendError> {
        if self.stream.is_some() {
            if let Some(response) = self.try_send(request).await? {
                return Ok(response);
            }
            self.stream = None;
        }
        self.try_send(request).await?.ok_or(SendError::Closed)
    }

    /// `None`: the connection was closed before any byte of the answer came.
    async fn try_send(&mut self, request: &[u8]) -> Result<Option<Response>, SendError> {
        let reused = self.stream.is_some();
        let stream = if let Some(stream) = &mut self.stream {
            stream
        } else {
            let stream = net::connect(self.addr, None)
                .await
                .map_err(|e| SendError::Connect(self.addr, e))?;
            self.stream.insert(stream)
        };
        if let Err(e) = stream.write_all(request).await {
            return if reused { Ok(None) } else { Err(e.into()) };
        }
        self.buf.clear();
        loop {
            if stream.read_buf(&mut self.buf).await? == 0 {
                if self.buf.is_empty() && reused {
                    return Ok(None);
                }
                let response = http::finish_at_close(&self.buf)?.ok_or(SendError::Closed)?;
                self.stream = None;
                return Ok(Some(response));
            }
            if let Some((response, _)) = http::parse_response(&self.buf)? {
                if response.head.close {
                    self.stream = None;
                }
                return Ok(Some(response));
            }
            if self.buf.len() >= MAX_RESPONSE {
                return Err(SendError::TooLarge);
            }
        }
    }
}

/// Which jobs a pool runs.
#[derive(Debug, Clone, Copy)]
pub enum Jobs {
    /// Jobs 0..n.
    Count(usize),
    /// Jobs 0.. until the deadline.
    Until(Instant),
}

/// What a pool did.
#[derive(Debug, Clone, Default)]
pub struct Tally {
    pub sent: usize,
    pub ok: usize,
    pub exists: usize,
    pub failed: usize,
    /// Sum of CallHome's `waiting` over the answers that had it.
    pub waiting: u64,
    /// For `Jobs::Count`: each job's send time (ns since the epoch), 0 if never sent.
    pub sent_ns: Vec<u64>,
    /// Request latencies in microseconds, when asked for.
    pub latencies_us: Vec<u32>,
    pub first_error: Option<String>,
    pub elapsed: Duration,
}

/// Runs `jobs` over `conns` tasks: `request(n)` gives job n's server and request, `classify`
/// reads its answer.
pub async fn run<R, C>(
    conns: usize,
    jobs: Jobs,
    keep_latencies: bool,
    request: R,
    classify: C,
) -> Tally
where
    R: Fn(usize) -> (SocketAddr, Vec<u8>) + Send + Sync + 'static,
    C: Fn(&Response) -> Answer + Send + Sync + 'static,
{
    let started = Instant::now();
    let next = Arc::new(AtomicUsize::new(0));
    let request = Arc::new(request);
    let classify = Arc::new(classify);
    let mut tasks = Vec::with_capacity(conns);
    for _ in 0..conns {
        let next = Arc::clone(&next);
        let request = Arc::clone(&request);
        let classify = Arc::clone(&classify);
        tasks.push(tokio::spawn(async move {
            // One per server; a handful at most, so a linear search finds it.
            let mut connections: Vec<Connection> = Vec::with_capacity(1);
            let mut tally = Tally::default();
            let mut sent = Vec::new();
            let mut in_a_row = 0;
            loop {
                let n = next.fetch_add(1, Ordering::Relaxed);
                let more = match jobs {
                    Jobs::Count(count) => n < count,
                    Jobs::Until(deadline) => Instant::now() < deadline,
                };
                if !more || in_a_row >= MAX_FAILURES_IN_A_ROW {
                    break;
                }
                let (addr, bytes) = request(n);
                let at = if let Some(at) = connections.iter().position(|c| c.addr == addr) {
                    at
                } else {
                    connections.push(Connection::new(addr));
                    connections.len() - 1
                };
                let sent_ns = clock::now_ns();
                let t0 = Instant::now();
                let result = connections[at].send(&bytes).await;
                if keep_latencies {
                    let us = u32::try_from(t0.elapsed().as_micros()).unwrap_or(u32::MAX);
                    tally.latencies_us.push(us);
                }
                if matches!(jobs, Jobs::Count(_)) {
                    sent.push((n, sent_ns));
                }
                tally.sent += 1;
                let outcome = match result {
                    Ok(response) => {
                        let answer = classify(&response);
                        tally.waiting += answer.waiting.unwrap_or(0);
                        if answer.outcome == Outcome::Failed && tally.first_error.is_none() {
                            tally.first_error = Some(describe(&response));
                        }
                        answer.outcome
                    }
                    Err(e) => {
                        tally.first_error.get_or_insert_with(|| e.to_string());
                        Outcome::Failed
                    }
                };
                match outcome {
                    Outcome::Ok => tally.ok += 1,
                    Outcome::Exists => tally.exists += 1,
                    Outcome::Failed => tally.failed += 1,
                }
                in_a_row = if outcome == Outcome::Failed {
                    in_a_row + 1
                } else {
                    0
                };
            }
            (tally, sent)
        }));
    }
    let mut total = Tally::default();
    if let Jobs::Count(count) = jobs {
        total.sent_ns = vec![0; count];
    }
    for task in tasks {
        let Ok((tally, sent)) = task.await else {
            total.failed += 1;
            total
                .first_error
                .get_or_insert_with(|| "a publisher task panicked".into());
            continue;
        };
        total.sent += tally.sent;
        total.ok += tally.ok;
        total.exists += tally.exists;
        total.failed += tally.failed;
        total.waiting += tally.waiting;
        total.latencies_us.extend(tally.latencies_us);
        if total.first_error.is_none() {
            total.first_error = tally.first_error;
        }
        for (n, ns) in sent {
            total.sent_ns[n] = ns;
        }
    }
    total.elapsed = started.elapsed();
    total
}

/// A failed answer in a few words: status and the start of the body.
fn describe(response: &Response) -> String {
    let body = String::from_utf8_lossy(&response.body);
    let body: String = body.chars().take(200).collect();
    format!("status {}: {body}", response.head.status)
}
