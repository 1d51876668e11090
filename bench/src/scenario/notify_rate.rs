//! `notify-rate`: how many publishes per second the server takes over keep-alive
//! connections, one request at a time on each, optionally while clients wait.
//!
//! Publish n goes to id n mod M with round n / M + 1, so every id sees rising rounds and
//! waiting clients can check that what they get is theirs.

use std::time::Duration;

use anyhow::bail;
use serde::Serialize;
use tokio::time::Instant;

use super::Context;
use crate::cli::{NotifyRateArgs, Record};
use crate::fleet::Plan;
use crate::ids;
use crate::protocol::ClientCounts;
use crate::publisher::{self, Jobs};
use crate::report::{self, Latency, round3};
use crate::target::{self, Kind, Transport};

#[derive(Debug, Serialize)]
struct NotifyRateReport {
    scenario: &'static str,
    target: Kind,
    conns: usize,
    ids: usize,
    waiters: usize,
    transport: Transport,
    /// Notifies per request (1: single notifies, more: `POST /v1/notify` batches).
    batch: usize,
    /// Requests sent (publishes / batch).
    requests: usize,
    run: String,
    secs: f64,
    publishes: usize,
    publish_per_sec: f64,
    errors: usize,
    latency_p50_ms: Option<f64>,
    latency_p99_ms: Option<f64>,
    latency_max_ms: Option<f64>,
    /// Values the waiting clients received (coalesced: at most one per answer).
    waiter_deliveries: u64,
    waiter_wrong: u64,
    waiter_errors: u64,
    create_errors: usize,
}

/// Request `r` to `target`: notify `r` alone, or notifies `r*batch .. r*batch+batch-1` in
/// one batch, numbered as single ones are (notify n: id n mod `m`, round n / `m` + 1).
fn request(target: &target::Target, run: &str, m: usize, batch: usize, r: usize) -> Vec<u8> {
    let item = |n: usize| {
        let round = u32::try_from(n / m + 1).unwrap_or(u32::MAX);
        (ids::id_name(run, n % m), ids::info(n % m, round))
    };
    if batch == 1 {
        let (id, info) = item(r);
        target.publish(&id, &info)
    } else {
        let items: Vec<_> = (r * batch..(r + 1) * batch).map(item).collect();
        target.publish_batch(&items)
    }
}

pub async fn run(ctx: &Context, args: &NotifyRateArgs) -> anyhow::Result<()> {
    if args.batch > 1 && ctx.target.kind != Kind::Callhome {
        bail!("--batch is CallHome's POST /v1/notify; other servers have no batch notify");
    }
    let ids = super::create_ids(ctx, args.ids, args.conns).await?;
    let mut fleet = None;
    if args.waiters > 0 {
        let plan = Plan {
            clients: args.waiters,
            transport: args.transport,
            run: ids.run.clone(),
            id_modulo: Some(args.ids),
            ids_per_client: 1,
            record: Record::Counts,
            single_poll: false,
        };
        fleet = Some(super::start_fleet(ctx, &plan).await?.fleet);
    }

    ctx.progress(format_args!(
        "publishing for {} s over {} connections to {} ids",
        args.secs, args.conns, args.ids
    ));
    let targets = ctx.targets.clone();
    let run = ids.run.clone();
    let (m, batch) = (args.ids, args.batch);
    let tally = publisher::run(
        args.conns,
        Jobs::Until(Instant::now() + Duration::from_secs(args.secs)),
        true,
        move |r| {
            let target = targets.backend(r);
            (target.base.addr, request(target, &run, m, batch, r))
        },
        if batch == 1 {
            target::classify_publish
        } else {
            target::classify_batch
        },
    )
    .await;
    let counts = match fleet {
        Some(fleet) => super::stop_fleet(fleet).await?.0,
        None => ClientCounts::default(),
    };
    super::delete_ids(ctx, &ids).await;
    if tally.ok == 0 {
        bail!(
            "no publish succeeded: {}",
            tally.first_error.unwrap_or_default()
        );
    }

    let secs = tally.elapsed.as_secs_f64();
    let latency = Latency::of(
        tally
            .latencies_us
            .iter()
            .map(|&us| f64::from(us) / 1000.0)
            .collect(),
    );
    let result = NotifyRateReport {
        scenario: "notify-rate",
        target: ctx.target.kind,
        conns: args.conns,
        ids: args.ids,
        waiters: args.waiters,
        transport: args.transport,
        batch,
        requests: tally.sent,
        run: ids.run.clone(),
        secs: round3(secs),
        publishes: tally.sent * batch,
        publish_per_sec: round3((tally.sent * batch) as f64 / secs.max(1e-9)),
        errors: tally.failed,
        latency_p50_ms: latency.map(|l| l.p50),
        latency_p99_ms: latency.map(|l| l.p99),
        latency_max_ms: latency.map(|l| l.max),
        waiter_deliveries: counts.deliveries,
        waiter_wrong: counts.wrong,
        waiter_errors: counts.errors(),
        create_errors: ids.create_errors,
    };
    let human = summary(ctx.target.kind, &result, args, latency.as_ref());
    report::emit(ctx.common.json, &human, &result)?;
    Ok(())
}

/// The human line of `result`.
fn summary(
    kind: Kind,
    result: &NotifyRateReport,
    args: &NotifyRateArgs,
    latency: Option<&Latency>,
) -> String {
    let waiters = if args.waiters > 0 {
        format!(
            "\n  {} waiters received {} values ({} wrong, {} connection errors)",
            args.waiters, result.waiter_deliveries, result.waiter_wrong, result.waiter_errors
        )
    } else {
        String::new()
    };
    format!(
        "notify-rate {target}: {publishes} publishes in {secs:.2} s = {rate:.0}/s over {conns} \
         connections to {ids} ids ({batch} per request), {errors} failed requests\n  \
         request latency {latency}{waiters}",
        target = kind.as_arg(),
        publishes = result.publishes,
        secs = result.secs,
        rate = result.publish_per_sec,
        conns = args.conns,
        ids = args.ids,
        batch = args.batch,
        errors = result.errors,
        latency = report::latency_line(latency),
    )
}
