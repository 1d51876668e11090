//! The scenarios, and what they share: the run's time bound, creating and deleting ids,
//! starting the workers.
//!
//! Every scenario is bounded twice: each phase has its own timeout, and the whole run stops
//! at `--max-secs` (dropping the workers kills them). A harness failure (no connection at
//! all, a dead worker, a timeout) is an error; measured errors are reported, not raised.

mod drain;
mod fanout;
mod idle;
mod notify_rate;
mod store;

use std::fmt::Display;
use std::time::Duration;

use anyhow::{Context as _, anyhow, bail};
use tokio::time::Instant;

use crate::cli::{Cli, Command, Common, IdleArgs};
use crate::fleet::{self, Fleet, Plan, Readiness};
use crate::publisher::{self, Jobs};
use crate::target::{self, Target, Targets, Transport};
use crate::{ids, net};

/// How long the first connection to the server may take.
const PREFLIGHT_TIMEOUT: Duration = Duration::from_secs(5);
/// How long workers may take to report their totals once told to stop.
const STOP_TIMEOUT: Duration = Duration::from_secs(30);
/// Connections used to delete the ids at the end.
const CLEANUP_CONNS: usize = 16;

/// What every scenario gets: the flags, the targets, and the clock of the run.
pub struct Context {
    pub common: Common,
    /// The server at the first `--base`: the kind of server, and the one whose pid is read
    /// when `--server-pid` is not given.
    pub target: Target,
    /// Every `--base` and `--publish-base`; backend requests go through `targets.backend(n)`.
    pub targets: Targets,
    started: Instant,
    deadline: Instant,
}

impl Context {
    /// A progress line on stderr, stamped with the run's age.
    pub fn progress(&self, message: impl Display) {
        eprintln!("[{:7.2}s] {message}", self.started.elapsed().as_secs_f64());
    }

    /// Time left before `--max-secs`.
    pub fn remaining(&self) -> Duration {
        self.deadline.saturating_duration_since(Instant::now())
    }
}

/// Runs the scenario `cli` names, within `--max-secs`.
pub async fn run(cli: &Cli) -> anyhow::Result<()> {
    let targets = Targets::new(&cli.common)?;
    let target = targets.subscribe[0].clone();
    net::raise_nofile().context("cannot raise the open-files limit")?;
    let started = Instant::now();
    let max = Duration::from_secs(cli.common.max_secs);
    let ctx = Context {
        common: cli.common.clone(),
        target,
        targets,
        started,
        deadline: started + max,
    };
    preflight(&ctx).await?;
    tokio::time::timeout(max, dispatch(&ctx, &cli.command))
        .await
        .map_err(|_| {
            anyhow!(
                "the run took longer than --max-secs {} and was stopped",
                max.as_secs()
            )
        })?
}

async fn dispatch(ctx: &Context, command: &Command) -> anyhow::Result<()> {
    match command {
        Command::Idle(args) => idle::run(ctx, args).await,
        Command::Fanout(args) => {
            fanout::run(ctx, args.clients, args.transport, &args.publish).await
        }
        Command::NotifyRate(args) => notify_rate::run(ctx, args).await,
        Command::Store(args) => store::run(ctx, args).await,
        Command::Drain(args) => drain::run(ctx, args).await,
        Command::Sse(args) => {
            let idle = IdleArgs {
                clients: args.clients,
                ids_per_client: 1,
                transport: Transport::Sse,
                measure: args.measure.clone(),
            };
            idle::run(ctx, &idle).await?;
            fanout::run(ctx, args.clients, Transport::Sse, &args.publish).await
        }
        Command::Worker(_) => bail!("the worker runs on its own, not as a scenario"),
    }
}

/// Fails early, with a clear message, when nothing listens at a `--base` or
/// `--publish-base`.
async fn preflight(ctx: &Context) -> anyhow::Result<()> {
    for (addr, host) in ctx.targets.addrs() {
        match tokio::time::timeout(PREFLIGHT_TIMEOUT, net::connect(addr, None)).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => bail!("cannot connect to http://{host} ({addr}): {e}"),
            Err(_) => bail!("cannot connect to http://{host} ({addr}): timed out"),
        }
    }
    Ok(())
}

/// The ids of one scenario: `b{run}-{i:08}` for i in 0..count.
pub struct IdSet {
    pub run: String,
    pub count: usize,
    /// Creates that failed (CallHome); those ids will not deliver.
    pub create_errors: usize,
    created: bool,
}

/// Names `count` ids for a new run and, for CallHome, creates them over `conns` keep-alive
/// connections (409, already there, counts as created).
pub async fn create_ids(ctx: &Context, count: usize, conns: usize) -> anyhow::Result<IdSet> {
    let run = ids::run_tag();
    let mut set = IdSet {
        run: run.clone(),
        count,
        create_errors: 0,
        created: false,
    };
    if !ctx.target.needs_ids() {
        return Ok(set);
    }
    ctx.progress(format_args!(
        "creating {count} ids (run {run}) over {conns} connections"
    ));
    let targets = ctx.targets.clone();
    let tally = publisher::run(
        conns,
        Jobs::Count(count),
        false,
        move |i| {
            let target = targets.backend(i);
            let request = target.create(&ids::id_name(&run, i)).unwrap_or_default();
            (target.base.addr, request)
        },
        target::classify_create,
    )
    .await;
    if tally.ok + tally.exists == 0 {
        let why = tally.first_error.unwrap_or_default();
        bail!("could not create any id: {why}");
    }
    if tally.failed > 0 {
        let why = tally.first_error.unwrap_or_default();
        ctx.progress(format_args!(
            "{} creates failed, first: {why}",
            tally.failed
        ));
    }
    set.create_errors = tally.failed;
    set.created = true;
    ctx.progress(format_args!(
        "created {} ids in {:.2} s",
        tally.ok + tally.exists,
        tally.elapsed.as_secs_f64()
    ));
    Ok(set)
}

/// Deletes a scenario's ids again (CallHome, unless `--keep-ids`), so reruns against one
/// server do not pile them up. Failures are reported, not fatal.
pub async fn delete_ids(ctx: &Context, set: &IdSet) {
    if !set.created || ctx.common.keep_ids {
        return;
    }
    let targets = ctx.targets.clone();
    let run = set.run.clone();
    let tally = publisher::run(
        CLEANUP_CONNS,
        Jobs::Count(set.count),
        false,
        move |i| {
            let target = targets.backend(i);
            let request = target.delete(&ids::id_name(&run, i)).unwrap_or_default();
            (target.base.addr, request)
        },
        target::classify_delete,
    )
    .await;
    if tally.failed > 0 {
        let why = tally.first_error.unwrap_or_default();
        ctx.progress(format_args!(
            "{} deletes failed, first: {why}",
            tally.failed
        ));
    }
}

/// Workers holding `plan`'s clients, all connected (or given up).
pub struct Started {
    pub fleet: Fleet,
    pub workers: usize,
    pub readiness: Readiness,
    /// From starting the workers to the last client settling.
    pub connect_secs: f64,
}

/// Starts the workers for `plan` and waits until every client is waiting or has given up.
pub async fn start_fleet(ctx: &Context, plan: &Plan) -> anyhow::Result<Started> {
    let workers =
        fleet::worker_count_over(ctx.common.workers, plan.clients, ctx.common.base.len())?;
    let bases = ctx.common.base.len();
    let over = if bases > 1 {
        format!(" to {bases} servers")
    } else {
        String::new()
    };
    ctx.progress(format_args!(
        "connecting {} {} clients{over} from {workers} worker process(es)",
        plan.clients,
        plan.transport.as_arg()
    ));
    let t0 = Instant::now();
    let secs = ctx.remaining().as_secs() + 1;
    let mut fleet = Fleet::spawn(&ctx.common, plan, workers, secs)?;
    let readiness = fleet.wait_ready(ctx.remaining()).await?;
    let connect_secs = t0.elapsed().as_secs_f64();
    if readiness.ready == 0 {
        bail!("no client could connect (the workers' first errors are above)");
    }
    ctx.progress(format_args!(
        "{} clients waiting after {connect_secs:.2} s ({} could not connect)",
        readiness.ready, readiness.not_ready
    ));
    Ok(Started {
        fleet,
        workers,
        readiness,
        connect_secs,
    })
}

/// Stops the workers within a bounded time.
pub async fn stop_fleet(
    fleet: Fleet,
) -> anyhow::Result<(
    crate::protocol::ClientCounts,
    Vec<crate::protocol::Delivery>,
)> {
    fleet.stop(STOP_TIMEOUT).await
}
