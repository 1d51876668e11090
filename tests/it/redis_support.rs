//! The Redis test support itself: a real `redis-server` (and `redis-sentinel`) started on a
//! free port does what `support::redis` says, and the fault proxy in front of it does to real
//! connections what `support::faultproxy` says. The cluster tests rely on both, so each
//! fault is checked here for its effect on the wire, not just that the call returns.

use std::io::ErrorKind;
use std::time::{Duration, Instant};

use crate::support::faultproxy::FaultProxy;
use crate::support::redis::{
    Fsync, RedisOptions, RedisServer, Reply, RespConn, Sentinel, require_redis,
};

/// A wait that must run into its timeout: long enough for a relayed reply to have arrived
/// many times over on loopback.
const SILENCE: Duration = Duration::from_millis(400);

fn status(s: &str) -> Reply {
    Reply::Status(s.to_owned())
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(s.as_bytes().to_vec())
}

/// What a read on a connection the proxy reset gives: a reset, not an orderly close.
async fn assert_reset(conn: &mut RespConn, what: &str) {
    match conn.read_timeout(Duration::from_secs(2)).await {
        Err(e) if e.kind() == ErrorKind::ConnectionReset => {}
        other => panic!("{what}: expected ECONNRESET, got {other:?}"),
    }
}

/// A connection the proxy resets as soon as it is accepted: the reset may show at the
/// connect itself (tokio checks `SO_ERROR` once connected) or at the first read.
async fn assert_reset_at_once(addr: std::net::SocketAddr, what: &str) {
    match RespConn::connect(addr).await {
        Ok(mut conn) => assert_reset(&mut conn, what).await,
        Err(e) => assert_eq!(e.kind(), ErrorKind::ConnectionReset, "{what}: {e}"),
    }
}

/// Waits (bounded) until `INFO clients` on `redis` counts `n` clients, the one asking
/// included.
async fn wait_connected_clients(redis: &RedisServer, n: usize) {
    let deadline = Instant::now() + Duration::from_secs(3);
    loop {
        let now = redis.info_field("clients", "connected_clients").await;
        if now == Some(n.to_string()) {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "redis counts {now:?} clients, not {n}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn the_proxy_relays_commands_and_big_values_unchanged() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    assert_eq!(redis.cmd(&["PING"]).await, "PONG");
    assert_eq!(
        redis.cmd(&["CONFIG", "GET", "maxmemory-policy"]).await,
        "maxmemory-policy\nnoeviction"
    );
    assert_eq!(redis.cmd(&["CONFIG", "GET", "save"]).await, "save\n");
    assert_eq!(redis.url(), format!("redis://127.0.0.1:{}/", redis.port()));
    let proxy = FaultProxy::start(redis.addr());
    let mut conn = RespConn::connect(proxy.addr()).await.unwrap();
    assert_eq!(conn.call(&["PING"]).await.unwrap(), status("PONG"));
    // Far more than one read's worth each way, and pipelined.
    let big: String = (0..300_000u32)
        .map(|i| char::from_digit(i % 36, 36).unwrap())
        .collect();
    conn.send(&["SET", "big", &big]).await.unwrap();
    conn.send(&["GET", "big"]).await.unwrap();
    assert_eq!(conn.read().await.unwrap(), status("OK"));
    assert_eq!(conn.read().await.unwrap(), bulk(&big));
    assert_eq!(redis.cmd(&["STRLEN", "big"]).await, "300000");
    assert_eq!((proxy.accepted(), proxy.live()), (1, 1));
    drop(conn);
    proxy
        .wait_until("no live connection", Duration::from_secs(2), |p| {
            p.live() == 0
        })
        .await;
    wait_connected_clients(&redis, 1).await;
}

#[tokio::test]
async fn blackhole_drops_bytes_both_ways_and_keeps_connections_open() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let proxy = FaultProxy::start(redis.addr());
    let mut old = RespConn::connect(proxy.addr()).await.unwrap();
    assert_eq!(old.call(&["PING"]).await.unwrap(), status("PONG"));

    proxy.blackhole(true);
    old.send(&["SET", "dropped", "1"]).await.unwrap();
    let read = old.read_timeout(SILENCE).await;
    assert_eq!(read.unwrap_err().kind(), ErrorKind::TimedOut);
    assert!(old.is_open(), "a blackhole keeps the connection open");
    // A new connection is accepted, and gets nothing either.
    let mut new = RespConn::connect(proxy.addr()).await.unwrap();
    new.send(&["PING"]).await.unwrap();
    let read = new.read_timeout(SILENCE).await;
    assert_eq!(read.unwrap_err().kind(), ErrorKind::TimedOut);
    assert!(new.is_open());
    assert_eq!((proxy.accepted(), proxy.live()), (2, 2));
    // Redis never saw the command (dropped, not queued), nor the new connection.
    assert_eq!(redis.cmd(&["EXISTS", "dropped"]).await, "0");
    wait_connected_clients(&redis, 2).await;

    proxy.blackhole(false);
    // The dropped command is gone for good: the first answer is to the next command.
    assert_eq!(old.call(&["ECHO", "after"]).await.unwrap(), bulk("after"));
    assert_eq!(new.call(&["ECHO", "new"]).await.unwrap(), bulk("new"));
    assert_eq!(redis.cmd(&["EXISTS", "dropped"]).await, "0");
}

#[tokio::test]
async fn delay_holds_every_chunk_both_ways_in_order() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let proxy = FaultProxy::start(redis.addr());
    let mut conn = RespConn::connect(proxy.addr()).await.unwrap();
    let started = Instant::now();
    conn.call(&["PING"]).await.unwrap();
    let plain = started.elapsed();

    let delay = Duration::from_millis(150);
    proxy.delay(delay);
    let started = Instant::now();
    assert_eq!(conn.call(&["PING"]).await.unwrap(), status("PONG"));
    let delayed = started.elapsed();
    eprintln!("round trip through the proxy: {plain:?} plain, {delayed:?} with {delay:?} each way");
    assert!(delayed >= 2 * delay, "{delayed:?} < 2 x {delay:?}");
    assert!(delayed < 2 * delay + Duration::from_secs(1), "{delayed:?}");

    // Commands sent in separate writes are answered in order, and the delay does not add up
    // per chunk: fifty chunks in flight at once take about one round trip, not fifty.
    let started = Instant::now();
    for i in 0..50 {
        conn.send(&["ECHO", &i.to_string()]).await.unwrap();
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    for i in 0..50 {
        assert_eq!(conn.read().await.unwrap(), bulk(&i.to_string()));
    }
    let pipelined = started.elapsed();
    assert!(
        pipelined < 2 * delay + Duration::from_secs(1),
        "{pipelined:?}"
    );

    proxy.pass();
    let started = Instant::now();
    conn.call(&["PING"]).await.unwrap();
    assert!(started.elapsed() < delay, "pass() ends the delay");
}

#[tokio::test]
async fn reset_all_resets_both_sides_and_new_connections_work() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let proxy = FaultProxy::start(redis.addr());
    let mut a = RespConn::connect(proxy.addr()).await.unwrap();
    let mut b = RespConn::connect(proxy.addr()).await.unwrap();
    assert_eq!(a.call(&["PING"]).await.unwrap(), status("PONG"));
    assert_eq!(b.call(&["PING"]).await.unwrap(), status("PONG"));
    wait_connected_clients(&redis, 3).await;

    assert_eq!(proxy.reset_all(), 2);
    assert_eq!(proxy.live(), 0);
    assert_reset(&mut a, "client a").await;
    assert_reset(&mut b, "client b").await;
    // Redis dropped its side too.
    wait_connected_clients(&redis, 1).await;

    let mut c = RespConn::connect(proxy.addr()).await.unwrap();
    assert_eq!(c.call(&["PING"]).await.unwrap(), status("PONG"));
    assert_eq!((proxy.accepted(), proxy.live(), proxy.resets()), (3, 1, 2));
}

#[tokio::test]
async fn cut_subscribers_resets_only_connections_that_subscribed() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let proxy = FaultProxy::start(redis.addr());

    let mut sub = RespConn::connect(proxy.addr()).await.unwrap();
    let reply = sub.call(&["SUBSCRIBE", "news"]).await.unwrap();
    assert_eq!(reply.text(), "subscribe\nnews\n1");
    // Lower case, and split across packets in the middle of its length and its name.
    let mut psub = RespConn::connect(proxy.addr()).await.unwrap();
    for piece in ["*2\r", "\n$1", "0\r\npsub", "scribe\r\n$2\r\nn*\r\n"] {
        psub.send_raw(piece.as_bytes()).await.unwrap();
        tokio::time::sleep(Duration::from_millis(30)).await;
    }
    assert_eq!(psub.read().await.unwrap().text(), "psubscribe\nn*\n1");
    // Commands only, one of them carrying the very bytes of a SUBSCRIBE as its value.
    let mut cmd = RespConn::connect(proxy.addr()).await.unwrap();
    let lookalike = "*2\r\n$9\r\nSUBSCRIBE\r\n$4\r\nnews\r\n";
    let reply = cmd.call(&["SET", "SUBSCRIBE", lookalike]).await.unwrap();
    assert_eq!(reply, status("OK"));
    assert_eq!(
        cmd.call(&["GET", "SUBSCRIBE"]).await.unwrap(),
        bulk(lookalike)
    );

    assert_eq!(proxy.subscribers_seen(), 2);
    assert_eq!((proxy.live(), proxy.live_subscribers()), (3, 2));
    assert_eq!(redis.cmd(&["PUBLISH", "news", "x"]).await, "2");
    assert_eq!(sub.read().await.unwrap().text(), "message\nnews\nx");
    assert_eq!(psub.read().await.unwrap().text(), "pmessage\nn*\nnews\nx");

    assert_eq!(proxy.cut_subscribers(), 2);
    assert_reset(&mut sub, "SUBSCRIBE connection").await;
    assert_reset(&mut psub, "PSUBSCRIBE connection").await;
    assert!(cmd.is_open());
    assert_eq!(
        cmd.call(&["GET", "SUBSCRIBE"]).await.unwrap(),
        bulk(lookalike)
    );
    assert_eq!((proxy.live(), proxy.live_subscribers()), (1, 0));
    // Redis lost both subscribers; the command connection is still its client.
    wait_connected_clients(&redis, 2).await;
    assert_eq!(redis.cmd(&["PUBLISH", "news", "y"]).await, "0");
}

#[tokio::test]
async fn refuse_resets_new_connections_and_leaves_live_ones() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default()).await;
    let proxy = FaultProxy::start(redis.addr());
    let mut live = RespConn::connect(proxy.addr()).await.unwrap();
    assert_eq!(live.call(&["PING"]).await.unwrap(), status("PONG"));
    proxy.refuse(true);
    for _ in 0..5 {
        assert_reset_at_once(proxy.addr(), "a connection made while refusing").await;
    }
    assert_eq!(live.call(&["PING"]).await.unwrap(), status("PONG"));
    proxy.refuse(false);
    let mut again = RespConn::connect(proxy.addr()).await.unwrap();
    assert_eq!(again.call(&["PING"]).await.unwrap(), status("PONG"));
    assert_eq!((proxy.accepted(), proxy.live()), (7, 2));
}

#[tokio::test]
async fn the_proxy_passes_on_a_stopped_redis_and_its_return() {
    if !require_redis() {
        return;
    }
    let mut redis = RedisServer::start(RedisOptions::default()).await;
    let proxy = FaultProxy::start(redis.addr());
    let mut conn = RespConn::connect(proxy.addr()).await.unwrap();
    assert_eq!(conn.call(&["PING"]).await.unwrap(), status("PONG"));
    redis.stop().await;
    assert!(!redis.is_running());
    // Redis closed its side (orderly), and the proxy passed that on.
    let closed = conn.read_timeout(Duration::from_secs(2)).await;
    assert_eq!(closed.unwrap_err().kind(), ErrorKind::UnexpectedEof);
    // Upstream refuses: so does the proxy, with a reset.
    assert_reset_at_once(proxy.addr(), "a connection while Redis is down").await;
    redis.restart().await;
    let mut back = RespConn::connect(proxy.addr()).await.unwrap();
    assert_eq!(back.call(&["PING"]).await.unwrap(), status("PONG"));
}

#[tokio::test]
async fn restart_with_the_aof_keeps_keys_and_is_a_new_process() {
    if !require_redis() {
        return;
    }
    let mut redis = RedisServer::start(RedisOptions::default().aof(Fsync::Always)).await;
    assert_eq!(
        redis
            .info_field("persistence", "aof_enabled")
            .await
            .as_deref(),
        Some("1")
    );
    let port = redis.port();
    redis.cmd(&["SET", "kept", "1"]).await;
    let first = redis.info_field("server", "run_id").await.unwrap();
    let pid = redis.pid();

    let started = Instant::now();
    redis.restart().await;
    eprintln!(
        "redis restart (SIGTERM, start, AOF loaded): {:?}",
        started.elapsed()
    );
    assert_eq!(redis.port(), port);
    assert_ne!(redis.pid(), pid);
    let second = redis.info_field("server", "run_id").await.unwrap();
    assert_ne!(first, second, "run_id changes on restart");
    assert_eq!(redis.cmd(&["GET", "kept"]).await, "1");

    // A crash: with appendfsync always, an acknowledged write survives SIGKILL.
    redis.cmd(&["SET", "crash", "2"]).await;
    redis.kill();
    assert!(!redis.is_running());
    redis.restart().await;
    assert_eq!(redis.cmd(&["MGET", "kept", "crash"]).await, "1\n2");
    assert_ne!(redis.info_field("server", "run_id").await.unwrap(), second);
}

#[tokio::test]
async fn restart_without_persistence_loses_everything() {
    if !require_redis() {
        return;
    }
    let mut redis = RedisServer::start(RedisOptions::default()).await;
    assert_eq!(
        redis
            .info_field("persistence", "aof_enabled")
            .await
            .as_deref(),
        Some("0")
    );
    redis.cmd(&["SET", "lost", "1"]).await;
    redis.restart().await;
    assert_eq!(redis.cmd(&["EXISTS", "lost"]).await, "0");
    assert_eq!(redis.cmd(&["DBSIZE"]).await, "0");
}

#[tokio::test]
async fn pause_silences_the_server_and_cpu_time_counts_its_work() {
    if !require_redis() {
        return;
    }
    let mut redis = RedisServer::start(RedisOptions::default().aof(Fsync::EverySec)).await;
    let before = redis.cpu_seconds();
    // About 50 M steps of Lua: well over a clock tick of CPU.
    let script = "local i = 0 while i < 50000000 do i = i + 1 end return i";
    assert_eq!(redis.cmd(&["EVAL", script, "0"]).await, "50000000");
    let after = redis.cpu_seconds();
    eprintln!("redis CPU for 50 M Lua steps: {:.2} s", after - before);
    assert!(after - before >= 0.05, "{before} -> {after}");

    redis.pause();
    let silent = redis.query(&["PING"], SILENCE).await;
    assert_eq!(silent.unwrap_err().kind(), ErrorKind::TimedOut);
    assert!(redis.is_running(), "a paused server is alive");
    redis.resume();
    assert_eq!(redis.cmd(&["PING"]).await, "PONG");

    // stop() works on a paused server too.
    redis.pause();
    let started = Instant::now();
    redis.stop().await;
    assert!(!redis.is_running());
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn a_password_is_required_and_in_the_url() {
    if !require_redis() {
        return;
    }
    let redis = RedisServer::start(RedisOptions::default().password("s3cret/pw")).await;
    let port = redis.port();
    assert_eq!(
        redis.url(),
        format!("redis://:s3cret%2Fpw@127.0.0.1:{port}/")
    );
    let proxy = FaultProxy::start(redis.addr());
    assert_eq!(
        redis.url_via(proxy.addr()),
        format!("redis://:s3cret%2Fpw@127.0.0.1:{}/", proxy.port())
    );
    let mut anonymous = RespConn::connect(redis.addr()).await.unwrap();
    let reply = anonymous.call(&["GET", "x"]).await.unwrap();
    assert!(reply.text().starts_with("NOAUTH"), "{reply:?}");
    assert_eq!(redis.cmd(&["PING"]).await, "PONG");
}

/// A master, a replica in sync, and a Sentinel that knows both.
async fn master_replica_sentinel() -> (RedisServer, RedisServer, Sentinel) {
    let master = RedisServer::start(RedisOptions::default()).await;
    let replica = RedisServer::start(RedisOptions::default().replica_of(master.port())).await;
    replica.wait_synced().await;
    let started = Instant::now();
    let sentinel = Sentinel::start(master.port(), "callhome", 1).await;
    assert_eq!(sentinel.master_addr().await, master.addr());
    sentinel.wait_for_replicas(1).await;
    eprintln!(
        "sentinel started and saw the replica in {:?}",
        started.elapsed()
    );
    master.cmd(&["SET", "k", "v"]).await;
    assert_eq!(master.cmd(&["WAIT", "1", "2000"]).await, "1", "replicated");
    (master, replica, sentinel)
}

#[tokio::test]
async fn sentinel_failover_moves_the_master_to_the_replica() {
    if !require_redis() {
        return;
    }
    let (master, replica, sentinel) = master_replica_sentinel().await;
    assert_eq!(
        replica.info_field("replication", "role").await.as_deref(),
        Some("slave")
    );

    let started = Instant::now();
    assert_eq!(sentinel.failover().await, status("OK"));
    let (now, took) = sentinel
        .wait_master_change(master.addr(), Duration::from_secs(15))
        .await;
    eprintln!("SENTINEL FAILOVER: master_addr changed after {took:?}");
    assert_eq!(now, replica.addr());
    assert_eq!(
        replica.info_field("replication", "role").await.as_deref(),
        Some("master")
    );
    assert_eq!(replica.cmd(&["GET", "k"]).await, "v");
    replica.cmd(&["SET", "k", "w"]).await; // writable now
    eprintln!(
        "failover, ask to promoted and writable: {:?}",
        started.elapsed()
    );
}

#[tokio::test]
async fn sentinel_fails_a_dead_master_over_by_itself() {
    if !require_redis() {
        return;
    }
    let (mut master, replica, sentinel) = master_replica_sentinel().await;
    master.kill();
    let (now, took) = sentinel
        .wait_master_change(master.addr(), Duration::from_secs(20))
        .await;
    eprintln!("master killed: sentinel named the replica after {took:?}");
    assert_eq!(now, replica.addr());
    assert_eq!(
        replica.info_field("replication", "role").await.as_deref(),
        Some("master")
    );
    assert_eq!(replica.cmd(&["GET", "k"]).await, "v");
}
