//! A real Redis (Debian's `redis-server`) and Redis Sentinel (`redis-sentinel`) for the
//! cluster tests, each on a free loopback port in a temporary directory of its own, killed on
//! drop. Never the machine's shared `127.0.0.1:6379`.
//!
//! Each server runs from a config file in its directory (so Sentinel can `CONFIG REWRITE` a
//! promoted replica, and [`RedisServer::restart`] starts from what is in it then), with
//! `maxmemory-policy noeviction` and no RDB snapshots (`save ""`); persistence is the AOF,
//! when asked for. Everything a process writes goes to `redis.log` / `sentinel.log` in its
//! directory, printed when a test panics (or always with `TEST_LOG=1`).
//!
//! Commands go over a tiny RESP2 client of its own ([`RespConn`]): a fresh connection per
//! [`RedisServer::cmd`], straight to the server (never through a fault proxy), so it works
//! while the server is under load and tells a paused server by its timeout.
//!
//! When `redis-server` or `redis-sentinel` is missing, [`require_redis`] says so and the test
//! passes vacuously, except under `CI=true`, where that fails the run.
#![allow(dead_code)] // a toolkit for the cluster tests: each test takes what it needs

use std::fmt;
use std::io;
use std::net::SocketAddr;
use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;

use super::browser::free_port;

const REDIS_SERVER: &str = "/usr/bin/redis-server";
const REDIS_SENTINEL: &str = "/usr/bin/redis-sentinel";

/// How long a server may take to answer `PING` after it starts. Generous: CI is shared.
const PATIENCE: Duration = Duration::from_secs(10);

/// How long [`RedisServer::cmd`] and [`Sentinel::cmd`] wait for an answer before they fail.
pub const CMD_TIMEOUT: Duration = Duration::from_secs(5);

fn binary(var: &str, default: &str) -> Option<PathBuf> {
    let path = std::env::var_os(var).map_or_else(|| PathBuf::from(default), PathBuf::from);
    path.is_file().then_some(path)
}

fn redis_server_path() -> PathBuf {
    binary("REDIS_SERVER", REDIS_SERVER).expect("redis-server is installed (see require_redis)")
}

fn redis_sentinel_path() -> PathBuf {
    binary("REDIS_SENTINEL", REDIS_SENTINEL)
        .expect("redis-sentinel is installed (see require_redis)")
}

/// Whether `redis-server` and `redis-sentinel` are installed (paths overridable with
/// `REDIS_SERVER` and `REDIS_SENTINEL`). When not, says so on stderr and returns `false`, so
/// the test can return early, except under `CI=true`, where it panics.
///
/// ```ignore
/// if !require_redis() { return; }
/// ```
pub fn require_redis() -> bool {
    if binary("REDIS_SERVER", REDIS_SERVER).is_some()
        && binary("REDIS_SENTINEL", REDIS_SENTINEL).is_some()
    {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "CI=true but redis-server/redis-sentinel are missing: apt-get install redis-server redis-sentinel"
    );
    eprintln!(
        "SKIPPED: Redis test needs redis-server and redis-sentinel (apt-get install redis-server redis-sentinel)"
    );
    false
}

/// A fresh directory under the system's temporary directory, unique in this run.
fn temp_dir(kind: &str) -> PathBuf {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "callhome-{kind}-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Sends `signal` (`TERM`, `STOP`, ...) to `target` (a pid, or `-pgid` for a process group).
fn signal(target: &str, name: &str) -> bool {
    Command::new("kill")
        .args(["-s", name, "--", target])
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

// ---------------------------------------------------------------------------------------------
// RESP

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`
    Status(String),
    /// `-ERR ...` (the whole line, code included)
    Error(String),
    /// `:1`
    Int(i64),
    /// `$3\r\nfoo`
    Bulk(Vec<u8>),
    /// `$-1` or `*-1`
    Nil,
    /// `*2\r\n...`
    Array(Vec<Reply>),
}

impl Reply {
    /// The reply as `redis-cli` prints it when not on a terminal: strings as they are,
    /// integers in decimal, nil as an empty string, arrays one element per line.
    pub fn text(&self) -> String {
        match self {
            Self::Status(s) | Self::Error(s) => s.clone(),
            Self::Int(i) => i.to_string(),
            Self::Bulk(b) => String::from_utf8_lossy(b).into_owned(),
            Self::Nil => String::new(),
            Self::Array(items) => items.iter().map(Self::text).collect::<Vec<_>>().join("\n"),
        }
    }

    pub fn is_error(&self) -> bool {
        matches!(self, Self::Error(_))
    }
}

impl fmt::Display for Reply {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text())
    }
}

/// `args` as a RESP array of bulk strings.
pub fn encode(args: &[&str]) -> Vec<u8> {
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn bad(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("bad RESP: {what}"))
}

/// Parses one reply from the front of `buf`: `Ok(None)` when more bytes are needed, else the
/// reply and how many bytes it took.
pub fn parse(buf: &[u8]) -> io::Result<Option<(Reply, usize)>> {
    let Some(end) = buf.windows(2).position(|w| w == b"\r\n") else {
        return Ok(None);
    };
    let line = std::str::from_utf8(&buf[1..end]).map_err(|_| bad("line not UTF-8"))?;
    let after = end + 2;
    let number = || line.parse::<i64>().map_err(|_| bad(line));
    let reply = match buf.first() {
        Some(b'+') => (Reply::Status(line.to_owned()), after),
        Some(b'-') => (Reply::Error(line.to_owned()), after),
        Some(b':') => (Reply::Int(number()?), after),
        Some(b'$') => {
            let Ok(len) = usize::try_from(number()?) else {
                return Ok(Some((Reply::Nil, after)));
            };
            if buf.len() < after + len + 2 {
                return Ok(None);
            }
            (
                Reply::Bulk(buf[after..after + len].to_vec()),
                after + len + 2,
            )
        }
        Some(b'*') => {
            let Ok(count) = usize::try_from(number()?) else {
                return Ok(Some((Reply::Nil, after)));
            };
            let mut items = Vec::with_capacity(count.min(1024));
            let mut at = after;
            for _ in 0..count {
                let Some((item, used)) = parse(&buf[at..])? else {
                    return Ok(None);
                };
                items.push(item);
                at += used;
            }
            (Reply::Array(items), at)
        }
        _ => return Err(bad("unknown type byte")),
    };
    Ok(Some(reply))
}

/// A RESP2 connection, to a server directly or through a fault proxy. Its reads are cancel
/// safe: wrap them in `tokio::time::timeout` freely, nothing read is lost.
pub struct RespConn {
    stream: TcpStream,
    buf: Vec<u8>,
}

impl RespConn {
    pub async fn connect(addr: SocketAddr) -> io::Result<Self> {
        let stream = TcpStream::connect(addr).await?;
        // May fail on a connection already reset (a refusing proxy): the read says so.
        let _ = stream.set_nodelay(true);
        Ok(Self {
            stream,
            buf: Vec::new(),
        })
    }

    /// Sends one command, without waiting for its reply.
    pub async fn send(&mut self, args: &[&str]) -> io::Result<()> {
        self.send_raw(&encode(args)).await
    }

    /// Sends bytes as they are (for split or hand-made commands).
    pub async fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes).await
    }

    /// Reads the next reply (a subscriber's messages too). `UnexpectedEof` when the peer
    /// closed the connection.
    pub async fn read(&mut self) -> io::Result<Reply> {
        loop {
            if let Some((reply, used)) = parse(&self.buf)? {
                self.buf.drain(..used);
                return Ok(reply);
            }
            if self.stream.read_buf(&mut self.buf).await? == 0 {
                return Err(io::ErrorKind::UnexpectedEof.into());
            }
        }
    }

    /// [`RespConn::read`], failing with `TimedOut` after `timeout`.
    pub async fn read_timeout(&mut self, timeout: Duration) -> io::Result<Reply> {
        tokio::time::timeout(timeout, self.read())
            .await
            .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
    }

    /// Sends one command and reads its reply.
    pub async fn call(&mut self, args: &[&str]) -> io::Result<Reply> {
        self.send(args).await?;
        self.read().await
    }

    /// Whether the connection still looks open from this side, without waiting: no EOF and
    /// no reset seen. Bytes that happen to arrive are kept for the next read.
    pub fn is_open(&mut self) -> bool {
        let mut byte = [0u8; 512];
        match self.stream.try_read(&mut byte) {
            Ok(0) => false,
            Ok(n) => {
                self.buf.extend_from_slice(&byte[..n]);
                true
            }
            Err(e) => e.kind() == io::ErrorKind::WouldBlock,
        }
    }

    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }
}

/// One command on a fresh connection to `addr` (authenticated with `password` first), all
/// within `timeout`. Errors from Redis are `Ok(Reply::Error(..))`; a timeout is `TimedOut`.
pub async fn query(
    addr: SocketAddr,
    password: Option<&str>,
    args: &[&str],
    timeout: Duration,
) -> io::Result<Reply> {
    let work = async {
        let mut conn = RespConn::connect(addr).await?;
        if let Some(password) = password {
            let reply = conn.call(&["AUTH", password]).await?;
            if reply.is_error() {
                return Ok(reply);
            }
        }
        conn.call(args).await
    };
    tokio::time::timeout(timeout, work)
        .await
        .unwrap_or_else(|_| Err(io::ErrorKind::TimedOut.into()))
}

/// The `field:value` lines of an `INFO` answer, the value of `field`.
pub fn info_value(info: &str, field: &str) -> Option<String> {
    info.lines()
        .filter_map(|line| line.trim_end().split_once(':'))
        .find(|(name, _)| *name == field)
        .map(|(_, value)| value.to_owned())
}

// ---------------------------------------------------------------------------------------------
// redis-server

/// The AOF's `appendfsync` policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fsync {
    Always,
    EverySec,
    No,
}

impl Fsync {
    fn as_str(self) -> &'static str {
        match self {
            Self::Always => "always",
            Self::EverySec => "everysec",
            Self::No => "no",
        }
    }
}

/// How a [`RedisServer`] runs. The default: no persistence at all, no password, a master.
#[derive(Debug, Clone, Default)]
pub struct RedisOptions {
    /// `appendonly yes` with this `appendfsync`; `None`: `appendonly no` (a restart loses
    /// everything, as `save ""` is always set).
    pub aof: Option<Fsync>,
    /// `requirepass` (and `masterauth`, for a replica of a master with the same password).
    pub password: Option<String>,
    /// `replicaof 127.0.0.1 <port>`.
    pub replica_of: Option<u16>,
    /// More config lines, as they would be in `redis.conf` (`"maxmemory 10mb"`).
    pub extra: Vec<String>,
}

impl RedisOptions {
    #[must_use]
    pub fn aof(mut self, fsync: Fsync) -> Self {
        self.aof = Some(fsync);
        self
    }

    #[must_use]
    pub fn password(mut self, password: &str) -> Self {
        self.password = Some(password.to_owned());
        self
    }

    #[must_use]
    pub fn replica_of(mut self, master_port: u16) -> Self {
        self.replica_of = Some(master_port);
        self
    }

    #[must_use]
    pub fn config(mut self, line: &str) -> Self {
        self.extra.push(line.to_owned());
        self
    }

    fn config_file(&self, port: u16, dir: &Path) -> String {
        let mut lines = vec![
            format!("port {port}"),
            "bind 127.0.0.1".to_owned(),
            format!("dir {}", dir.display()),
            "daemonize no".to_owned(),
            "logfile \"\"".to_owned(),
            "save \"\"".to_owned(),
            "maxmemory-policy noeviction".to_owned(),
            // A master waits this long for lagging replicas on SIGTERM (default 10 s).
            "shutdown-timeout 2".to_owned(),
        ];
        match self.aof {
            Some(fsync) => {
                lines.push("appendonly yes".to_owned());
                lines.push(format!("appendfsync {}", fsync.as_str()));
            }
            None => lines.push("appendonly no".to_owned()),
        }
        if let Some(password) = &self.password {
            lines.push(format!("requirepass \"{password}\""));
            lines.push(format!("masterauth \"{password}\""));
        }
        if let Some(master) = self.replica_of {
            lines.push(format!("replicaof 127.0.0.1 {master}"));
        }
        lines.extend(self.extra.iter().cloned());
        lines.join("\n") + "\n"
    }
}

/// One `redis-server` on a free loopback port, in a temporary directory of its own (its
/// config, AOF and log), killed and removed on drop.
pub struct RedisServer {
    port: u16,
    dir: PathBuf,
    options: RedisOptions,
    child: Option<Child>,
    paused: bool,
}

impl RedisServer {
    /// Starts a server and waits until it answers `PING` (its AOF loaded). Panics (with its
    /// log) if it does not; call [`require_redis`] first.
    pub async fn start(options: RedisOptions) -> Self {
        let dir = temp_dir("redis");
        // The port was free a moment ago; should another process take it first, Redis says
        // so and exits, and a fresh port is tried.
        for _ in 0..3 {
            let port = free_port();
            std::fs::write(dir.join("redis.conf"), options.config_file(port, &dir)).unwrap();
            let _ = std::fs::remove_file(dir.join("redis.log"));
            let mut server = Self {
                port,
                dir: dir.clone(),
                options: options.clone(),
                child: None,
                paused: false,
            };
            server.spawn();
            match server.wait_ready().await {
                Ok(()) => return server,
                Err(log) if log.contains("Address already in use") => {
                    server.dir = PathBuf::new(); // keep the directory for the next try
                }
                Err(log) => panic!("redis-server did not start:\n{log}"),
            }
        }
        panic!("redis-server found no free port in 3 tries");
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("redis.log"))
            .unwrap();
        let child = Command::new(redis_server_path())
            .arg(self.dir.join("redis.conf"))
            .current_dir(&self.dir)
            // A group of its own: kill() and drop end any fork (AOF rewrite, replication)
            // with it, and nothing else.
            .process_group(0)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("redis-server starts");
        self.child = Some(child);
        self.paused = false;
    }

    /// Waits (bounded) until this process answers `PING` on its port; `Err` with the log if
    /// it exited. The answer must come from this process (`INFO server`'s `process_id`), not
    /// from another that took the port.
    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + PATIENCE;
        let pid = self.pid().to_string();
        loop {
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                self.child = None;
                return Err(format!("redis-server exited with {status}\n{}", self.log()));
            }
            let ping = self.query(&["PING"], Duration::from_secs(1)).await;
            if matches!(&ping, Ok(Reply::Status(s)) if s == "PONG") {
                let info = self
                    .query(&["INFO", "server"], Duration::from_secs(1))
                    .await;
                if let Ok(info) = info {
                    if info_value(&info.text(), "process_id").as_deref() == Some(&pid) {
                        return Ok(());
                    }
                    return Err(format!(
                        "another process answers on port {}: Address already in use",
                        self.port
                    ));
                }
            }
            assert!(
                Instant::now() < deadline,
                "redis-server did not answer PING on {} within {PATIENCE:?} (last: {ping:?})\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    /// `redis://127.0.0.1:<port>/`, or `redis://:<password>@127.0.0.1:<port>/`.
    pub fn url(&self) -> String {
        url_for(self.addr(), self.options.password.as_deref())
    }

    /// This server's URL (password included) with `addr` in place of its own: the server
    /// reached through a fault proxy.
    pub fn url_via(&self, addr: SocketAddr) -> String {
        url_for(addr, self.options.password.as_deref())
    }

    pub fn password(&self) -> Option<&str> {
        self.options.password.as_deref()
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn options(&self) -> &RedisOptions {
        &self.options
    }

    /// The running process's pid (a new one after [`RedisServer::restart`]). Panics when the
    /// server is stopped.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("redis-server is running").id()
    }

    /// Whether the process is alive (a paused one is).
    pub fn is_running(&mut self) -> bool {
        match &mut self.child {
            Some(child) => child.try_wait().unwrap().is_none(),
            None => false,
        }
    }

    /// Seconds of CPU (user + system) the process has used, from `/proc/<pid>/stat`, in
    /// steps of one clock tick (usually 10 ms).
    #[allow(clippy::cast_precision_loss)] // clock ticks: far below 2^52
    pub fn cpu_seconds(&self) -> f64 {
        cpu_ticks(self.pid()) as f64 / clock_ticks_per_second() as f64
    }

    /// SIGTERM (after SIGCONT if paused) and waits for the exit: with the AOF, everything
    /// acknowledged is on disk. The port and directory stay reserved for
    /// [`RedisServer::restart`].
    pub async fn stop(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if self.paused {
            signal(&child.id().to_string(), "CONT");
            self.paused = false;
        }
        signal(&child.id().to_string(), "TERM");
        let deadline = Instant::now() + PATIENCE;
        while child.try_wait().unwrap().is_none() {
            if Instant::now() > deadline {
                signal(&format!("-{}", child.id()), "KILL");
                let _ = child.wait();
                panic!(
                    "redis-server ignored SIGTERM for {PATIENCE:?}\n{}",
                    self.log()
                );
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Any fork of it (an AOF rewrite) has no reason to live on.
        signal(&format!("-{}", child.id()), "KILL");
    }

    /// SIGKILL, at once (paused or not): what `appendfsync` did not write is lost.
    pub fn kill(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        signal(&format!("-{}", child.id()), "KILL");
        let _ = child.wait();
        self.paused = false;
    }

    /// Stops the server if it runs (SIGTERM; [`RedisServer::kill`] first for a crash), then
    /// starts it again on the same port in the same directory, from its config file as it is
    /// now (Sentinel may have rewritten it), and waits until it answers `PING` with its AOF
    /// loaded. A new process: `run_id` changes.
    pub async fn restart(&mut self) {
        self.stop().await;
        self.spawn();
        if let Err(log) = self.wait_ready().await {
            panic!("redis-server did not restart on port {}:\n{log}", self.port);
        }
    }

    /// SIGSTOP: the process holds its connections and answers nothing until
    /// [`RedisServer::resume`].
    pub fn pause(&mut self) {
        assert!(signal(&self.pid().to_string(), "STOP"), "kill -STOP failed");
        self.paused = true;
    }

    /// SIGCONT.
    pub fn resume(&mut self) {
        assert!(signal(&self.pid().to_string(), "CONT"), "kill -CONT failed");
        self.paused = false;
    }

    /// One command on a fresh connection straight to the server (authenticated when it has
    /// a password), within `timeout`: `Ok(Reply::Error(..))` for an error from Redis.
    pub async fn query(&self, args: &[&str], timeout: Duration) -> io::Result<Reply> {
        query(self.addr(), self.password(), args, timeout).await
    }

    /// One command, its reply as text ([`Reply::text`]). Panics on an error reply or after
    /// [`CMD_TIMEOUT`].
    pub async fn cmd(&self, args: &[&str]) -> String {
        match self.query(args, CMD_TIMEOUT).await {
            Ok(Reply::Error(e)) => panic!("redis {args:?} on {}: {e}", self.port),
            Ok(reply) => reply.text(),
            Err(e) => panic!("redis {args:?} on {}: {e}", self.port),
        }
    }

    /// A connection of its own straight to the server, authenticated when it has a password.
    pub async fn connect(&self) -> RespConn {
        let mut conn = RespConn::connect(self.addr()).await.expect("redis accepts");
        if let Some(password) = self.password() {
            let reply = conn.call(&["AUTH", password]).await.unwrap();
            assert_eq!(reply, Reply::Status("OK".into()), "AUTH");
        }
        conn
    }

    /// One field of `INFO <section>` (`info_field("server", "run_id")`).
    pub async fn info_field(&self, section: &str, field: &str) -> Option<String> {
        info_value(&self.cmd(&["INFO", section]).await, field)
    }

    /// Waits (bounded) until this replica's link to its master is up and the initial sync is
    /// done.
    pub async fn wait_synced(&self) {
        let deadline = Instant::now() + PATIENCE;
        loop {
            let info = self.cmd(&["INFO", "replication"]).await;
            if info_value(&info, "master_link_status").as_deref() == Some("up")
                && info_value(&info, "master_sync_in_progress").as_deref() == Some("0")
            {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "replica on {} did not sync within {PATIENCE:?}:\n{info}\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Everything the process wrote (all runs of it).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("redis.log")).unwrap_or_default()
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&format!("-{}", child.id()), "KILL");
            let _ = child.wait();
        }
        if self.dir.as_os_str().is_empty() {
            return;
        }
        if std::thread::panicking() || std::env::var_os("TEST_LOG").is_some() {
            eprintln!("redis-server on {} log:\n{}", self.port, self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn url_for(addr: SocketAddr, password: Option<&str>) -> String {
    let mut url = url::Url::parse(&format!("redis://{addr}/")).unwrap();
    if let Some(password) = password {
        url.set_password(Some(password)).unwrap();
    }
    url.to_string()
}

fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).expect("/proc/<pid>/stat");
    // The command name is in parentheses and may hold spaces: count fields after the last
    // ')'. Then: state(3) ... utime(14) stime(15), so utime is the 12th after it.
    let rest = &stat[stat.rfind(')').expect("a comm field") + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let field = |i: usize| fields[i].parse::<u64>().expect("a number of ticks");
    field(11) + field(12)
}

fn clock_ticks_per_second() -> u64 {
    static TICKS: OnceLock<u64> = OnceLock::new();
    *TICKS.get_or_init(|| {
        Command::new("getconf")
            .arg("CLK_TCK")
            .output()
            .ok()
            .and_then(|out| String::from_utf8(out.stdout).ok())
            .and_then(|text| text.trim().parse().ok())
            .unwrap_or(100)
    })
}

// ---------------------------------------------------------------------------------------------
// redis-sentinel

/// One `redis-sentinel` on a free loopback port watching one master, in a temporary directory
/// of its own (its config, which it rewrites, and its log), killed and removed on drop.
///
/// `down-after-milliseconds 1000` and `failover-timeout 3000`, so a dead master is failed
/// over within seconds.
pub struct Sentinel {
    port: u16,
    dir: PathBuf,
    master_name: String,
    child: Child,
}

impl Sentinel {
    /// A Sentinel watching the master on `127.0.0.1:master_port` as `master_name`, needing
    /// `quorum` Sentinels to agree it is down; answering once this returns.
    pub async fn start(master_port: u16, master_name: &str, quorum: u32) -> Self {
        Self::start_auth(master_port, master_name, quorum, None).await
    }

    /// [`Sentinel::start`] for a master (and replicas) with a password.
    pub async fn start_auth(
        master_port: u16,
        master_name: &str,
        quorum: u32,
        password: Option<&str>,
    ) -> Self {
        let dir = temp_dir("sentinel");
        for _ in 0..3 {
            let port = free_port();
            let mut config = vec![
                format!("port {port}"),
                "bind 127.0.0.1".to_owned(),
                format!("dir {}", dir.display()),
                "daemonize no".to_owned(),
                "logfile \"\"".to_owned(),
                "sentinel resolve-hostnames no".to_owned(),
                format!("sentinel monitor {master_name} 127.0.0.1 {master_port} {quorum}"),
                format!("sentinel down-after-milliseconds {master_name} 1000"),
                format!("sentinel failover-timeout {master_name} 3000"),
            ];
            if let Some(password) = password {
                config.push(format!("sentinel auth-pass {master_name} \"{password}\""));
            }
            std::fs::write(dir.join("sentinel.conf"), config.join("\n") + "\n").unwrap();
            let log = std::fs::File::create(dir.join("sentinel.log")).unwrap();
            let child = Command::new(redis_sentinel_path())
                .arg(dir.join("sentinel.conf"))
                .current_dir(&dir)
                .process_group(0)
                .stdin(Stdio::null())
                .stdout(log.try_clone().unwrap())
                .stderr(log)
                .spawn()
                .expect("redis-sentinel starts");
            let mut sentinel = Self {
                port,
                dir: dir.clone(),
                master_name: master_name.to_owned(),
                child,
            };
            match sentinel.wait_ready().await {
                Ok(()) => return sentinel,
                Err(log) if log.contains("Address already in use") => {
                    sentinel.dir = PathBuf::new(); // keep the directory for the next try
                }
                Err(log) => panic!("redis-sentinel did not start:\n{log}"),
            }
        }
        panic!("redis-sentinel found no free port in 3 tries");
    }

    async fn wait_ready(&mut self) -> Result<(), String> {
        let deadline = Instant::now() + PATIENCE;
        let pid = self.child.id().to_string();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!(
                    "redis-sentinel exited with {status}\n{}",
                    self.log()
                ));
            }
            let info = query(
                self.addr(),
                None,
                &["INFO", "server"],
                Duration::from_secs(1),
            )
            .await;
            if let Ok(Reply::Bulk(info)) = &info {
                let info = String::from_utf8_lossy(info);
                if info_value(&info, "process_id").as_deref() == Some(&pid) {
                    return Ok(());
                }
                return Err(format!(
                    "another process answers on port {}: Address already in use",
                    self.port
                ));
            }
            assert!(
                Instant::now() < deadline,
                "redis-sentinel did not answer on {} within {PATIENCE:?}\n{}",
                self.port,
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    pub fn addr(&self) -> SocketAddr {
        SocketAddr::from(([127, 0, 0, 1], self.port))
    }

    pub fn master_name(&self) -> &str {
        &self.master_name
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// One command to the Sentinel, its reply as text. Panics on an error reply or after
    /// [`CMD_TIMEOUT`].
    pub async fn cmd(&self, args: &[&str]) -> String {
        match self.query(args).await {
            Reply::Error(e) => panic!("sentinel {args:?}: {e}"),
            reply => reply.text(),
        }
    }

    /// One command to the Sentinel, its reply as it is (errors included). Panics after
    /// [`CMD_TIMEOUT`].
    pub async fn query(&self, args: &[&str]) -> Reply {
        query(self.addr(), None, args, CMD_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("sentinel {args:?}: {e}"))
    }

    /// Where this Sentinel says the master is now (`SENTINEL get-master-addr-by-name`).
    pub async fn master_addr(&self) -> SocketAddr {
        let reply = self
            .query(&["SENTINEL", "get-master-addr-by-name", &self.master_name])
            .await;
        let Reply::Array(parts) = &reply else {
            panic!("sentinel knows no master {}: {reply:?}", self.master_name);
        };
        let [ip, port] = &parts[..] else {
            panic!("get-master-addr-by-name: {reply:?}");
        };
        format!("{}:{}", ip.text(), port.text())
            .parse()
            .expect("an ip:port")
    }

    /// `SENTINEL FAILOVER <name>`: a forced failover, no agreement needed. Returns at once;
    /// see [`Sentinel::wait_master_change`]. Errors (`NOGOODSLAVE`, `INPROG`) come back as
    /// [`Reply::Error`].
    pub async fn failover(&self) -> Reply {
        self.query(&["SENTINEL", "FAILOVER", &self.master_name])
            .await
    }

    /// What the Sentinel knows of each replica (`SENTINEL REPLICAS <name>`), as field/value
    /// pairs: `ip`, `port`, `flags`, `master-link-status`, ...
    pub async fn replicas(&self) -> Vec<Vec<(String, String)>> {
        let reply = self
            .query(&["SENTINEL", "REPLICAS", &self.master_name])
            .await;
        let Reply::Array(replicas) = reply else {
            panic!("SENTINEL REPLICAS: {reply:?}");
        };
        replicas
            .iter()
            .map(|r| match r {
                Reply::Array(fields) => fields
                    .chunks(2)
                    .map(|kv| (kv[0].text(), kv.get(1).map(Reply::text).unwrap_or_default()))
                    .collect(),
                other => panic!("a replica: {other:?}"),
            })
            .collect()
    }

    /// Waits (bounded) until the Sentinel knows `n` replicas that it could promote: flags
    /// just `slave` and their link to the master `ok`. A failover asked for before that
    /// answers `NOGOODSLAVE`.
    pub async fn wait_for_replicas(&self, n: usize) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let replicas = self.replicas().await;
            let field = |r: &Vec<(String, String)>, name: &str| {
                r.iter()
                    .find(|(k, _)| k == name)
                    .map(|(_, v)| v.clone())
                    .unwrap_or_default()
            };
            let good = replicas
                .iter()
                .filter(|r| field(r, "flags") == "slave" && field(r, "master-link-status") == "ok")
                .count();
            if good >= n {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "sentinel saw {good} good replicas, not {n}: {replicas:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Waits (bounded by `patience`) until [`Sentinel::master_addr`] is no longer `old`;
    /// returns the new address and how long that took.
    pub async fn wait_master_change(
        &self,
        old: SocketAddr,
        patience: Duration,
    ) -> (SocketAddr, Duration) {
        let start = Instant::now();
        loop {
            let now = self.master_addr().await;
            if now != old {
                return (now, start.elapsed());
            }
            assert!(
                start.elapsed() < patience,
                "sentinel still names {old} as master after {patience:?}\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("sentinel.log")).unwrap_or_default()
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        signal(&format!("-{}", self.child.id()), "KILL");
        let _ = self.child.wait();
        if self.dir.as_os_str().is_empty() {
            return;
        }
        if std::thread::panicking() || std::env::var_os("TEST_LOG").is_some() {
            eprintln!("redis-sentinel on {} log:\n{}", self.port, self.log());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
