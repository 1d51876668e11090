//! Command-line flags: the one place that lists every knob.
//!
//! The common flags are global so they can stand before or after the subcommand, and so the
//! coordinator can hand the same flags back to the worker processes it re-executes.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

use crate::target::{Kind, Transport};

/// Load tool for CallHome (and Nchan, for comparison). Loopback targets only.
///
/// Every run is bounded by --max-secs and stops by itself. Human summaries and one JSON line
/// per result go to stdout (with --json only the JSON lines); progress goes to stderr.
#[derive(Debug, Parser)]
#[command(name = "callhome-bench", version)]
pub struct Cli {
    #[command(flatten)]
    pub common: Common,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every scenario (and every worker) shares.
#[derive(Debug, Clone, Args)]
pub struct Common {
    /// The server under test.
    #[arg(long, global = true, value_enum, default_value_t = Kind::Callhome)]
    pub target: Kind,
    /// Base URL of the server: `http://` on 127.0.0.0/8, `[::1]` or localhost, nothing else.
    /// Repeat it to spread the waiting clients over several servers (nodes of one cluster):
    /// the worker processes are split evenly over the bases (their number is rounded up to a
    /// multiple of the bases), so base j holds clients N*j/B .. N*(j+1)/B. The first base is
    /// the one whose server pid is looked up when --server-pid is not given. Give all of
    /// them on one side of the subcommand: those after it replace those before (clap's rule
    /// for global flags), as for --publish-base.
    #[arg(long, global = true, default_value = "http://127.0.0.1:8080")]
    pub base: Vec<String>,
    /// Where the backend side sends its requests (creates, publishes, deletes), with the
    /// same loopback rule as --base. Repeat it to go round-robin: job n (for fan-out: the
    /// notify of id n) goes to the (n mod P)-th one. Default: the --base list.
    #[arg(long, global = true)]
    pub publish_base: Vec<String>,
    /// The app key CallHome's backend endpoints need (`Authorization: Bearer <key>`).
    #[arg(long, global = true, default_value = "demo-key-change-me-0123456789")]
    pub key: String,
    /// Path (and query) a subscriber requests, with `{id}` and `{since}` placeholders.
    /// Default: callhome `/v1/poll?id={id}&since={since}` (sse: `/v1/events?...`);
    /// nchan `/sub/{id}`.
    #[arg(long, global = true)]
    pub sub_template: Option<String>,
    /// Path a publish is sent to (POST), with an `{id}` placeholder.
    /// Default: callhome `/v1/ids/{id}/notify`; nchan `/pub/{id}`.
    #[arg(long, global = true)]
    pub pub_template: Option<String>,
    /// Worker processes holding the clients. Default: ceil(clients / 9000).
    #[arg(long, global = true, value_parser = positive)]
    pub workers: Option<usize>,
    /// Print only the JSON result lines on stdout.
    #[arg(long, global = true)]
    pub json: bool,
    /// Upper bound on the whole run, in seconds; past it the run fails and stops.
    #[arg(long, global = true, default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86_400))]
    pub max_secs: u64,
    /// Client sockets bind round-robin to 127.0.0.1 ..= 127.0.0.K (IPv4 targets), so a run
    /// never runs out of ephemeral ports on one source address.
    #[arg(long, global = true, default_value_t = 16, value_parser = clap::value_parser!(u8).range(1..=250))]
    pub source_ips: u8,
    /// Connections each worker opens at once while connecting (no SYN floods).
    #[arg(long, global = true, default_value_t = 256, value_parser = positive)]
    pub connect_concurrency: usize,
    /// Leave the ids created by the run on the server (normally they are deleted at the end).
    #[arg(long, global = true)]
    pub keep_ids: bool,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Hold N idle waiting clients; measure the server's memory per client and idle CPU.
    Idle(IdleArgs),
    /// N waiting clients, then publish once to every id; measure delivery latency.
    Fanout(FanoutArgs),
    /// Keep-alive publish throughput for T seconds, optionally with waiting clients.
    NotifyRate(NotifyRateArgs),
    /// `idle --transport sse`, then `fanout --transport sse`, in one run.
    Sse(SseArgs),
    /// Memory per stored id with no client: create ids, give each an info, read the RSS.
    Store(StoreArgs),
    /// Hold N long polls until the server exits (stopped by someone else, e.g. SIGTERM);
    /// report how each held poll ended: answered, cut, or never.
    Drain(DrainArgs),
    /// Internal: one worker process holding a share of the clients (started by the tool).
    #[command(hide = true)]
    Worker(WorkerArgs),
}

#[derive(Debug, Clone, Args)]
pub struct StoreArgs {
    /// Ids to create (CallHome) or channels to publish to (Nchan).
    #[arg(long, value_parser = positive)]
    pub ids: usize,
    /// The server's process id; found from the --base port when omitted.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Keep-alive connections used to create and publish.
    #[arg(long, default_value_t = 16, value_parser = positive)]
    pub conns: usize,
}

#[derive(Debug, Clone, Args)]
pub struct DrainArgs {
    /// Held long polls, one per id. Each client polls once: it does not poll again after its
    /// answer, so every poll ends exactly once and is counted by how it ended.
    #[arg(long, value_parser = positive)]
    pub clients: usize,
    /// The server's process id; found from the --base port when omitted.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Seconds to wait after all clients are connected, so the server holds every poll,
    /// before saying ready.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub settle_secs: u64,
    /// Written (with the number of held polls) once every poll is held: the moment to stop
    /// the server.
    #[arg(long)]
    pub ready_file: Option<PathBuf>,
    /// Seconds to wait, once ready, for the server to exit; past it the run fails.
    #[arg(long, default_value_t = 120, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub wait_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct IdleArgs {
    /// Waiting clients, one per id.
    #[arg(long, value_parser = positive)]
    pub clients: usize,
    /// CallHome: ids each client waits on, all on its one connection (`watch=`), 1 to 256.
    /// The report's per-client figures are then per connection.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=256))]
    pub ids_per_client: u64,
    #[arg(long, value_enum, default_value_t = Transport::Poll)]
    pub transport: Transport,
    #[command(flatten)]
    pub measure: MeasureArgs,
}

/// How the server's memory and CPU are read in the idle phase.
#[derive(Debug, Clone, Args)]
pub struct MeasureArgs {
    /// The server's process id. Default: the process listening on the --base port.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Seconds over which the server's idle CPU time is sampled.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub hold_secs: u64,
    /// Seconds to wait after all clients are connected before reading memory.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=600))]
    pub settle_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct FanoutArgs {
    /// Waiting clients, one per id.
    #[arg(long, value_parser = positive)]
    pub clients: usize,
    #[arg(long, value_enum, default_value_t = Transport::Poll)]
    pub transport: Transport,
    #[command(flatten)]
    pub publish: PublishArgs,
}

/// How the fan-out publishes.
#[derive(Debug, Clone, Args)]
pub struct PublishArgs {
    /// Keep-alive publisher connections (one request at a time on each).
    #[arg(long, default_value_t = 16, value_parser = positive)]
    pub conns: usize,
    /// Publish rounds; each round notifies every id once and waits for the deliveries.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub rounds: u32,
    /// Seconds to wait for deliveries after a round's last publish; later ones are missing.
    #[arg(long, default_value_t = 10, value_parser = clap::value_parser!(u64).range(1..=600))]
    pub wait_secs: u64,
}

#[derive(Debug, Clone, Args)]
pub struct NotifyRateArgs {
    /// Seconds of publishing.
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..=3600))]
    pub secs: u64,
    /// Keep-alive publisher connections (one request at a time on each).
    #[arg(long, default_value_t = 8, value_parser = positive)]
    pub conns: usize,
    /// Ids published to, round-robin.
    #[arg(long, default_value_t = 1000, value_parser = positive)]
    pub ids: usize,
    /// Waiting clients spread over the ids (client k waits on id k mod --ids).
    #[arg(long, default_value_t = 0)]
    pub waiters: usize,
    /// CallHome: notifies per request, sent as one batch (`POST /v1/notify`) to as many
    /// consecutive ids; 1 sends single notifies. Publishes count notifies, not requests.
    #[arg(long, default_value_t = 1, value_parser = positive)]
    pub batch: usize,
    /// How the waiting clients wait.
    #[arg(long, value_enum, default_value_t = Transport::Poll)]
    pub transport: Transport,
}

#[derive(Debug, Clone, Args)]
pub struct SseArgs {
    /// Waiting clients, one per id, in each of the two phases.
    #[arg(long, value_parser = positive)]
    pub clients: usize,
    #[command(flatten)]
    pub measure: MeasureArgs,
    #[command(flatten)]
    pub publish: PublishArgs,
}

#[derive(Debug, Clone, Args)]
pub struct WorkerArgs {
    #[arg(long, value_enum)]
    pub transport: Transport,
    /// The run tag the ids are named after.
    #[arg(long)]
    pub run: String,
    /// Global index of this worker's first client.
    #[arg(long)]
    pub first: usize,
    /// Clients this worker holds.
    #[arg(long, value_parser = positive)]
    pub count: usize,
    /// Client k waits on id k mod this (default: id k).
    #[arg(long, value_parser = positive)]
    pub id_modulo: Option<usize>,
    /// Ids each client waits on, on one connection (CallHome's `watch=`): client k waits on
    /// ids k*N .. k*N+N-1.
    #[arg(long, default_value_t = 1, value_parser = positive)]
    pub ids_per_client: usize,
    #[arg(long, value_enum)]
    pub record: Record,
    /// Each client polls once and stops at its first answer or break (drain).
    #[arg(long)]
    pub single_poll: bool,
}

/// What a worker reports about deliveries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Record {
    /// Every delivery with its receive time (fan-out latency).
    Deliveries,
    /// Counts only (idle, notify-rate waiters).
    Counts,
}

impl Record {
    pub fn as_arg(self) -> &'static str {
        match self {
            Self::Deliveries => "deliveries",
            Self::Counts => "counts",
        }
    }
}

fn positive(s: &str) -> Result<usize, String> {
    match s.parse::<usize>() {
        Ok(0) => Err("must be at least 1".into()),
        Ok(n) => Ok(n),
        Err(e) => Err(e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory;

    use super::*;

    #[test]
    fn the_flags_are_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn common_flags_go_after_the_subcommand_too() {
        let cli = Cli::try_parse_from([
            "callhome-bench",
            "fanout",
            "--clients",
            "10",
            "--target",
            "nchan",
            "--json",
        ])
        .expect("valid flags");
        assert_eq!(cli.common.target, Kind::Nchan);
        assert!(cli.common.json);
        assert!(matches!(cli.command, Command::Fanout(ref a) if a.clients == 10));
    }

    #[test]
    fn drain_takes_a_ready_file() {
        let cli = Cli::try_parse_from([
            "callhome-bench",
            "drain",
            "--clients",
            "300",
            "--ready-file",
            "/tmp/ready",
        ])
        .expect("valid flags");
        let Command::Drain(args) = cli.command else {
            panic!("not drain: {:?}", cli.command);
        };
        assert_eq!(args.clients, 300);
        assert_eq!(args.ready_file, Some(PathBuf::from("/tmp/ready")));
        assert_eq!((args.settle_secs, args.wait_secs), (1, 120));
    }

    #[test]
    fn one_base_and_no_publish_base_by_default() {
        let cli = Cli::try_parse_from(["callhome-bench", "fanout", "--clients", "10"])
            .expect("valid flags");
        assert_eq!(cli.common.base, ["http://127.0.0.1:8080"]);
        assert!(cli.common.publish_base.is_empty());
        let cli = Cli::try_parse_from([
            "callhome-bench",
            "--base",
            "http://127.0.0.1:18080",
            "fanout",
            "--clients",
            "10",
        ])
        .expect("valid flags");
        assert_eq!(cli.common.base, ["http://127.0.0.1:18080"]);
    }

    #[test]
    fn bases_and_publish_bases_repeat_before_or_after_the_subcommand() {
        let before = Cli::try_parse_from([
            "callhome-bench",
            "--base",
            "http://127.0.0.1:18081",
            "--publish-base",
            "http://127.0.0.1:18080",
            "--base",
            "http://127.0.0.1:18082",
            "--publish-base",
            "http://127.0.0.1:18083",
            "fanout",
            "--clients",
            "10",
        ])
        .expect("valid flags");
        let after = Cli::try_parse_from([
            "callhome-bench",
            "fanout",
            "--clients",
            "10",
            "--base",
            "http://127.0.0.1:18081",
            "--base",
            "http://127.0.0.1:18082",
            "--publish-base",
            "http://127.0.0.1:18080",
            "--publish-base",
            "http://127.0.0.1:18083",
        ])
        .expect("valid flags");
        for cli in [before, after] {
            assert_eq!(
                cli.common.base,
                ["http://127.0.0.1:18081", "http://127.0.0.1:18082"]
            );
            assert_eq!(
                cli.common.publish_base,
                ["http://127.0.0.1:18080", "http://127.0.0.1:18083"]
            );
        }
    }

    #[test]
    fn zero_clients_are_refused() {
        assert!(Cli::try_parse_from(["callhome-bench", "idle", "--clients", "0"]).is_err());
    }
}
