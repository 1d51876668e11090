//! Which engine the suite's servers run on: `CALLHOME_STORE__BACKEND=redis` runs the whole
//! integration suite in cluster mode (the real binary reads the same variable), each server
//! on a `redis-server` of its own, so no two tests share state.
//!
//! Started synchronously (plain `std::process` and a blocking PING), because
//! [`TestServer::spawn`](super::TestServer::spawn) and [`Daemon`](super::Daemon) are not async.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

/// `store.command_timeout` of the suite's servers on the Redis engine.
pub const SUITE_COMMAND_TIMEOUT: Duration = Duration::from_secs(5);

/// True when this run's servers use the Redis engine.
pub fn redis_engine() -> bool {
    std::env::var("CALLHOME_STORE__BACKEND").is_ok_and(|v| v == "redis")
}

/// A `redis-server` on a free loopback port, killed (by its PID) and removed on drop.
pub struct RedisProcess {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl RedisProcess {
    /// Starts one and waits until it answers `PING`.
    pub fn start() -> Self {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "callhome-redis-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        for _ in 0..5 {
            let port = super::browser::free_port();
            let child = Command::new("redis-server")
                .args(["--port", &port.to_string(), "--bind", "127.0.0.1"])
                .args(["--save", "", "--appendonly", "no"])
                .args(["--maxmemory-policy", "noeviction"])
                .arg("--dir")
                .arg(&dir)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("redis-server starts (apt-get install redis-server)");
            let mut redis = Self {
                child,
                port,
                dir: dir.clone(),
            };
            if redis.answers(Duration::from_secs(5)) {
                return redis;
            }
            // Most likely another process took the port first: try another.
            let _ = redis.child.kill();
            let _ = redis.child.wait();
        }
        panic!("redis-server did not come up");
    }

    /// Its URL.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}/", self.port)
    }

    fn answers(&mut self, patience: Duration) -> bool {
        let until = Instant::now() + patience;
        while Instant::now() < until {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                return false;
            }
            if let Ok(mut stream) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = stream.set_read_timeout(Some(Duration::from_secs(1)));
                let mut reply = [0; 7];
                if stream.write_all(b"PING\r\n").is_ok()
                    && stream.read_exact(&mut reply).is_ok()
                    && &reply == b"+PONG\r\n"
                {
                    return true;
                }
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        false
    }
}

impl Drop for RedisProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// False (after saying why) in a cluster-mode run, for a test of what only the memory engine
/// has: snapshot files, their locks and their restore. With Redis the state is Redis's, and
/// tests/it/cluster.rs covers what replaces them (restarts, crashes, failover).
pub fn memory_engine_feature(what: &str) -> bool {
    if redis_engine() {
        eprintln!("memory engine only ({what}); this run uses the Redis engine");
        return false;
    }
    true
}
