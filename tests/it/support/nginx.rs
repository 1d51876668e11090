//! A real nginx (Debian's package) running `deploy/nginx/callhome.conf` in front of a CallHome,
//! on a free loopback port, stopped on drop.
//!
//! Everything nginx writes (pid, logs, temporary files) goes to a temporary directory of its
//! own, and it runs as one process (`master_process off`), so the test can run as any user and
//! stop exactly what it started by its pid. When nginx is not installed the proxy tests say so
//! and pass vacuously, except under `CI=true`, where that fails (`.ci/run` installs it).

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use super::browser::free_port;

const NGINX: &str = "/usr/sbin/nginx";

/// The site config under test, as shipped.
pub const SITE: &str = include_str!("../../../deploy/nginx/callhome.conf");

/// How long nginx may take to listen before the test fails. Generous: CI is shared.
const PATIENCE: Duration = Duration::from_secs(10);

/// One nginx serving the site config, proxying to one CallHome.
pub struct Nginx {
    pub addr: SocketAddr,
    child: Child,
    dir: PathBuf,
}

impl Nginx {
    /// nginx in front of the CallHome at `upstream`, listening once this returns; `None` (with
    /// a note on stderr) when nginx is not installed and this is not CI.
    pub async fn start(upstream: SocketAddr) -> Option<Self> {
        Self::start_many(&[upstream]).await
    }

    /// nginx in front of every CallHome in `upstreams` (one `server` line each in the
    /// `upstream callhome` block, nginx's default round robin, no sticky sessions), as
    /// [`Nginx::start`].
    pub async fn start_many(upstreams: &[SocketAddr]) -> Option<Self> {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let path = std::env::var_os("NGINX").map_or_else(|| PathBuf::from(NGINX), PathBuf::from);
        if !path.is_file() {
            assert!(
                std::env::var("CI").as_deref() != Ok("true"),
                "CI=true but nginx is missing at {}: apt-get install nginx",
                path.display()
            );
            eprintln!("SKIPPED: proxy test needs nginx, not installed (apt-get install nginx)");
            return None;
        }
        let dir = std::env::temp_dir().join(format!(
            "callhome-nginx-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        // The port was free a moment ago; should another process take it first, nginx says
        // so and exits (its drop removes the directory), and a fresh port is tried.
        for _ in 0..3 {
            let addr = SocketAddr::from(([127, 0, 0, 1], free_port()));
            let site = site_config(addr, upstreams);
            let mut nginx = Self::spawn(&path, &dir, addr, &site);
            match nginx.wait_listening().await {
                Ok(()) => return Some(nginx),
                Err(log) if log.contains("Address already in use") => {}
                Err(log) => panic!("nginx did not start:\n{log}"),
            }
        }
        panic!("nginx found no free port in 3 tries");
    }

    /// Starts nginx on `site` in `dir` (made here), listening on `addr`.
    fn spawn(nginx: &Path, dir: &Path, addr: SocketAddr, site: &str) -> Self {
        std::fs::create_dir_all(dir).unwrap();
        std::fs::write(dir.join("callhome.conf"), site).unwrap();
        std::fs::write(dir.join("nginx.conf"), main_config(dir)).unwrap();
        let stderr = std::fs::File::create(dir.join("stderr.log")).unwrap();
        let child = Command::new(nginx)
            .arg("-p")
            .arg(dir)
            .arg("-c")
            .arg(dir.join("nginx.conf"))
            // Start-up messages go here too, not to the compiled-in log path.
            .arg("-e")
            .arg(dir.join("error.log"))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr)
            .spawn()
            .expect("nginx starts");
        Self {
            addr,
            child,
            dir: dir.to_owned(),
        }
    }

    /// Waits (bounded) until nginx accepts connections; `Err` with its logs if it exited.
    ///
    /// A connection alone could reach another process that took the port; nginx writes its
    /// pid file only once it has bound its listening socket, so both together mean it is ours.
    async fn wait_listening(&mut self) -> Result<(), String> {
        let deadline = tokio::time::Instant::now() + PATIENCE;
        let pid = self.child.id().to_string();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return Err(format!("nginx exited with {status}\n{}", self.logs()));
            }
            let written = std::fs::read_to_string(self.dir.join("nginx.pid"))
                .is_ok_and(|text| text.trim() == pid);
            if written && tokio::net::TcpStream::connect(self.addr).await.is_ok() {
                return Ok(());
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "nginx did not listen on {} within {PATIENCE:?}\n{}",
                self.addr,
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// nginx's error log and stderr, for failure messages.
    pub fn logs(&self) -> String {
        let read = |name: &str| std::fs::read_to_string(self.dir.join(name)).unwrap_or_default();
        format!("{}{}", read("stderr.log"), read("error.log"))
    }
}

impl Drop for Nginx {
    fn drop(&mut self) {
        // One process (master_process off): killing it by its pid stops all of this nginx.
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::env::var_os("TEST_LOG").is_some() {
            eprintln!("nginx logs:\n{}", self.logs());
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The shipped site config with its two documented placeholder lines replaced: the upstream
/// server and the listen port. Fails if either is not in the file exactly once, so the file
/// cannot drift away from what this test runs.
///
/// The upstream placeholder becomes one `server` line per address of `upstreams`, in order.
pub fn site_config(listen: SocketAddr, upstreams: &[SocketAddr]) -> String {
    assert!(!upstreams.is_empty(), "nginx needs at least one upstream");
    let indent = SITE
        .lines()
        .find(|l| l.trim() == "server 127.0.0.1:8080;")
        .map_or("", |l| &l[..l.len() - l.trim_start().len()]);
    let servers = upstreams
        .iter()
        .map(|u| format!("server {u};"))
        .collect::<Vec<_>>()
        .join(&format!("\n{indent}"));
    let placeholders = [
        ("server 127.0.0.1:8080;", servers),
        ("listen 80;", format!("listen {listen};")),
    ];
    for (placeholder, _) in &placeholders {
        let lines = SITE.lines().filter(|l| l.trim() == *placeholder).count();
        assert_eq!(
            lines, 1,
            "deploy/nginx/callhome.conf must have the line {placeholder:?} exactly once"
        );
    }
    let mut site = String::with_capacity(SITE.len());
    for line in SITE.lines() {
        match placeholders.iter().find(|(p, _)| line.trim() == *p) {
            Some((_, value)) => site.push_str(value),
            None => site.push_str(line),
        }
        site.push('\n');
    }
    site
}

/// The main config around the site: everything in `dir`, one process in the foreground.
///
/// Its `http` block is deliberately unfriendly, like many an operator's nginx.conf: gzip for
/// every type, and CallHome's `X-Accel-Buffering: no` ignored. With both, an event stream is
/// held back unless the site file itself turns gzip or buffering off for it.
fn main_config(dir: &Path) -> String {
    let dir = dir.display();
    format!(
        "daemon off;
master_process off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;

events {{
    worker_connections 256;
}}

http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;

    gzip on;
    gzip_types *;
    gzip_min_length 1;
    proxy_ignore_headers X-Accel-Buffering;

    include {dir}/callhome.conf;
}}
"
    )
}
