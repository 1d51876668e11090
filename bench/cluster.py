#!/usr/bin/env python3
"""bench/cluster.sh's bookkeeping, with no dependencies beyond python3.

    cluster.py meta OUT.json                 machine facts and versions (and the knobs)
    cluster.py check A_URL B_URL KEY         is CallHome in cluster mode? (exit 0: yes)
    cluster.py ceiling CSV NAME ROUND C N S RC   redis-benchmark's --csv -> one JSON line
    cluster.py brief RAW.jsonl               one line about the last result, for the log
    cluster.py script SCRIPTS.lua NAME       the script NAME as a node loads it
    cluster.py report DIR DOC.md             medians -> the cluster section of DOC.md

DIR holds raw.jsonl (one line per measurement: the tool's JSON result plus `case`, `server`,
`round`, `exit`, `wall_secs` and what the script read from Redis) and meta.json. The
section can be made again from a results dir:
python3 bench/cluster.py report target/bench-results/cluster-<ts> docs/benchmarks.md
"""

import csv
import json
import os
import statistics
import sys
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in bench/
sys.path.insert(0, str(Path(__file__).resolve().parent))
import summarize  # noqa: E402  (machine facts, number formats)

BEGIN = "<!-- cluster:begin -->"
END = "<!-- cluster:end -->"
NAMES = {"callhome": "CallHome", "nchan": "Nchan"}
fmt = summarize.fmt


# ----------------------------------------------------------------------------------------
# meta

def meta(out):
    env = os.environ
    run = summarize._run
    facts = {
        "stamp": env.get("STAMP", ""),
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "nproc": run(["nproc"]),
        "memory": summarize._mem_total(),
        "kernel": os.uname().release,
        "cpu": summarize._cpu_model(),
        "load_at_start": run(["cat", "/proc/loadavg"]),
        "callhome_describe": run(["git", "describe", "--always", "--dirty", "--tags"]),
        "callhome_commit": run(["git", "rev-parse", "HEAD"]),
        "callhome_version": run([env.get("CALLHOME", "target/release/callhome"), "--version"]),
        "callhome_built": summarize._mtime(env.get("CALLHOME", "target/release/callhome")),
        "nginx": run([env.get("NGINX", "nginx"), "-v"]),
        "nchan_package": run(["dpkg-query", "-W", "-f", "${Package} ${Version}",
                              "libnginx-mod-nchan"]),
        "redis": env.get("REDIS_VERSION", ""),
        "redis_package": run(["dpkg-query", "-W", "-f", "${Package} ${Version}",
                              "redis-server"]),
        "command_line": env.get("COMMAND_LINE", ""),
        "knobs": {k: env.get(k, "") for k in
                  ("N", "ROUNDS", "NOTIFY_SECS", "IDS", "CONNS", "WAIT_SECS", "AGG_NODES",
                   "AGG_NCHAN", "CEILING_REQS", "CEILING_CLIENTS", "CEILING_SUBSCRIBERS",
                   "CH_WORKERS")},
    }
    Path(out).write_text(json.dumps(facts, indent=2) + "\n")


# ----------------------------------------------------------------------------------------
# check

def _request(method, url, key, body=None, content_type=None, timeout=5.0):
    req = urllib.request.Request(url, data=body, method=method)
    req.add_header("Authorization", f"Bearer {key}")
    if content_type:
        req.add_header("Content-Type", content_type)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def check(a, b, key):
    """An id created on A exists on B, and a notify on A answers a poll held on B."""
    status, body = _request("POST", f"{a}/v1/ids", key)
    if status != 201:
        sys.exit(f"creating an id on node a answered {status}: {body[:200]!r}")
    ident = json.loads(body)["id"]
    try:
        status, body = _request("GET", f"{b}/v1/ids/{ident}", key)
        if status != 200:
            sys.exit(f"an id created on node a is unknown on node b ({status}: {body[:120]!r})")
        got = {}

        def poll():
            try:
                got["answer"] = _request("GET", f"{b}/v1/poll?id={ident}&since=0", key,
                                         timeout=10.0)
            except OSError as e:
                got["error"] = str(e)

        waiter = threading.Thread(target=poll, daemon=True)
        waiter.start()
        time.sleep(0.5)  # the poll is held on b before the notify reaches a
        status, body = _request("POST", f"{a}/v1/ids/{ident}/notify", key, b"cluster-check",
                                "text/plain")
        if status != 200:
            sys.exit(f"a notify on node a answered {status}: {body[:200]!r}")
        waiting = json.loads(body).get("waiting")
        waiter.join(8.0)
        if "answer" not in got:
            sys.exit(f"a poll held on node b got nothing within 8 s of a notify on node a "
                     f"({got.get('error', 'no answer')}; a reported waiting={waiting})")
        status, body = got["answer"]
        if status != 200 or json.loads(body).get("info") != "cluster-check":
            sys.exit(f"a poll held on node b answered {status} {body[:120]!r} to a notify on a")
        print(f"an id created on a exists on b; a notify on a answered a poll held on b "
              f"(a reported waiting={waiting})")
    finally:
        _request("DELETE", f"{a}/v1/ids/{ident}", key)


# ----------------------------------------------------------------------------------------
# ceiling

def ceiling(path, name, rnd, clients, requests, subscribers, rc):
    """redis-benchmark --csv: a header line, then one line per test."""
    rows = list(csv.reader(Path(path).read_text().splitlines()))
    if len(rows) < 2 or rows[0][:2] != ["test", "rps"]:
        sys.exit(f"unexpected redis-benchmark output in {path}")
    head, row = rows[0], rows[-1]
    fields = dict(zip(head, row))
    out = {"case": "ceiling", "server": "redis", "command": name, "round": int(rnd),
           "exit": int(rc), "clients": int(clients), "requests": int(requests),
           "subscribers": int(subscribers), "test": fields["test"],
           "ops_per_sec": float(fields["rps"])}
    for k in ("avg_latency_ms", "p50_latency_ms", "p99_latency_ms", "max_latency_ms"):
        if k in fields:
            out[k] = float(fields[k])
    print(json.dumps(out))


# ----------------------------------------------------------------------------------------
# derived figures

def derive(r):
    """Adds the per-notify and per-id figures to one raw line."""
    r = dict(r)
    if r.get("case") == "notify" and r.get("publishes"):
        n = r["publishes"]
        tck = r.get("clk_tck") or 100
        r["redis_cpu_secs"] = r.get("redis_cpu_ticks", 0) / tck
        r["redis_cpu_per_10k"] = r["redis_cpu_secs"] / n * 10_000
        r["redis_cpu_us_per_notify"] = r["redis_cpu_secs"] / n * 1e6
        r["node_a_cpu_per_10k"] = r.get("node_a_cpu_ticks", 0) / tck / n * 10_000
        r["redis_commands_per_notify"] = r.get("redis_commands", 0) / n
        secs = r.get("secs") or 0
        r["redis_cpu_percent"] = 100 * r["redis_cpu_secs"] / secs if secs else None
    if r.get("case") == "memory" and r.get("ids"):
        n = r["ids"]
        r["redis_bytes_per_id"] = (r["redis_used_memory_after"]
                                   - r["redis_used_memory_before"]) / n
        r["redis_keys_per_id"] = (r["redis_keys_after"] - r["redis_keys_before"]) / n
        if not r.get("sample_keys"):
            r["sample_bytes"] = None  # no key names the id: only used_memory tells
    return r


def load(outdir):
    return [derive(r) for r in summarize.load(Path(outdir) / "raw.jsonl")]


def values(rows, case, server, field, command=None):
    out = []
    for r in sorted(rows, key=lambda r: r.get("round", 0)):
        if r.get("case") != case or r.get("server") != server or r.get("failed"):
            continue
        if command is not None and r.get("command") != command:
            continue
        v = r.get(field)
        if isinstance(v, (int, float)) and not isinstance(v, bool):
            out.append(v)
    return out


def median(vs):
    return statistics.median(vs) if vs else None


# ----------------------------------------------------------------------------------------
# brief

def brief(raw):
    rows = [derive(r) for r in summarize.load(raw)]
    if not rows:
        print("no results yet")
        return
    r = rows[-1]
    case = r.get("case")
    if case == "ceiling":
        extra = (f"{r.get('command')} {fmt('rate', r.get('ops_per_sec'))} "
                 f"(p50 {r.get('p50_latency_ms')} ms, {r.get('clients')} clients)")
    elif case == "notify":
        extra = (f"{fmt('rate', r.get('publish_per_sec'))}, errors {r.get('errors')}, "
                 f"redis CPU {r.get('redis_cpu_per_10k', 0):.3f} s per 10k notifies "
                 f"({r.get('redis_cpu_percent') or 0:.0f} % of a core), "
                 f"{r.get('redis_commands_per_notify', 0):.2f} redis commands per notify")
    elif case == "memory":
        extra = (f"redis {fmt('bytes', r.get('redis_bytes_per_id'))} per id over {r.get('ids')} "
                 f"ids ({r.get('redis_keys_per_id', 0):.2f} keys per id), sample id's keys "
                 f"{r.get('sample_bytes')} B in {len(r.get('sample_keys') or [])} key(s), "
                 f"errors {r.get('create_errors')} create / {r.get('publish_errors')} publish")
    else:
        extra = (f"{r.get('ready')}/{r.get('clients')} waiting, all answered "
                 f"{fmt('secs', r.get('all_answered_secs'))}, "
                 f"p50 {fmt('ms', r.get('latency_p50_ms'))}, "
                 f"p99 {fmt('ms', r.get('latency_p99_ms'))}, missing {r.get('missing')}, "
                 f"dup {r.get('duplicates')}, wrong {r.get('wrong')}, "
                 f"connect errors {r.get('connect_errors')}, "
                 f"publish errors {r.get('publish_errors')}")
    print(f"{case} {r.get('server')} round {r.get('round')}: {extra}")


# ----------------------------------------------------------------------------------------
# report

# (case, field, label, kind) of the two-node table. kind: see summarize.fmt, plus cpu (s).
METRICS = [
    ("fanout", "all_answered_secs", "Cross-node fan-out: all answered after", "secs"),
    ("fanout", "latency_p50_ms", "Cross-node fan-out: notify-to-answer p50", "ms"),
    ("fanout", "latency_p99_ms", "Cross-node fan-out: notify-to-answer p99", "ms"),
    ("fanout", "latency_max_ms", "Cross-node fan-out: notify-to-answer max", "ms"),
    ("fanout", "missing", "Cross-node fan-out: missing", "count"),
    ("fanout", "duplicates", "Cross-node fan-out: duplicates", "count"),
    ("fanout", "wrong", "Cross-node fan-out: wrong values", "count"),
    ("fanout", "connect_errors", "Cross-node fan-out: connection errors", "count"),
    ("fanout", "publish_errors", "Cross-node fan-out: failed notifies", "count"),
    ("fanout", "publish_per_sec", "Cross-node fan-out: notifies/s sent to A", "rate"),
    ("fanout", "waiting_at_publish", "Cross-node fan-out: `waiting` summed over the notifies",
     "count"),
    ("notify", "publish_per_sec", "Notify throughput through A, no waiters", "rate"),
    ("notify", "latency_p99_ms", "Notify through A: request latency p99", "ms"),
    ("notify", "errors", "Notify through A: failed notifies", "count"),
    ("notify", "redis_cpu_per_10k", "Redis CPU per 10,000 notifies", "cpu"),
    ("notify", "redis_cpu_percent", "Redis CPU during the notify run, % of one core", "pct"),
    ("notify", "redis_commands_per_notify", "Redis commands per notify", "float"),
    ("notify", "node_a_cpu_per_10k", "Node A's CPU per 10,000 notifies", "cpu"),
    ("memory", "redis_bytes_per_id", "Redis memory per id (`used_memory` delta / ids)",
     "bytes"),
    ("memory", "sample_bytes", "Redis memory of one id (`MEMORY USAGE` of its keys)", "bytes"),
    ("memory", "redis_keys_per_id", "Redis keys per id", "float"),
    ("memory", "rss_per_id", "Node A's RSS per id", "bytes"),
]

AGG_METRICS = [
    ("ready", "Waiters held", "count"),
    ("all_answered_secs", "All answered after", "secs"),
    ("latency_p50_ms", "Notify-to-answer p50", "ms"),
    ("latency_p99_ms", "Notify-to-answer p99", "ms"),
    ("latency_max_ms", "Notify-to-answer max", "ms"),
    ("missing", "Missing", "count"),
    ("duplicates", "Duplicates", "count"),
    ("wrong", "Wrong values", "count"),
    ("connect_errors", "Connection errors", "count"),
    ("publish_errors", "Failed notifies", "count"),
    ("publish_per_sec", "Notifies/s sent (round-robin over the nodes)", "rate"),
    ("connect_secs", "Time to connect every waiter", "secs"),
]


def show(kind, v):
    if v is None:
        return "n/a"
    if kind == "cpu":
        return f"{v:.3f} s"
    if kind == "float":
        return f"{v:.2f}"
    return fmt(kind, v)


def cell(kind, vs):
    if not vs:
        return "n/a"
    text = show(kind, median(vs))
    if len(vs) > 1:
        text += " [" + ", ".join(show(kind, v) for v in vs) + "]"
    return text


def ratio_text(a, b):
    if a is None or b is None or not b:
        return "n/a"
    return f"{a / b:.2f}×"


def targets(rows):
    """(text, CallHome, Nchan, ratio, met) per target of issue 10."""
    out = []

    def med(case, server, field, command=None):
        return median(values(rows, case, server, field, command))

    def ratio_target(text, case, field, kind, op, bound):
        c, n = med(case, "callhome", field), med(case, "nchan", field)
        r = c / n if c is not None and n else None
        met = None if r is None else (r <= bound if op == "<=" else r >= bound)
        out.append((text, show(kind, c), show(kind, n), ratio_text(c, n), met))

    ratio_target("Cross-node fan-out: all answered ≤ 0.5× Nchan-on-Redis", "fanout",
                 "all_answered_secs", "secs", "<=", 0.5)
    ratio_target("Cross-node fan-out: p99 ≤ 0.5× Nchan-on-Redis", "fanout", "latency_p99_ms",
                 "ms", "<=", 0.5)
    for case, text in (("fanout", "Cross-node fan-out: zero missing (every round)"),
                       ("aggregate", "Aggregate: zero missing (every round)")):
        ch, nc = values(rows, case, "callhome", "missing"), values(rows, case, "nchan", "missing")
        out.append((text, f"{max(ch)} (max)" if ch else "n/a",
                    f"{max(nc)} (max)" if nc else "n/a", "n/a",
                    (max(ch) == 0) if ch else None))
    ratio_target("Notify throughput ≥ 2× Nchan-on-Redis", "notify", "publish_per_sec", "rate",
                 ">=", 2.0)
    c = med("notify", "callhome", "publish_per_sec")
    ceil = med("ceiling", "redis", "ops_per_sec", "evalsha")
    r = c / ceil if c is not None and ceil else None
    out.append(("Notify throughput ≥ 0.5× the EVALSHA ceiling (redis-benchmark)",
                show("rate", c), f"ceiling {show('rate', ceil)}", ratio_text(c, ceil),
                None if r is None else r >= 0.5))
    ratio_target("Redis CPU per 10,000 notifies ≤ 0.25× Nchan's", "notify",
                 "redis_cpu_per_10k", "cpu", "<=", 0.25)
    ratio_target("Redis memory per id ≤ 0.25× Nchan's (`used_memory`)", "memory",
                 "redis_bytes_per_id", "bytes", "<=", 0.25)
    ratio_target("Redis memory per id ≤ 0.25× Nchan's (`MEMORY USAGE`)", "memory",
                 "sample_bytes", "bytes", "<=", 0.25)
    return out


def key_names(rows, server):
    for r in rows:
        if r.get("case") == "memory" and r.get("server") == server and r.get("sample_keys"):
            return ", ".join(f"`{k['key']}` ({k['type']}, {k['bytes']} B)"
                             for k in r["sample_keys"])
    return None


def section(outdir):
    rows = load(outdir)
    m = json.loads((Path(outdir) / "meta.json").read_text())
    k = m.get("knobs", {})
    check = next((r for r in rows if r.get("case") == "check"), {})
    ch_ok = bool(check.get("ok"))
    wall = os.environ.get("WALL_SECS")
    agg_nodes = k.get("AGG_NODES", "4")
    n = k.get("N", "?")
    L = []
    w = L.append
    w(BEGIN)
    w("## Cluster mode on Redis: CallHome nodes against Nchan instances (bench/cluster.sh)")
    w("")
    w("<!-- Generated by bench/cluster.sh (bench/cluster.py); rerun it rather than editing. -->")
    w("")
    w(f"Run `{m.get('stamp')}` on {m.get('date')}: **medians of {k.get('ROUNDS', '?')} "
      f"alternating round(s)** (per-round figures in brackets, in round order) on "
      f"{m.get('cpu')} ({m.get('nproc')} cores, {m.get('memory')}, kernel {m.get('kernel')}),"
      f" shared with the load generator and the one Redis. Everything runs over loopback."
      + (f" Wall time {int(wall) // 60} min {int(wall) % 60} s." if wall else ""))
    w("")
    w(f"Command: `{m.get('command_line')}`")
    w("")
    w(f"One private Redis {m.get('redis')} (`--save \"\" --appendonly no "
      "--maxmemory-policy noeviction`), flushed before every case while no node runs. "
      f"CallHome: nodes with `CALLHOME_STORE__BACKEND=redis`, {k.get('CH_WORKERS')} worker "
      "thread(s) each, rate limits off. Nchan: nginx instances with one worker each, "
      "`nchan_redis_pass` to an `upstream` with `nchan_redis_server` and "
      "`nchan_redis_storage_mode distributed` (bench/nchan-redis.conf.template), a "
      "one-message buffer per channel.")
    w("")
    if not ch_ok:
        why = str(check.get("status", "The check did not run.")).replace("`", "'")
        w(f"**CallHome was not measured.** {why}")
        w("")
    failed = [r for r in rows if r.get("failed")]
    if failed:
        w(f"**{len(failed)} measurement(s) failed** and are missing from the medians: "
          + "; ".join(f"{r.get('case')} {r.get('server')} round {r.get('round')}"
                      + (f" ({r['error']})" if r.get("error") else f" (exit {r.get('exit')})")
                      for r in failed) + ".")
        w("")

    w("### Targets (issue 10)")
    w("")
    w("| Target | CallHome | Nchan on Redis | CallHome / Nchan | Result |")
    w("|---|---:|---:|---:|---|")
    for text, c, nc, r, met in targets(rows):
        res = "not measured" if met is None else ("**met**" if met else "**missed**")
        w(f"| {text} | {c} | {nc} | {r} | {res} |")
    w("")
    w("Memory per waiting client on a node (within 5 % of the memory engine) is measured by "
      "bench/compare.sh and bench/ab.sh, not here.")
    w("")

    w(f"### Two nodes: waiters on B ({n}), notifies to A")
    w("")
    w("| Metric | CallHome, 2 nodes | Nchan, 2 instances on Redis | CallHome / Nchan |")
    w("|---|---:|---:|---:|")
    for case, field, label, kind in METRICS:
        ch = values(rows, case, "callhome", field)
        nc = values(rows, case, "nchan", field)
        if not ch and not nc:
            continue
        w(f"| {label} | {cell(kind, ch)} | {cell(kind, nc)} | "
          f"{ratio_text(median(ch), median(nc))} |")
    w("")

    ceil = [r for r in rows if r.get("case") == "ceiling" and not r.get("failed")]
    w("### The ceiling of that Redis (redis-benchmark, unpipelined)")
    w("")
    if ceil:
        c0 = ceil[0]
        w(f"`redis-benchmark -c {c0.get('clients')} -n {c0.get('requests')} -r 100000`, with "
          f"{c0.get('subscribers')} `PSUBSCRIBE *` clients standing in for the nodes' hint "
          "links, no node running.")
        w("")
        w("| Command | ops/s | p50 | p99 |")
        w("|---|---:|---:|---:|")
        for name, label in (("evalsha", "`EVALSHA` of CallHome's notify script (a batch of "
                                        "one notify, rate limits off)"),
                            ("publish", "`PUBLISH` alone")):
            ops = values(rows, "ceiling", "redis", "ops_per_sec", name)
            p50 = values(rows, "ceiling", "redis", "p50_latency_ms", name)
            p99 = values(rows, "ceiling", "redis", "p99_latency_ms", name)
            w(f"| {label} | {cell('rate', ops)} | {cell('ms', p50)} | {cell('ms', p99)} |")
    else:
        w("Not measured.")
    w("")

    w(f"### Aggregate: {agg_nodes} nodes, {n} waiters on each, one notify per id round-robin "
      "over all of them")
    w("")
    agg = [r for r in rows if r.get("case") == "aggregate"]
    if agg:
        w(f"| Metric | CallHome, {agg_nodes} nodes | Nchan, {agg_nodes} instances | "
          "CallHome / Nchan |")
        w("|---|---:|---:|---:|")
        for field, label, kind in AGG_METRICS:
            ch = values(rows, "aggregate", "callhome", field)
            nc = values(rows, "aggregate", "nchan", field)
            w(f"| {label} | {cell(kind, ch)} | {cell(kind, nc)} | "
              f"{ratio_text(median(ch), median(nc))} |")
    else:
        w("Not run.")
    w("")

    w("### How it is measured")
    w("")
    w(f"- **Fan-out**: `callhome-bench fanout --clients {n} --base <B> --publish-base <A>`: "
      "the ids are created through A (CallHome), the long polls are held on B, one notify "
      "per id goes to A; latency is each answer's arrival minus its notify's send time, "
      "all answered is the first notify to the last answer.")
    w(f"- **Notify throughput**: `notify-rate --secs {k.get('NOTIFY_SECS')} --conns "
      f"{k.get('CONNS')} --base <A>` over 1000 ids, no waiters. Redis CPU is utime+stime of "
      "the redis-server process from /proc over the whole run, so for CallHome it includes "
      "creating and deleting the 1000 ids; Redis commands are `total_commands_processed` "
      "over the same run.")
    w(f"- **Memory per id**: `store --ids {k.get('IDS')} --keep-ids --base <A>` creates the "
      "ids (CallHome) and gives each a 16-byte info; `INFO memory used_memory` before and "
      "after, over the ids. `MEMORY USAGE <key> SAMPLES 0` summed over the keys whose name "
      "holds one sample id (found with `SCAN MATCH *<id>*`); shared structures (sets, "
      "streams) only show in the `used_memory` figure.")
    for server in ("nchan", "callhome"):
        names = key_names(rows, server)
        if names:
            w(f"  - {NAMES[server]}'s keys for one id: {names}.")
    w(f"- **Aggregate**: `fanout --clients {int(n) * int(agg_nodes) if str(n).isdigit() and str(agg_nodes).isdigit() else '?'}` "
      "with `--base` and `--publish-base` repeated for every node: the waiters are split "
      "evenly over the nodes by worker process, notify i goes to node i mod K.")
    w("- **Ceiling**: the script's own Lua (the shape of one cluster notify) and a plain "
      "`PUBLISH`, `redis-benchmark --csv`, unpipelined.")
    w("")
    w("| | |")
    w("|---|---|")
    for key, label in (("callhome_describe", "CallHome (git describe)"),
                       ("callhome_version", "callhome --version"),
                       ("nginx", "nginx -v"), ("nchan_package", "Nchan package"),
                       ("redis_package", "Redis package"), ("load_at_start", "Load at start")):
        w(f"| {label} | `{m.get(key, 'unknown')}` |")
    w("")
    w(f"Raw JSON lines and every server's log: `target/bench-results/cluster-{m.get('stamp')}/` "
      "(not committed); `python3 bench/cluster.py report <that dir> docs/benchmarks.md` "
      "writes this section again.")
    w(END)
    return "\n".join(L) + "\n"


def splice(text, block):
    """`text` with its cluster block replaced by `block`, or `block` appended."""
    start, end = text.find(BEGIN), text.find(END)
    if start != -1 and end > start:
        return text[:start] + block.rstrip("\n") + text[end + len(END):]
    sep = "" if not text or text.endswith("\n\n") else ("\n" if text.endswith("\n") else "\n\n")
    return text + sep + block


def report(outdir, doc):
    block = section(outdir)
    doc = Path(doc)
    old = doc.read_text() if doc.exists() else ""
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text(splice(old, block))
    print(block)


def script(path, name):
    """Script `name` of scripts.lua as a node loads it: the `common` section, then its own
    (src/store/cluster/scripts.rs cuts the file the same way)."""
    text = Path(path).read_text()

    def section(n):
        marker = f"--@ {n}\n"
        start = text.index(marker) + len(marker)
        end = text.find("--@ ", start)
        return text[start:] if end < 0 else text[start:end]

    return section("common") + "\n" + section(name)


def main(argv):
    if len(argv) >= 3 and argv[1] == "meta":
        meta(argv[2])
    elif len(argv) >= 5 and argv[1] == "check":
        check(argv[2].rstrip("/"), argv[3].rstrip("/"), argv[4])
    elif len(argv) >= 9 and argv[1] == "ceiling":
        ceiling(*argv[2:9])
    elif len(argv) >= 4 and argv[1] == "script":
        print(script(argv[2], argv[3]), end="")
    elif len(argv) >= 3 and argv[1] == "brief":
        brief(argv[2])
    elif len(argv) >= 4 and argv[1] == "report":
        report(argv[2], argv[3])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
