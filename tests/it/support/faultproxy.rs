//! A fault-injecting TCP proxy for loopback, to put between CallHome nodes and Redis: it
//! relays every byte unchanged until told to reset, blackhole, delay or refuse connections,
//! or to cut only the connections that subscribed.
//!
//! Every accepted client connection gets a new upstream connection of its own. The controls
//! take effect at once on live connections and on new ones, and may be called from any thread
//! at any time. The proxy runs on a thread and runtime of its own, so it keeps relaying while
//! the test's runtime is busy or blocked, and its delays are real time even under tokio's
//! paused clock. Dropping it stops it; its connections are then closed (FIN) on both sides.
//!
//! What each fault looks like to the two ends:
//!
//! - [`FaultProxy::reset_all`]: every live connection is closed with `SO_LINGER` 0, so both
//!   the client and Redis see a TCP RST (`ECONNRESET`), not an orderly close.
//! - [`FaultProxy::blackhole`]: connections stay open and bytes in both directions are
//!   silently dropped (read and thrown away, as toxiproxy's `timeout` toxic does): nothing
//!   arrives, no error, no close. New connections are accepted but reach upstream only once the
//!   blackhole ends. Bytes dropped are gone for good: a connection that lived through a
//!   blackhole has lost commands or replies, so a client must treat it as broken (time out and
//!   reconnect), as it would after a real partition.
//! - [`FaultProxy::delay`]: every chunk, both directions, is held for the delay before it is
//!   passed on; order is kept and throughput is not limited (a round trip costs twice the
//!   delay).
//! - [`FaultProxy::refuse`]: new connections are accepted and at once reset: the client sees
//!   `ECONNRESET` (not `ECONNREFUSED`), at its first read or write, or already from its
//!   connect (tokio's `TcpStream::connect` checks `SO_ERROR`); live ones are left alone.
//! - [`FaultProxy::cut_subscribers`]: resets (as `reset_all`) only the connections whose
//!   client has sent `SUBSCRIBE`, `PSUBSCRIBE` or `SSUBSCRIBE`, found by following the RESP
//!   commands the client sends (any case, split across packets or not; a value that merely
//!   contains the word does not count).
//! - [`FaultProxy::silence_subscribers`]: the live subscriber connections (found as for
//!   `cut_subscribers`) stay open but drop every byte from then on, both directions, for the
//!   rest of their lives, as a blackhole does; every other connection, and every connection
//!   made later, is relayed as before. A subscription that died without a word while commands
//!   still work.
//!
//! When upstream refuses or resets, the client sees the same: a refused upstream connect
//! resets the client's connection, an upstream reset resets the client, an upstream close
//! closes the client's side.
#![allow(dead_code)] // a toolkit for the cluster tests: each test takes what it needs

use std::collections::HashMap;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// The faults in force; `Default` is a clean pass-through.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Faults {
    pub blackhole: bool,
    pub delay: Duration,
    pub refuse: bool,
}

/// A proxy on 127.0.0.1 (a port of its own) in front of `upstream`; stops when dropped.
pub struct FaultProxy {
    addr: SocketAddr,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    stop: Option<oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

struct Shared {
    faults: watch::Sender<Faults>,
    connections: Mutex<HashMap<u64, Connection>>,
    next_id: AtomicU64,
    accepted: AtomicU64,
    subscribers_seen: AtomicU64,
    resets: AtomicU64,
}

/// A live relayed connection, as the controls see it.
struct Connection {
    reset: CancellationToken,
    subscriber: Arc<AtomicBool>,
    /// Drops every byte from now on ([`FaultProxy::silence_subscribers`]).
    silenced: Arc<AtomicBool>,
}

impl FaultProxy {
    /// Starts relaying to `upstream` at once (connections queue in the backlog until the
    /// proxy's thread accepts them).
    pub fn start(upstream: SocketAddr) -> Self {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
        listener.set_nonblocking(true).unwrap();
        let addr = listener.local_addr().unwrap();
        let shared = Arc::new(Shared {
            faults: watch::Sender::new(Faults::default()),
            connections: Mutex::default(),
            next_id: AtomicU64::new(0),
            accepted: AtomicU64::new(0),
            subscribers_seen: AtomicU64::new(0),
            resets: AtomicU64::new(0),
        });
        let (stop, stopped) = oneshot::channel();
        let thread = std::thread::Builder::new()
            .name(format!("faultproxy-{}", addr.port()))
            .spawn({
                let shared = Arc::clone(&shared);
                move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .expect("a runtime for the proxy");
                    runtime.block_on(async move {
                        let listener = TcpListener::from_std(listener).unwrap();
                        tokio::select! {
                            _ = stopped => {}
                            () = accept_loop(listener, upstream, shared) => {}
                        }
                    });
                }
            })
            .expect("the proxy thread starts");
        Self {
            addr,
            upstream,
            shared,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    /// Where clients connect.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }

    pub fn upstream(&self) -> SocketAddr {
        self.upstream
    }

    /// The faults in force now.
    pub fn faults(&self) -> Faults {
        *self.shared.faults.borrow()
    }

    /// Ends every fault: no blackhole, no delay, no refusing. Connections already reset stay
    /// reset.
    pub fn pass(&self) {
        self.shared.faults.send_replace(Faults::default());
    }

    /// Resets every live connection (RST to the client and to upstream); returns how many.
    /// New connections are relayed as before.
    pub fn reset_all(&self) -> usize {
        self.reset_where(|_| true)
    }

    /// Resets only the live connections whose client has sent a (P|S)SUBSCRIBE; returns how
    /// many. The others (commands) are left alone.
    pub fn cut_subscribers(&self) -> usize {
        self.reset_where(|c| c.subscriber.load(Ordering::SeqCst))
    }

    /// Silences the live connections whose client has sent a (P|S)SUBSCRIBE: they stay open
    /// and drop every byte, both directions, from now on; returns how many. Other and later
    /// connections are relayed as before.
    pub fn silence_subscribers(&self) -> usize {
        let connections = self.shared.connections.lock().unwrap();
        let mut n = 0;
        for c in connections.values() {
            if c.subscriber.load(Ordering::SeqCst) {
                c.silenced.store(true, Ordering::SeqCst);
                n += 1;
            }
        }
        n
    }

    fn reset_where(&self, pick: impl Fn(&Connection) -> bool) -> usize {
        let mut connections = self.shared.connections.lock().unwrap();
        let mut n = 0;
        connections.retain(|_, c| {
            if pick(c) {
                c.reset.cancel();
                n += 1;
                false
            } else {
                true
            }
        });
        self.shared.resets.fetch_add(n as u64, Ordering::SeqCst);
        n
    }

    /// Keep connections open but drop every byte, both directions (see the module docs).
    pub fn blackhole(&self, on: bool) {
        self.shared.faults.send_modify(|f| f.blackhole = on);
    }

    /// Hold every chunk, both directions, this long (zero: no delay).
    pub fn delay(&self, delay: Duration) {
        self.shared.faults.send_modify(|f| f.delay = delay);
    }

    /// Reset new connections as soon as they are accepted.
    pub fn refuse(&self, on: bool) {
        self.shared.faults.send_modify(|f| f.refuse = on);
    }

    /// Connections accepted so far (refused ones included).
    pub fn accepted(&self) -> u64 {
        self.shared.accepted.load(Ordering::SeqCst)
    }

    /// Connections open now (neither closed nor reset).
    pub fn live(&self) -> usize {
        self.shared.connections.lock().unwrap().len()
    }

    /// Connections seen sending a (P|S)SUBSCRIBE so far, live or not.
    pub fn subscribers_seen(&self) -> u64 {
        self.shared.subscribers_seen.load(Ordering::SeqCst)
    }

    /// Live connections that have subscribed.
    pub fn live_subscribers(&self) -> usize {
        let connections = self.shared.connections.lock().unwrap();
        connections
            .values()
            .filter(|c| c.subscriber.load(Ordering::SeqCst))
            .count()
    }

    /// Connections reset by [`FaultProxy::reset_all`] and [`FaultProxy::cut_subscribers`]
    /// so far.
    pub fn resets(&self) -> u64 {
        self.shared.resets.load(Ordering::SeqCst)
    }

    /// Waits (bounded by `patience`) until `ready` holds for this proxy, e.g. until a node
    /// has opened its connections: `proxy.wait_until(|p| p.live_subscribers() >= 1, ..)`.
    pub async fn wait_until(&self, what: &str, patience: Duration, ready: impl Fn(&Self) -> bool) {
        let deadline = std::time::Instant::now() + patience;
        while !ready(self) {
            assert!(
                std::time::Instant::now() < deadline,
                "proxy {}: never {what} within {patience:?} (accepted {}, live {}, subscribers seen {})",
                self.addr,
                self.accepted(),
                self.live(),
                self.subscribers_seen()
            );
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn accept_loop(listener: TcpListener, upstream: SocketAddr, shared: Arc<Shared>) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            // Out of descriptors, or the like: try again shortly.
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.accepted.fetch_add(1, Ordering::SeqCst);
        if shared.faults.borrow().refuse {
            reset(&client);
            continue;
        }
        let id = shared.next_id.fetch_add(1, Ordering::SeqCst);
        let token = CancellationToken::new();
        let subscriber = Arc::new(AtomicBool::new(false));
        let silenced = Arc::new(AtomicBool::new(false));
        shared.connections.lock().unwrap().insert(
            id,
            Connection {
                reset: token.clone(),
                subscriber: Arc::clone(&subscriber),
                silenced: Arc::clone(&silenced),
            },
        );
        tokio::spawn(relay(
            client,
            upstream,
            Arc::clone(&shared),
            id,
            token,
            (subscriber, silenced),
        ));
    }
}

/// Closes with a TCP RST: `SO_LINGER` 0, then the caller drops the stream.
fn reset(stream: &TcpStream) {
    let _ = stream.set_zero_linger();
}

/// Takes a connection off the live list when its relay ends, however it ends.
struct Registered {
    shared: Arc<Shared>,
    id: u64,
}

impl Drop for Registered {
    fn drop(&mut self) {
        self.shared.connections.lock().unwrap().remove(&self.id);
    }
}

/// Marks a connection as a subscriber (once) when its client's bytes say so.
struct Sniff {
    sniffer: CommandSniffer,
    subscriber: Arc<AtomicBool>,
    shared: Arc<Shared>,
}

impl Sniff {
    fn feed(&mut self, bytes: &[u8]) {
        if self.sniffer.feed(bytes) && !self.subscriber.swap(true, Ordering::SeqCst) {
            self.shared.subscribers_seen.fetch_add(1, Ordering::SeqCst);
        }
    }
}

async fn relay(
    mut client: TcpStream,
    upstream: SocketAddr,
    shared: Arc<Shared>,
    id: u64,
    token: CancellationToken,
    (subscriber, silenced): (Arc<AtomicBool>, Arc<AtomicBool>),
) {
    let _registered = Registered {
        shared: Arc::clone(&shared),
        id,
    };
    let _ = client.set_nodelay(true);
    let mut sniff = Sniff {
        sniffer: CommandSniffer::default(),
        subscriber,
        shared: Arc::clone(&shared),
    };
    // Accepted during a blackhole: no upstream connection until it ends.
    let waited = tokio::select! {
        () = token.cancelled() => None,
        open = wait_out_blackhole(&mut client, &shared, &mut sniff) => Some(open),
    };
    match waited {
        None => return reset(&client),
        Some(false) => return, // the client went away
        Some(true) => {}
    }
    let server = tokio::select! {
        () = token.cancelled() => None,
        server = TcpStream::connect(upstream) => server.ok(),
    };
    let Some(mut server) = server else {
        return reset(&client); // as upstream did to us, or as the test asked
    };
    let _ = server.set_nodelay(true);
    let orderly = {
        let (client_read, client_write) = client.split();
        let (server_read, server_write) = server.split();
        let up = pump(
            client_read,
            server_write,
            &shared,
            &silenced,
            Some(&mut sniff),
        );
        let down = pump(server_read, client_write, &shared, &silenced, None);
        tokio::select! {
            () = token.cancelled() => false,
            both = async { tokio::try_join!(up, down) } => both.is_ok(),
        }
    };
    if !orderly {
        reset(&client);
        reset(&server);
    }
}

/// While a blackhole lasts, reads and drops what the client sends. `true` once the blackhole
/// is over, `false` if the client closed first.
async fn wait_out_blackhole(client: &mut TcpStream, shared: &Shared, sniff: &mut Sniff) -> bool {
    let mut faults = shared.faults.subscribe();
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        if !faults.borrow_and_update().blackhole {
            return true;
        }
        tokio::select! {
            changed = faults.changed() => {
                if changed.is_err() {
                    return false;
                }
            }
            read = client.read(&mut buf) => match read {
                Ok(0) | Err(_) => return false,
                Ok(n) => sniff.feed(&buf[..n]),
            },
        }
    }
}

/// Relays one direction until EOF (passed on as a write shutdown) or an error. A reader and
/// a writer joined by a queue of stamped chunks, so a delay holds each chunk without slowing
/// the stream down.
async fn pump(
    mut from: ReadHalf<'_>,
    mut to: WriteHalf<'_>,
    shared: &Shared,
    silenced: &AtomicBool,
    mut sniff: Option<&mut Sniff>,
) -> io::Result<()> {
    let (queue, mut queued) = mpsc::channel::<Option<(Instant, Vec<u8>)>>(256);
    let read = async {
        let mut buf = vec![0u8; 16 * 1024];
        loop {
            let n = from.read(&mut buf).await?;
            if n == 0 {
                let _ = queue.send(None).await;
                return Ok::<_, io::Error>(());
            }
            if let Some(sniff) = sniff.as_mut() {
                sniff.feed(&buf[..n]);
            }
            let faults = *shared.faults.borrow();
            if faults.blackhole || silenced.load(Ordering::SeqCst) {
                continue;
            }
            let due = Instant::now() + faults.delay;
            if queue.send(Some((due, buf[..n].to_vec()))).await.is_err() {
                return Ok(());
            }
        }
    };
    let write = async {
        while let Some(chunk) = queued.recv().await {
            let Some((due, bytes)) = chunk else {
                to.shutdown().await?;
                break;
            };
            tokio::time::sleep_until(due).await;
            if shared.faults.borrow().blackhole || silenced.load(Ordering::SeqCst) {
                continue;
            }
            to.write_all(&bytes).await?;
        }
        Ok(())
    };
    tokio::try_join!(read, write).map(|_| ())
}

/// Follows the commands a client sends, as RESP arrays of bulk strings (or inline commands),
/// to see their names without keeping their arguments.
#[derive(Debug, Default)]
struct CommandSniffer {
    /// The header line (`*3`, `$9`) or command name being read.
    line: Vec<u8>,
    /// Bulk strings still due in the current command.
    args_left: usize,
    /// The next bulk string is the command's name.
    name_next: bool,
    /// Reading the command's name, this long (its CRLF not counted).
    name_len: Option<usize>,
    /// Bytes of an argument (and its CRLF) still to pass over.
    skip: usize,
    /// The stream made no sense as RESP: stop looking.
    lost: bool,
}

/// Longest command name read; anything longer is not one of ours.
const LONGEST_NAME: usize = 32;
/// Longest header line (`*<n>`, `$<len>`) or inline command line.
const LONGEST_LINE: usize = 64 * 1024;

fn is_subscribe(name: &[u8]) -> bool {
    [&b"SUBSCRIBE"[..], b"PSUBSCRIBE", b"SSUBSCRIBE"]
        .iter()
        .any(|s| name.eq_ignore_ascii_case(s))
}

impl CommandSniffer {
    /// Takes the next bytes from the client; `true` if they hold (the end of) a subscribe
    /// command's name.
    fn feed(&mut self, mut data: &[u8]) -> bool {
        let mut found = false;
        while !data.is_empty() && !self.lost {
            if self.skip > 0 {
                let n = self.skip.min(data.len());
                self.skip -= n;
                data = &data[n..];
                continue;
            }
            if let Some(len) = self.name_len {
                let n = (len + 2 - self.line.len()).min(data.len());
                self.line.extend_from_slice(&data[..n]);
                data = &data[n..];
                if self.line.len() == len + 2 {
                    found |= is_subscribe(&self.line[..len]);
                    self.line.clear();
                    self.name_len = None;
                }
                continue;
            }
            let Some(end) = data.iter().position(|&b| b == b'\n') else {
                self.line.extend_from_slice(data);
                self.lost = self.line.len() > LONGEST_LINE;
                break;
            };
            self.line.extend_from_slice(&data[..=end]);
            data = &data[end + 1..];
            let mut line = std::mem::take(&mut self.line);
            line.pop(); // '\n'
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            found |= self.header(&line);
        }
        found
    }

    /// One complete line outside a bulk string.
    fn header(&mut self, line: &[u8]) -> bool {
        let number = |digits: &[u8]| {
            std::str::from_utf8(digits)
                .ok()
                .and_then(|d| d.parse::<i64>().ok())
        };
        if self.args_left == 0 {
            match line.first() {
                Some(b'*') => match number(&line[1..]) {
                    Some(n) => {
                        self.args_left = usize::try_from(n).unwrap_or(0);
                        self.name_next = true;
                    }
                    None => self.lost = true,
                },
                // An inline command (`PING\r\n`, as telnet sends): its first word.
                Some(_) => {
                    let name = line.split(u8::is_ascii_whitespace).find(|w| !w.is_empty());
                    return name.is_some_and(is_subscribe);
                }
                None => {} // an empty line: Redis skips it too
            }
            return false;
        }
        let (Some(b'$'), Some(len)) = (line.first(), number(line.get(1..).unwrap_or_default()))
        else {
            self.lost = true;
            return false;
        };
        let len = usize::try_from(len).unwrap_or(0);
        self.args_left -= 1;
        if std::mem::take(&mut self.name_next) && len <= LONGEST_NAME {
            self.name_len = Some(len);
        } else {
            self.skip = len + 2;
        }
        false
    }
}
