//! One stand-in for a waiting browser: a long poll re-issued after every answer, or an event
//! stream. Used by the worker processes.
//!
//! Each client is one small task with one socket and a 512-byte buffer, so a worker holds
//! ~10,000 of them cheaply. What a client sees goes into counters shared by its worker and,
//! when fan-out latency is measured, into delivery records stamped the moment the bytes
//! arrived. A broken connection is retried a few times, like a browser would, and every
//! break is counted.

use std::fmt;
use std::io;
use std::net::IpAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio::sync::OwnedSemaphorePermit;
use tokio::sync::mpsc::UnboundedSender;

use crate::http::{self, ChunkedDecoder, Framing, HttpError, Response};
use crate::ids;
use crate::protocol::{ClientCounts, Delivery};
use crate::sse;
use crate::target::{Cursor, Kind, Target, Transport};
use crate::{clock, net};

/// Initial read buffer per connection: CallHome's and Nchan's answers fit in it.
const READ_BUF: usize = 512;
/// Largest answer (head and body) accepted; more means something is wrong.
const MAX_RESPONSE: usize = 64 * 1024;
/// How long one connect may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Breaks in a row after which a client that was waiting gives up.
const MAX_FAILURES: u32 = 3;
/// Pause before a retry, times the breaks in a row.
const RETRY_BACKOFF: Duration = Duration::from_secs(1);

/// What all clients of a worker share.
#[derive(Debug)]
pub struct Shared {
    pub target: Target,
    pub transport: Transport,
    pub stats: Stats,
    /// Where deliveries are recorded; `None` when only counts are wanted.
    pub deliveries: Option<UnboundedSender<Delivery>>,
    /// Poll once and stop at the first answer or break, so each client ends exactly once
    /// (drain: how did the held polls end?).
    single_poll: bool,
    /// Which kinds of failure have been described on stderr already (once each).
    noted: [AtomicBool; 4],
}

impl Shared {
    pub fn new(
        target: Target,
        transport: Transport,
        deliveries: Option<UnboundedSender<Delivery>>,
        single_poll: bool,
    ) -> Self {
        Self {
            target,
            transport,
            stats: Stats::default(),
            deliveries,
            single_poll,
            noted: Default::default(),
        }
    }

    /// Describes the first failure of each kind on stderr, so a run full of errors says why.
    fn note(&self, kind: Trouble, what: &dyn fmt::Display) {
        if !self.noted[kind as usize].swap(true, Ordering::Relaxed) {
            eprintln!("callhome-bench worker: first {}: {what}", kind.name());
        }
    }
}

/// Kinds of trouble described once each.
#[derive(Debug, Clone, Copy)]
enum Trouble {
    Connect = 0,
    Close = 1,
    Answer = 2,
    Wrong = 3,
}

impl Trouble {
    fn name(self) -> &'static str {
        match self {
            Self::Connect => "failed connect",
            Self::Close => "early close",
            Self::Answer => "unexpected answer",
            Self::Wrong => "wrong delivery",
        }
    }
}

/// The counters behind [`ClientCounts`], updated by every client of a worker.
#[derive(Debug, Default)]
pub struct Stats {
    ready: AtomicU64,
    not_ready: AtomicU64,
    failed_connects: AtomicU64,
    early_closes: AtomicU64,
    unexpected_answers: AtomicU64,
    repolls: AtomicU64,
    reconnects: AtomicU64,
    deliveries: AtomicU64,
    duplicates: AtomicU64,
    wrong: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Stats {
    /// Clients that are waiting or have given up.
    pub fn settled(&self) -> u64 {
        self.ready.load(Ordering::Relaxed) + self.not_ready.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> ClientCounts {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        ClientCounts {
            ready: get(&self.ready),
            not_ready: get(&self.not_ready),
            failed_connects: get(&self.failed_connects),
            early_closes: get(&self.early_closes),
            unexpected_answers: get(&self.unexpected_answers),
            repolls: get(&self.repolls),
            reconnects: get(&self.reconnects),
            deliveries: get(&self.deliveries),
            duplicates: get(&self.duplicates),
            wrong: get(&self.wrong),
        }
    }
}

/// Who a client is.
#[derive(Debug)]
pub struct Client {
    /// The index of the id it waits on (the number in the id's name and its infos).
    pub id_index: usize,
    pub id: String,
    /// CallHome: a `watch` list of several ids (`ID.0,...`) to wait on instead of `id` alone
    /// (`idle --ids-per-client`; their cursors are not moved, so for idle clients only).
    pub watch: Option<String>,
    /// Loopback source address to bind to.
    pub source: Option<IpAddr>,
}

/// Why a connection or an answer was no good.
#[derive(Debug, thiserror::Error)]
enum Failure {
    #[error("connect: {0}")]
    Connect(io::Error),
    #[error("connection closed before the answer was complete")]
    Closed,
    #[error("{0}")]
    Io(io::Error),
    #[error("{0}")]
    Http(#[from] HttpError),
    #[error("{0}")]
    Sse(#[from] sse::LineTooLong),
    #[error("answer larger than {MAX_RESPONSE} bytes")]
    TooLarge,
    #[error("status {0} (or not an event stream)")]
    Answer(u16),
    #[error("the id was deleted (event: gone)")]
    Gone,
}

/// Runs one client until it gives up or its worker exits. `permit` bounds how many clients
/// connect at once; it is returned once the client is waiting (or has given up).
pub async fn run(client: Client, shared: Arc<Shared>, permit: OwnedSemaphorePermit) {
    let mut waiter = Waiter {
        client,
        shared,
        permit: Some(permit),
        cursor: Cursor::default(),
        last_round: 0,
        failures: 0,
    };
    match waiter.shared.transport {
        Transport::Poll => waiter.poll().await,
        Transport::Sse => waiter.stream().await,
    }
}

/// A client's state between answers.
struct Waiter {
    client: Client,
    shared: Arc<Shared>,
    /// Held until the client is waiting.
    permit: Option<OwnedSemaphorePermit>,
    cursor: Cursor,
    /// The newest round this client received.
    last_round: u32,
    /// Breaks in a row.
    failures: u32,
}

impl Waiter {
    /// Long polls, one after another, on keep-alive connections.
    async fn poll(&mut self) {
        let mut buf = Vec::with_capacity(READ_BUF);
        loop {
            let failure = match self.connect().await {
                Ok(mut stream) => match self.poll_on(&mut stream, &mut buf).await {
                    Ok(()) if self.shared.single_poll => return,
                    // The server closed the connection between answers: open another.
                    Ok(()) => {
                        bump(&self.shared.stats.reconnects);
                        continue;
                    }
                    Err(failure) => failure,
                },
                Err(failure) => failure,
            };
            // A single poll is counted by how it ended and not retried.
            if self.give_up(&failure) || self.shared.single_poll {
                return;
            }
            tokio::time::sleep(RETRY_BACKOFF * self.failures).await;
        }
    }

    /// Long polls on one connection until the server closes it (`Ok`) or something breaks.
    async fn poll_on(&mut self, stream: &mut TcpStream, buf: &mut Vec<u8>) -> Result<(), Failure> {
        let mut fresh = true;
        loop {
            let request = self.shared.target.subscribe(
                Transport::Poll,
                &self.client.id,
                self.client.watch.as_deref(),
                &self.cursor,
            );
            if let Err(e) = stream.write_all(&request).await {
                return if fresh { Err(Failure::Io(e)) } else { Ok(()) };
            }
            self.mark_ready();
            let Some((response, at)) = read_response(stream, buf).await? else {
                // Closed before a byte of the answer: on a reused connection that is the
                // server dropping an idle keep-alive connection, not an error.
                return if fresh { Err(Failure::Closed) } else { Ok(()) };
            };
            fresh = false;
            self.on_poll_answer(&response, at)?;
            if response.head.close || self.shared.single_poll {
                return Ok(());
            }
        }
    }

    fn on_poll_answer(&mut self, response: &Response, at: u64) -> Result<(), Failure> {
        match response.head.status {
            200 => {
                let value = self.shared.target.value(&response.body);
                let Some(value) = value else {
                    return Err(Failure::Answer(200));
                };
                if let Some(seq) = value.seq {
                    self.cursor.since = seq;
                }
                if self.shared.target.kind == Kind::Nchan {
                    self.cursor.etag.clone_from(&response.head.etag);
                    self.cursor
                        .last_modified
                        .clone_from(&response.head.last_modified);
                }
                if let Some(info) = value.info {
                    self.deliver(&info, at);
                }
                self.failures = 0;
                Ok(())
            }
            // "Nothing yet, ask again": CallHome's poll_timeout (204); Nchan's 304 and 408.
            204 | 304 | 408 => {
                bump(&self.shared.stats.repolls);
                self.failures = 0;
                Ok(())
            }
            status => Err(Failure::Answer(status)),
        }
    }

    /// An event stream, reopened (from the cursor) when it breaks.
    async fn stream(&mut self) {
        loop {
            let failure = self.stream_once().await;
            if self.give_up(&failure) {
                return;
            }
            tokio::time::sleep(RETRY_BACKOFF * self.failures).await;
        }
    }

    /// Opens a stream and reads it until it ends, which is always a failure.
    async fn stream_once(&mut self) -> Failure {
        let mut stream = match self.connect().await {
            Ok(stream) => stream,
            Err(failure) => return failure,
        };
        let request = self.shared.target.subscribe(
            Transport::Sse,
            &self.client.id,
            self.client.watch.as_deref(),
            &self.cursor,
        );
        if let Err(e) = stream.write_all(&request).await {
            return Failure::Io(e);
        }
        let mut buf = Vec::with_capacity(READ_BUF);
        let head = loop {
            match http::parse_head(&buf) {
                Ok(Some(head)) => break head,
                Ok(None) if buf.len() >= MAX_RESPONSE => return Failure::TooLarge,
                Ok(None) => {}
                Err(e) => return e.into(),
            }
            match stream.read_buf(&mut buf).await {
                Ok(0) => return Failure::Closed,
                Ok(_) => {}
                Err(e) => return Failure::Io(e),
            }
        };
        if head.status != 200 || !head.event_stream {
            return Failure::Answer(head.status);
        }
        self.mark_ready();
        let mut decoder = (head.framing == Framing::Chunked).then(ChunkedDecoder::default);
        let mut parser = sse::Parser::default();
        let mut plain = Vec::new();
        let mut at = clock::now_ns();
        buf.drain(..head.len);
        loop {
            let bytes = match &mut decoder {
                Some(decoder) => {
                    plain.clear();
                    if let Err(e) = decoder.decode(&buf, &mut plain) {
                        return e.into();
                    }
                    if decoder.is_done() {
                        return Failure::Closed;
                    }
                    &plain
                }
                None => &buf,
            };
            let events = match parser.feed(bytes) {
                Ok(events) => events,
                Err(e) => return e.into(),
            };
            for event in events {
                if let Err(failure) = self.on_event(event, at) {
                    return failure;
                }
            }
            buf.clear();
            match stream.read_buf(&mut buf).await {
                Ok(0) => return Failure::Closed,
                Ok(_) => at = clock::now_ns(),
                Err(e) => return Failure::Io(e),
            }
        }
    }

    fn on_event(&mut self, event: sse::Event, at: u64) -> Result<(), Failure> {
        match event.name.as_deref() {
            None | Some("message") => {
                let Some(value) = self.shared.target.value(event.data.as_bytes()) else {
                    return Err(Failure::Answer(200));
                };
                if let Some(seq) = value.seq {
                    self.cursor.since = seq;
                }
                if self.shared.target.kind == Kind::Nchan {
                    self.cursor.last_event_id = event.id;
                }
                if let Some(info) = value.info {
                    self.deliver(&info, at);
                }
                self.failures = 0;
                Ok(())
            }
            Some("gone") => Err(Failure::Gone),
            // CallHome's "ready", and whatever else a server announces.
            Some(_) => Ok(()),
        }
    }

    /// Counts a value received at `at`, and records it if deliveries are wanted.
    fn deliver(&mut self, info: &str, at: u64) {
        let stats = &self.shared.stats;
        match ids::parse_info(info) {
            Some((index, round)) if index == self.client.id_index => {
                if round <= self.last_round {
                    bump(&stats.duplicates);
                    return;
                }
                self.last_round = round;
                bump(&stats.deliveries);
                if let Some(records) = &self.shared.deliveries {
                    // The receiver goes away only when the worker is exiting.
                    let _ = records.send(Delivery(index, round, at));
                }
            }
            _ => {
                bump(&stats.wrong);
                let what = format!("{} received {info:?}", self.client.id);
                self.shared.note(Trouble::Wrong, &what);
            }
        }
    }

    async fn connect(&self) -> Result<TcpStream, Failure> {
        let connect = net::connect(self.shared.target.base.addr, self.client.source);
        match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(stream)) => Ok(stream),
            Ok(Err(e)) => Err(Failure::Connect(e)),
            Err(_) => Err(Failure::Connect(io::ErrorKind::TimedOut.into())),
        }
    }

    /// The client is waiting: count it and let the next one connect.
    fn mark_ready(&mut self) {
        if self.permit.take().is_some() {
            bump(&self.shared.stats.ready);
        }
    }

    /// Counts `failure`; says whether to give up. A client that never got to wait gives up
    /// at once (that is a connect error); one that was waiting retries a few times.
    fn give_up(&mut self, failure: &Failure) -> bool {
        let stats = &self.shared.stats;
        let (counter, trouble) = match failure {
            Failure::Connect(_) => (&stats.failed_connects, Trouble::Connect),
            Failure::Closed | Failure::Io(_) => (&stats.early_closes, Trouble::Close),
            Failure::Http(_)
            | Failure::Sse(_)
            | Failure::TooLarge
            | Failure::Answer(_)
            | Failure::Gone => (&stats.unexpected_answers, Trouble::Answer),
        };
        bump(counter);
        self.shared.note(trouble, failure);
        if self.permit.take().is_some() {
            bump(&stats.not_ready);
            return true;
        }
        self.failures += 1;
        self.failures > MAX_FAILURES
    }
}

/// Reads one whole answer into `buf`, with the time its last bytes arrived. `None`: the
/// connection closed before any byte of it.
async fn read_response(
    stream: &mut TcpStream,
    buf: &mut Vec<u8>,
) -> Result<Option<(Response, u64)>, Failure> {
    buf.clear();
    loop {
        let n = stream.read_buf(buf).await.map_err(Failure::Io)?;
        let at = clock::now_ns();
        if n == 0 {
            if buf.is_empty() {
                return Ok(None);
            }
            return match http::finish_at_close(buf)? {
                Some(response) => Ok(Some((response, at))),
                None => Err(Failure::Closed),
            };
        }
        if let Some((response, _)) = http::parse_response(buf)? {
            return Ok(Some((response, at)));
        }
        if buf.len() >= MAX_RESPONSE {
            return Err(Failure::TooLarge);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::net::SocketAddr;

    use clap::Parser as _;
    use tokio::net::TcpListener;
    use tokio::sync::Semaphore;

    use super::*;
    use crate::cli::Cli;

    /// A loopback server that answers every request with `answer`, or closes the connection
    /// without a byte when `answer` is empty. Returns its address and the requests it read.
    async fn serve(answer: &'static [u8]) -> (SocketAddr, Arc<AtomicU64>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind port 0");
        let addr = listener.local_addr().expect("bound");
        let requests = Arc::new(AtomicU64::new(0));
        let seen = Arc::clone(&requests);
        tokio::spawn(async move {
            while let Ok((mut stream, _)) = listener.accept().await {
                let seen = Arc::clone(&seen);
                tokio::spawn(async move {
                    let mut buf = vec![0; 4096];
                    // The client writes each small request whole: one read, one request.
                    while let Ok(n) = stream.read(&mut buf).await {
                        if n == 0 {
                            return;
                        }
                        seen.fetch_add(1, Ordering::Relaxed);
                        if answer.is_empty() || stream.write_all(answer).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        (addr, requests)
    }

    /// Runs one single-poll client against `answer`; its counts and the requests it sent.
    async fn single_poll_against(answer: &'static [u8]) -> (ClientCounts, u64) {
        let (addr, requests) = serve(answer).await;
        let base = format!("http://{addr}");
        let cli =
            Cli::try_parse_from(["callhome-bench", "drain", "--clients", "1", "--base", &base])
                .expect("valid flags");
        let target = Target::new(&cli.common).expect("a loopback base");
        let shared = Arc::new(Shared::new(target, Transport::Poll, None, true));
        let permit = Arc::new(Semaphore::new(1))
            .acquire_owned()
            .await
            .expect("a fresh semaphore is open");
        let client = Client {
            id_index: 0,
            id: "btest00-00000000".into(),
            watch: None,
            source: None,
        };
        tokio::time::timeout(
            Duration::from_secs(5),
            run(client, Arc::clone(&shared), permit),
        )
        .await
        .expect("a single poll ends by itself");
        (shared.stats.snapshot(), requests.load(Ordering::Relaxed))
    }

    #[tokio::test]
    async fn a_single_poll_ends_at_its_first_answer() {
        let (counts, requests) = single_poll_against(b"HTTP/1.1 204 No Content\r\n\r\n").await;
        assert_eq!(requests, 1, "no poll after the 204");
        assert_eq!((counts.ready, counts.repolls, counts.errors()), (1, 1, 0));
    }

    #[tokio::test]
    async fn a_cut_single_poll_is_counted_once_and_not_retried() {
        let (counts, requests) = single_poll_against(b"").await;
        assert_eq!(requests, 1, "no retry after the cut");
        assert_eq!(
            (counts.ready, counts.early_closes, counts.failed_connects),
            (1, 1, 0)
        );
    }
}
