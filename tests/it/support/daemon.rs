//! The real `callhome` binary, started on a config file and port 0, killed on drop.
//!
//! Its snapshot (if the config has one) never goes into the repository: `start` points it at
//! a fresh temporary file, and the restart tests name their own.

use std::ffi::OsStr;
use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::time::Duration;

pub struct Daemon {
    pub addr: SocketAddr,
    child: Child,
    /// A snapshot directory this daemon made for itself, removed on drop.
    own_dir: Option<PathBuf>,
    /// Its own Redis, in a cluster-mode run where the environment names none.
    _redis: Option<super::engine::RedisProcess>,
}

impl Daemon {
    /// Starts the binary on `config`, listening on 127.0.0.1 port 0, with a snapshot file of
    /// its own in a temporary directory.
    pub fn start(config: &Path) -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "callhome-daemon-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let mut daemon = Self::start_on(config, "127.0.0.1:0", Some(&dir.join("state")), &[]);
        daemon.own_dir = Some(dir);
        daemon
    }

    /// Starts the binary on `config` and `listen`, with `snapshot` as its snapshot file (or
    /// the config's, when `None`) and `args` added, and waits for the line that announces the
    /// address (no sleeping and hoping).
    pub fn start_on(config: &Path, listen: &str, snapshot: Option<&Path>, args: &[&str]) -> Self {
        Self::start_wrapped(&[], config, listen, snapshot, args)
    }

    /// [`Daemon::start_on`], with the binary run by `wrapper` (a program and its arguments,
    /// the binary's path and arguments following them), which must end by `exec`ing it so
    /// that the child's PID is the daemon's.
    pub fn start_wrapped(
        wrapper: &[&OsStr],
        config: &Path,
        listen: &str,
        snapshot: Option<&Path>,
        args: &[&str],
    ) -> Self {
        let binary = OsStr::new(env!("CARGO_BIN_EXE_callhome"));
        let mut command = match wrapper.split_first() {
            Some((program, rest)) => {
                let mut command = Command::new(program);
                command.args(rest).arg(binary);
                command
            }
            None => Command::new(binary),
        };
        if let Some(snapshot) = snapshot {
            command.env("CALLHOME_STORE__SNAPSHOT_PATH", snapshot);
        }
        let redis = (super::engine::redis_engine()
            && std::env::var_os("CALLHOME_STORE__REDIS_URL").is_none())
        .then(super::engine::RedisProcess::start);
        if let Some(redis) = &redis {
            command.env("CALLHOME_STORE__REDIS_URL", redis.url());
        }
        let mut child = command
            .arg("--config")
            .arg(config)
            .args(["--listen", listen])
            .args(args)
            .env_remove("CALLHOME_LISTEN")
            .env_remove("CALLHOME_PUBLIC_URL")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the callhome binary starts");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut sent = false;
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("TEST_LOG").is_some() {
                    println!("daemon: {line}");
                }
                if !sent && let Some(rest) = announced(&line) {
                    let addr: SocketAddr = rest
                        .split_whitespace()
                        .next()
                        .and_then(|a| a.parse().ok())
                        .expect("an address follows");
                    tx.send(addr).unwrap();
                    sent = true;
                }
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the daemon announces its address");
        Self {
            addr,
            child,
            own_dir: None,
            _redis: redis,
        }
    }

    /// Sends SIGTERM and waits (bounded) for the process to exit; returns whether it exited
    /// successfully.
    pub fn terminate(&mut self) -> bool {
        self.send_sigterm();
        self.wait_exit()
    }

    /// Sends SIGTERM and returns at once.
    pub fn send_sigterm(&self) {
        self.send_signal("TERM");
    }

    /// Sends the signal named `name` (`TERM`, `HUP`, ...) and returns at once.
    pub fn send_signal(&self, name: &str) {
        let sent = Command::new("kill")
            .args(["-s", name, &self.child.id().to_string()])
            .status()
            .expect("kill runs");
        assert!(sent.success(), "kill -s {name} failed");
    }

    /// The daemon's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// True once the process has exited.
    pub fn has_exited(&mut self) -> bool {
        self.child.try_wait().unwrap().is_some()
    }

    /// Waits (bounded) for the process to exit; returns whether it exited successfully.
    pub fn wait_exit(&mut self) -> bool {
        for _ in 0..300 {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status.success();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("the daemon did not exit within 6 s of SIGTERM");
    }
}

/// What follows `listening on http://` (or `https://`) in a log line.
fn announced(line: &str) -> Option<&str> {
    let rest = line.split("listening on ").nth(1)?;
    rest.strip_prefix("http://")
        .or_else(|| rest.strip_prefix("https://"))
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if let Some(dir) = &self.own_dir {
            let _ = std::fs::remove_dir_all(dir);
        }
    }
}

/// Everything a daemon wrote to standard output, one entry per line, as it comes.
#[derive(Debug, Clone, Default)]
pub struct Output(std::sync::Arc<std::sync::Mutex<Vec<String>>>);

impl Output {
    /// The lines so far.
    pub fn lines(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Waits (bounded: 10 s) until a line satisfies `found`, and returns it.
    pub async fn wait_for(&self, what: &str, found: impl Fn(&str) -> bool) -> String {
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            if let Some(line) = self.lines().into_iter().find(|l| found(l)) {
                return line;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "no line {what} in:\n{}",
                self.lines().join("\n")
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Daemon {
    /// Starts the binary on `config` and 127.0.0.1 port 0 with `args` added and no snapshot
    /// but the config's, keeping every line it writes to standard output. The address is
    /// found in text and JSON log lines alike.
    pub fn start_recorded(config: &Path, args: &[&str]) -> (Self, Output) {
        let redis = (super::engine::redis_engine()
            && std::env::var_os("CALLHOME_STORE__REDIS_URL").is_none())
        .then(super::engine::RedisProcess::start);
        let mut command = Command::new(env!("CARGO_BIN_EXE_callhome"));
        if let Some(redis) = &redis {
            command.env("CALLHOME_STORE__REDIS_URL", redis.url());
        }
        let mut child = command
            .arg("--config")
            .arg(config)
            .args(["--listen", "127.0.0.1:0"])
            .args(args)
            .env_remove("CALLHOME_LISTEN")
            .env_remove("CALLHOME_PUBLIC_URL")
            .env_remove("CALLHOME_LOG")
            .env_remove("CALLHOME_STORE__SNAPSHOT_PATH")
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the callhome binary starts");
        let stdout = child.stdout.take().unwrap();
        let output = Output::default();
        let (tx, rx) = mpsc::channel();
        let lines = output.clone();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if std::env::var_os("TEST_LOG").is_some() {
                    println!("daemon: {line}");
                }
                if let Some(rest) = announced(&line) {
                    let addr: String = rest
                        .chars()
                        .take_while(|c| c.is_ascii_alphanumeric() || ".:[]".contains(*c))
                        .collect();
                    let _ = tx.send(addr.parse::<SocketAddr>().expect("an address follows"));
                }
                lines.0.lock().unwrap().push(line);
            }
        });
        let addr = rx
            .recv_timeout(Duration::from_secs(30))
            .expect("the daemon announces its address");
        let daemon = Self {
            addr,
            child,
            own_dir: None,
            _redis: redis,
        };
        (daemon, output)
    }
}
