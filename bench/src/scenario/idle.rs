//! `idle`: what holding N waiting clients costs the server, in memory and in CPU.
//!
//! Memory is the server's `VmRSS` before the ids exist, after they exist (CallHome only: Nchan
//! has no creation step) and with every client connected and settled. CPU is utime+stime
//! over `--hold-secs` with nothing published, as a percentage of one core. Reading /proc
//! works the same for any server, so CallHome and Nchan compare fairly.

use std::time::Duration;

use anyhow::{Context as _, anyhow, ensure};
use serde::Serialize;
use tokio::time::Instant;

use super::Context;
use crate::cli::{IdleArgs, Record};
use crate::fleet::Plan;
use crate::proc;
use crate::report::{self, round3};
use crate::target::{Kind, Transport};

#[derive(Debug, Serialize)]
struct IdleReport {
    scenario: &'static str,
    target: Kind,
    transport: Transport,
    /// Ids each client waits on, on its one connection; the per-client figures are per
    /// connection.
    ids_per_client: usize,
    clients: usize,
    workers: usize,
    run: String,
    server_pid: u32,
    /// Bytes.
    rss_before_ids: u64,
    rss_after_ids: Option<u64>,
    rss_with_clients: u64,
    /// (`rss_with_clients` - `rss_before_ids`) / clients.
    rss_per_client: f64,
    /// (`rss_with_clients` - `rss_after_ids`) / clients.
    rss_per_client_excluding_ids: Option<f64>,
    idle_cpu_percent: f64,
    hold_secs: f64,
    clock_ticks_per_sec: u64,
    /// `getconf CLK_TCK` failed and 100 was assumed.
    clock_ticks_assumed: bool,
    ready: u64,
    connect_secs: f64,
    /// Failed connects, early closes and unexpected answers together.
    connect_errors: u64,
    failed_connects: u64,
    early_closes: u64,
    unexpected_answers: u64,
    repolls: u64,
    reconnects: u64,
    create_errors: usize,
}

pub async fn run(ctx: &Context, args: &IdleArgs) -> anyhow::Result<()> {
    let pid = server_pid(ctx, args.measure.server_pid)?;
    let (ticks_per_sec, ticks_read) = proc::clock_ticks();
    if !ticks_read {
        ctx.progress("getconf CLK_TCK failed: assuming 100 clock ticks per second");
    }
    let rss = |when: &str| {
        proc::rss_bytes(pid).with_context(|| format!("reading the server's memory {when}"))
    };
    let rss_before_ids = rss("before the ids")?;
    let per = usize::try_from(args.ids_per_client)?;
    if per > 1 && !ctx.target.needs_ids() {
        anyhow::bail!("--ids-per-client is CallHome's watch=; Nchan has no such request");
    }
    let ids = super::create_ids(ctx, args.clients * per, 16).await?;
    let rss_after_ids = if ctx.target.needs_ids() {
        Some(rss("after the ids")?)
    } else {
        None
    };

    let plan = Plan {
        clients: args.clients,
        transport: args.transport,
        run: ids.run.clone(),
        id_modulo: None,
        ids_per_client: per,
        record: Record::Counts,
        single_poll: false,
    };
    let mut started = super::start_fleet(ctx, &plan).await?;
    ctx.progress(format_args!("settling for {} s", args.measure.settle_secs));
    let settle = Duration::from_secs(args.measure.settle_secs);
    started.fleet.watch(settle).await?;
    let rss_with_clients = rss("with the clients")?;
    ctx.progress(format_args!(
        "sampling the server's CPU for {} s",
        args.measure.hold_secs
    ));
    let cpu_before = proc::cpu_ticks(pid)?;
    let t0 = Instant::now();
    let hold = Duration::from_secs(args.measure.hold_secs);
    started.fleet.watch(hold).await?;
    let cpu_after = proc::cpu_ticks(pid)?;
    let hold = t0.elapsed().as_secs_f64();
    let (counts, _) = super::stop_fleet(started.fleet).await?;
    super::delete_ids(ctx, &ids).await;

    let n = args.clients as f64;
    let cpu_secs = cpu_after.saturating_sub(cpu_before) as f64 / ticks_per_sec as f64;
    let result = IdleReport {
        scenario: "idle",
        target: ctx.target.kind,
        transport: args.transport,
        ids_per_client: per,
        clients: args.clients,
        workers: started.workers,
        run: ids.run.clone(),
        server_pid: pid,
        rss_before_ids,
        rss_after_ids,
        rss_with_clients,
        rss_per_client: round3((rss_with_clients as f64 - rss_before_ids as f64) / n),
        rss_per_client_excluding_ids: rss_after_ids
            .map(|after| round3((rss_with_clients as f64 - after as f64) / n)),
        idle_cpu_percent: round3(cpu_secs / hold * 100.0),
        hold_secs: round3(hold),
        clock_ticks_per_sec: ticks_per_sec,
        clock_ticks_assumed: !ticks_read,
        ready: started.readiness.ready,
        connect_secs: round3(started.connect_secs),
        connect_errors: counts.errors(),
        failed_connects: counts.failed_connects,
        early_closes: counts.early_closes,
        unexpected_answers: counts.unexpected_answers,
        repolls: counts.repolls,
        reconnects: counts.reconnects,
        create_errors: ids.create_errors,
    };
    report::emit(ctx.common.json, &human(&result), &result)?;
    Ok(())
}

/// `--server-pid`, or the process listening on the `--base` port.
pub(super) fn server_pid(ctx: &Context, given: Option<u32>) -> anyhow::Result<u32> {
    let pid = if let Some(pid) = given {
        pid
    } else {
        let port = ctx.target.base.addr.port();
        let pid = proc::listener_pid(port)
            .context("looking for the server's process in /proc")?
            .ok_or_else(|| anyhow!("no process listens on port {port}: pass --server-pid"))?;
        ctx.progress(format_args!("server pid {pid} (listening on port {port})"));
        pid
    };
    ensure!(
        pid != std::process::id(),
        "--server-pid is this tool's own process"
    );
    proc::rss_bytes(pid).with_context(|| format!("cannot read /proc/{pid}/status"))?;
    Ok(pid)
}

fn human(r: &IdleReport) -> String {
    let after_ids = r.rss_after_ids.map_or_else(String::new, |after| {
        format!(" -> {} with {} ids", report::bytes(after as f64), r.clients)
    });
    let excluding = r
        .rss_per_client_excluding_ids
        .map_or_else(String::new, |x| {
            format!(" ({} excluding the id)", report::bytes(x))
        });
    format!(
        "idle {target}/{transport}: {ready}/{clients} clients waiting after {connect:.2} s \
         ({workers} worker(s)), {errors} connection errors, {repolls} re-polls\n\
         \x20 server RSS {before}{after_ids} -> {with} with clients: {per} per client{excluding}\n\
         \x20 server idle CPU {cpu:.2}% of one core over {hold:.1} s",
        target = r.target.as_arg(),
        transport = r.transport.as_arg(),
        ready = r.ready,
        clients = r.clients,
        connect = r.connect_secs,
        workers = r.workers,
        errors = r.connect_errors,
        repolls = r.repolls,
        before = report::bytes(r.rss_before_ids as f64),
        with = report::bytes(r.rss_with_clients as f64),
        per = report::bytes(r.rss_per_client),
        cpu = r.idle_cpu_percent,
        hold = r.hold_secs,
    )
}
