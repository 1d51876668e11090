#!/usr/bin/env python3
"""bench/compare.sh's bookkeeping, with no dependencies beyond python3.

    summarize.py meta OUT.json            machine facts and versions (environment knobs too)
    summarize.py brief RAW.jsonl          one line about the last result, for the progress log
    summarize.py report DIR DOC.md SVG    medians over the rounds -> the doc and the chart

DIR holds raw.jsonl (one line per measurement: the tool's JSON result plus `case`, `server`,
`round`, `exit` and `wall_secs`), meta.json and logs/. The report can be made again from
a results dir: python3 bench/summarize.py report target/bench-results/<ts> docs/benchmarks.md
docs/images/benchmarks.svg
"""

import json
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.dont_write_bytecode = True  # no __pycache__ in bench/
sys.path.insert(0, str(Path(__file__).resolve().parent))
import chart  # noqa: E402

SERVERS = ("callhome", "nchan")
# bench/cluster.sh's section of the doc, which a report here leaves as it is.
CLUSTER_BEGIN = "<!-- cluster:begin -->"
CLUSTER_END = "<!-- cluster:end -->"
NAMES = {"callhome": "CallHome", "nchan": "Nchan"}

# (case, field, label, kind). kind: bytes, pct, rate, secs, ms, count.
METRICS = [
    ("idle-poll", "rss_per_client", "Idle long poll: RSS per waiting client", "bytes"),
    ("idle-poll", "rss_per_client_excluding_ids", "… excluding the ids (CallHome only)", "bytes"),
    ("idle-poll", "idle_cpu_percent", "Idle long poll: CPU, % of one core", "pct"),
    ("idle-poll", "connect_errors", "Idle long poll: connection errors", "count"),
    ("idle-poll", "connect_secs", "Idle long poll: time to connect all clients", "secs"),
    ("idle-sse", "rss_per_client", "Idle SSE: RSS per waiting client", "bytes"),
    ("idle-sse", "rss_per_client_excluding_ids", "… excluding the ids (CallHome only)", "bytes"),
    ("idle-sse", "idle_cpu_percent", "Idle SSE: CPU, % of one core", "pct"),
    ("idle-sse", "connect_errors", "Idle SSE: connection errors", "count"),
    ("idle-sse", "connect_secs", "Idle SSE: time to connect all clients", "secs"),
    ("notify-rate", "publish_per_sec", "Notify rate, no waiters: publishes/s", "rate"),
    ("notify-rate", "latency_p50_ms", "Notify rate: publish latency p50", "ms"),
    ("notify-rate", "latency_p99_ms", "Notify rate: publish latency p99", "ms"),
    ("notify-rate", "errors", "Notify rate: failed publishes", "count"),
    ("fanout-poll", "publish_per_sec", "Fan-out: publishes/s", "rate"),
    ("fanout-poll", "all_answered_secs", "Fan-out: all clients answered after", "secs"),
    ("fanout-poll", "latency_p50_ms", "Fan-out: delivery latency p50", "ms"),
    ("fanout-poll", "latency_p99_ms", "Fan-out: delivery latency p99", "ms"),
    ("fanout-poll", "latency_max_ms", "Fan-out: delivery latency max", "ms"),
    ("fanout-poll", "missing", "Fan-out: missing deliveries", "count"),
    ("fanout-poll", "duplicates", "Fan-out: duplicate deliveries", "count"),
    ("fanout-poll", "wrong", "Fan-out: wrong deliveries", "count"),
    ("fanout-poll", "publish_errors", "Fan-out: failed publishes", "count"),
    ("fanout-poll", "connect_errors", "Fan-out: connection errors", "count"),
    ("store", "rss_per_id", "Stored ids, no clients: RSS per id (CallHome only)", "bytes"),
]

# The targets. ratio: CallHome / Nchan compared with `value`; abs: CallHome's own
# figure compared with `value`; max: CallHome's largest figure over the rounds.
TARGETS = [
    {"case": "idle-poll", "field": "rss_per_client", "kind": "ratio", "op": "<=", "value": 0.5,
     "text": "RSS per waiting long-poll client ≤ 0.5× Nchan",
     "chart": ["RSS per client", "idle long poll"]},
    {"case": "idle-sse", "field": "rss_per_client", "kind": "ratio", "op": "<=", "value": 0.5,
     "text": "RSS per waiting SSE client ≤ 0.5× Nchan",
     "chart": ["RSS per client", "idle SSE"]},
    {"case": "notify-rate", "field": "publish_per_sec", "kind": "ratio", "op": ">=", "value": 1.0,
     "text": "Notify throughput ≥ 1.0× Nchan",
     "chart": ["publishes/s", "notify rate"]},
    {"case": "fanout-poll", "field": "all_answered_secs", "kind": "ratio", "op": "<=",
     "value": 1.0, "text": "Fan-out: all answered no later than Nchan",
     "chart": ["all answered after", "fan-out"]},
    {"case": "fanout-poll", "field": "latency_p99_ms", "kind": "ratio", "op": "<=", "value": 1.0,
     "text": "Fan-out: p99 latency ≤ Nchan's",
     "chart": ["p99 latency", "fan-out"]},
    {"case": "fanout-poll", "field": "missing", "kind": "max", "op": "==", "value": 0,
     "text": "Fan-out: zero missing (every round)"},
    {"case": "idle-poll", "field": "idle_cpu_percent", "kind": "abs", "op": "<", "value": 2.0,
     "text": "Idle CPU < 2 % of one core (long poll)"},
    {"case": "idle-sse", "field": "idle_cpu_percent", "kind": "abs", "op": "<", "value": 2.0,
     "text": "Idle CPU < 2 % of one core (SSE)"},
    {"case": "store", "field": "rss_per_id", "kind": "abs", "op": "<=", "value": 300,
     "text": "RSS per stored id (16-byte info, no client) ≤ 300 B"},
]


# ----------------------------------------------------------------------------------------
# meta

def _run(cmd, timeout=20):
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.SubprocessError) as e:
        return f"({e.__class__.__name__})"
    return (p.stdout.strip() or p.stderr.strip()) if p.returncode == 0 else \
        f"(failed: {(p.stderr or p.stdout).strip()[:200]})"


def _cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _mem_total():
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                kib = int(line.split()[1])
                return f"{kib / 1024 / 1024:.1f} GiB"
    except (OSError, ValueError):
        pass
    return "unknown"


def _mtime(path):
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(os.stat(path).st_mtime))
    except OSError:
        return "unknown"


def meta(out):
    env = os.environ
    nginx = env.get("NGINX", "nginx")
    facts = {
        "stamp": env.get("STAMP", ""),
        "nproc": _run(["nproc"]),
        "memory": _mem_total(),
        "kernel": platform.release(),
        "cpu": _cpu_model(),
        "load_at_start": _run(["cat", "/proc/loadavg"]),
        "callhome_describe": _run(["git", "describe", "--always", "--dirty", "--tags"]),
        "callhome_commit": _run(["git", "rev-parse", "HEAD"]),
        "callhome_version": _run([env.get("CALLHOME", "target/release/callhome"), "--version"]),
        "callhome_built": _mtime(env.get("CALLHOME", "target/release/callhome")),
        "rustc": _run(["rustc", "--version"]),
        "nginx": _run([nginx, "-v"]),
        "nginx_package": _run(["dpkg-query", "-W", "-f", "${Package} ${Version}",
                               "nginx"]),
        "nchan_package": _run(["dpkg-query", "-W", "-f", "${Package} ${Version}",
                               "libnginx-mod-nchan"]),
        "nchan_module": env.get("MODULE", ""),
        "knobs": {k: env.get(k, "") for k in
                  ("N", "ROUNDS", "NOTIFY_SECS", "CONNS", "HOLD_SECS", "SETTLE_SECS",
                   "STORE_IDS", "CH_WORKERS")},
    }
    Path(out).write_text(json.dumps(facts, indent=2) + "\n")


# ----------------------------------------------------------------------------------------
# shared

def load(raw):
    rows = []
    for line in Path(raw).read_text().splitlines():
        line = line.strip()
        if line.startswith("{"):
            rows.append(json.loads(line))
    return rows


def fmt(kind, v):
    if v is None:
        return "n/a"
    if kind == "bytes":
        return f"{v / 1024:.2f} KiB" if abs(v) >= 1024 else f"{v:.0f} B"
    if kind == "pct":
        return f"{v:.2f} %"
    if kind == "rate":
        return f"{v:,.0f}/s"
    if kind == "secs":
        return f"{v:.3f} s"
    if kind == "ms":
        return f"{v:.2f} ms"
    if kind == "count":
        return f"{v:g}"
    return str(v)


def brief(raw):
    rows = load(raw)
    if not rows:
        print("no results yet")
        return
    r = rows[-1]
    case = r.get("case")
    if case and case.startswith("idle"):
        extra = (f"rss/client {fmt('bytes', r.get('rss_per_client'))}, "
                 f"cpu {fmt('pct', r.get('idle_cpu_percent'))}, "
                 f"ready {r.get('ready')}/{r.get('clients')}, "
                 f"connect errors {r.get('connect_errors')}")
    elif case == "notify-rate":
        extra = (f"{fmt('rate', r.get('publish_per_sec'))}, errors {r.get('errors')}")
    elif case == "store":
        extra = (f"rss/id {fmt('bytes', r.get('rss_per_id'))} over {r.get('ids')} ids, "
                 f"errors {r.get('create_errors')} create / {r.get('publish_errors')} publish")
    else:
        extra = (f"all answered {fmt('secs', r.get('all_answered_secs'))}, "
                 f"p99 {fmt('ms', r.get('latency_p99_ms'))}, missing {r.get('missing')}, "
                 f"dup {r.get('duplicates')}, wrong {r.get('wrong')}, "
                 f"connect errors {r.get('connect_errors')}")
    print(f"{case} {r.get('server')} round {r.get('round')}: {extra}")


# ----------------------------------------------------------------------------------------
# report

def values(rows, case, server, field):
    out = []
    for r in sorted(rows, key=lambda r: r["round"]):
        if r.get("case") == case and r.get("server") == server and not r.get("failed"):
            v = r.get(field)
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                out.append(v)
    return out


def median(vs):
    return statistics.median(vs) if vs else None


def judge(t, rows):
    """(CallHome figure, Nchan figure, ratio, met) for target `t`."""
    ch = values(rows, t["case"], "callhome", t["field"])
    nc = values(rows, t["case"], "nchan", t["field"])
    mc, mn = median(ch), median(nc)
    ratio = mc / mn if mc is not None and mn else None
    if t["kind"] == "ratio":
        subject = ratio
    elif t["kind"] == "max":
        subject = max(ch) if ch else None
    else:
        subject = mc
    if subject is None:
        return mc, mn, ratio, None
    op = t["op"]
    met = {"<=": subject <= t["value"], ">=": subject >= t["value"],
           "<": subject < t["value"], "==": subject == t["value"]}[op]
    return mc, mn, ratio, met


def kind_of(case, field):
    for c, f, _, k in METRICS:
        if c == case and f == field:
            return k
    return "count"


# Logged by nginx at every start, and deliberate: worker_connections is set far above the
# 20000 sockets the worker may open so that the connection limit never bites first.
EXPECTED_NGINX = "worker_connections exceed open file resource limit"


def log_summary(logs):
    """(server, {level: count}, first lines) for the warning-or-worse lines in the logs."""
    notes = []
    ch = logs / "callhome.log"
    if ch.exists():
        lines = [line for line in ch.read_text(errors="replace").splitlines() if line.strip()]
        notes.append(("CallHome log (`--log warn`)", lines))
    ng = logs / "error.log"
    if ng.exists():
        lines = [
            line for line in ng.read_text(errors="replace").splitlines()
            if re.search(r"\[(warn|error|crit|alert|emerg)\]", line)
            and EXPECTED_NGINX not in line
        ]
        notes.append(("Nginx error.log", lines))
    ng_err = logs / "nginx-stderr.log"
    if ng_err.exists():
        lines = [line for line in ng_err.read_text(errors="replace").splitlines()
                 if line.strip() and EXPECTED_NGINX not in line]
        notes.append(("Nginx stderr", lines))
    return [(name, lines) for name, lines in notes if lines]


def report(outdir, doc, svg):
    outdir = Path(outdir)
    rows = load(outdir / "raw.jsonl")
    m = json.loads((outdir / "meta.json").read_text())
    knobs = m.get("knobs", {})
    rounds = knobs.get("ROUNDS", "?")
    n = knobs.get("N", "?")
    wall = os.environ.get("WALL_SECS")
    doc, svg = Path(doc), Path(svg)

    # Chart.
    groups = []
    for t in TARGETS:
        if "chart" not in t:
            continue
        _, _, ratio, met = judge(t, rows)
        groups.append({"label": t["chart"], "ratio": ratio, "target": t["value"],
                       "better": "lower" if t["op"].startswith("<") else "higher",
                       "met": met})
    svg.parent.mkdir(parents=True, exist_ok=True)
    svg.write_text(chart.render(
        groups, "CallHome against Nchan (Nchan = 1.0)",
        f"medians of {rounds} alternating round(s), N = {n} clients, "
        f"{m.get('nproc')} shared cores, load generator on the same cores"))

    try:
        svg_rel = os.path.relpath(svg, doc.parent)
    except ValueError:
        svg_rel = str(svg)

    L = []
    w = L.append
    w("# Benchmarks: CallHome against Nginx + Nchan")
    w("")
    w("<!-- Generated by bench/compare.sh (bench/summarize.py); rerun it rather than editing. -->")
    w("")
    w(f"All figures are **medians of {rounds} alternating round(s)** (CallHome, Nchan, "
      f"CallHome, Nchan, ...) on a **shared {m.get('nproc')}-core machine**, with the load "
      "generator (`callhome-bench`, in the same run) on the same cores as the server under "
      "test. Everything runs over loopback. Treat small differences as noise: they depend "
      "on what else the machine was doing.")
    w("")
    w(f"Run `{m.get('stamp')}`: N = {n} waiting clients, "
      f"{knobs.get('CONNS')} publisher connections, notify-rate for "
      f"{knobs.get('NOTIFY_SECS')} s, {knobs.get('STORE_IDS')} stored ids; CallHome with "
      f"`workers = {knobs.get('CH_WORKERS')}` and Nchan with one worker process"
      + (f", wall time {int(wall) // 60} min {int(wall) % 60} s." if wall else "."))
    w("")
    w("## Targets")
    w("")
    w("| Target | CallHome | Nchan | CallHome / Nchan | Result |")
    w("|---|---:|---:|---:|---|")
    for t in TARGETS:
        mc, mn, ratio, met = judge(t, rows)
        k = kind_of(t["case"], t["field"])
        if t["kind"] == "max":
            ch_vals = values(rows, t["case"], "callhome", t["field"])
            mc_text = f"{fmt(k, mc)} (max {fmt(k, max(ch_vals)) if ch_vals else 'n/a'})"
        else:
            mc_text = fmt(k, mc)
        verdict = "n/a" if met is None else ("**met**" if met else "**missed**")
        w(f"| {t['text']} | {mc_text} | {fmt(k, mn)} | "
          f"{'n/a' if ratio is None else f'{ratio:.2f}×'} | {verdict} |")
    w("")
    w(f"![CallHome against Nchan, normalised to Nchan = 1.0]({svg_rel})")
    w("")
    w("Bars are CallHome / Nchan for each target metric; the dashed line is the target. "
      "Idle CPU and missing deliveries are absolute targets and are only in the tables.")
    w("")
    w("## All metrics")
    w("")
    w("Median over the rounds; the per-round figures follow in brackets, in round order.")
    w("")
    w("| Metric | CallHome | Nchan | CallHome / Nchan |")
    w("|---|---|---|---:|")
    for case, field, label, k in METRICS:
        ch = values(rows, case, "callhome", field)
        nc = values(rows, case, "nchan", field)
        if not ch and not nc:
            continue
        mc, mn = median(ch), median(nc)
        ratio = f"{mc / mn:.2f}×" if mc is not None and mn else "–"

        def cell(vs, med):
            if not vs:
                return "–"
            each = ", ".join(fmt(k, v) for v in vs)
            return fmt(k, med) + (f" [{each}]" if len(vs) > 1 else "")
        w(f"| {label} | {cell(ch, mc)} | {cell(nc, mn)} | {ratio} |")
    w("")

    # Problems seen.
    w("## Problems seen in this run")
    w("")
    problems = []
    for r in rows:
        who = f"{NAMES.get(r.get('server'), r.get('server'))}, {r.get('case')}, round {r.get('round')}"
        if r.get("failed"):
            problems.append(f"{who}: the measurement failed (exit {r.get('exit')}); "
                            "see bench.log in the results dir.")
            continue
        bad = []
        for f in ("connect_errors", "failed_connects", "early_closes", "unexpected_answers",
                  "missing", "duplicates", "wrong", "late", "errors", "publish_errors",
                  "create_errors", "waiter_errors", "waiter_wrong"):
            v = r.get(f)
            if isinstance(v, (int, float)) and v > 0:
                bad.append(f"{f} {v}")
        if r.get("ready") is not None and r.get("clients") is not None \
                and r["ready"] < r["clients"]:
            bad.append(f"only {r['ready']}/{r['clients']} clients waiting")
        if bad:
            problems.append(f"{who}: " + ", ".join(bad) + ".")
    for name, lines in log_summary(outdir / "logs"):
        problems.append(f"{name}: {len(lines)} line(s) at warning level or above; the first: `"
                        + lines[0][:200].replace("`", "'") + "`")
    if problems:
        for p in problems:
            w(f"- {p}")
    else:
        w("None: no connection errors, missing, duplicate or wrong deliveries, failed "
          "publishes or server log lines at warning level or above.")
    w("")

    w("## What is measured")
    w("")
    w("Each measurement starts its server fresh (a new process: RSS does not shrink after "
      "clients leave) and stops it afterwards, by PID.")
    w("")
    w(f"- **Idle long poll / idle SSE**: `callhome-bench idle --clients {n} --transport "
      f"poll|sse --hold-secs {knobs.get('HOLD_SECS')} --settle-secs "
      f"{knobs.get('SETTLE_SECS')}`. RSS per client is (RSS with all clients waiting − RSS "
      "before the ids are created) / N, so it includes creating the ids on CallHome "
      "(`POST /v1/ids`) and the channels on Nchan (made by the first subscriber). "
      "\"Excluding the ids\" starts from after the ids were created (CallHome only). Idle "
      "CPU is the server's utime + stime over the hold, as % of one core. For Nchan, the "
      "nginx worker is measured (the master holds no clients).")
    w(f"- **Notify rate**: `callhome-bench notify-rate --secs {knobs.get('NOTIFY_SECS')} "
      f"--conns {knobs.get('CONNS')}` — keep-alive publishes, one at a time per "
      "connection, over 1000 ids, with no waiting clients.")
    w(f"- **Fan-out**: `callhome-bench fanout --clients {n} --conns {knobs.get('CONNS')} "
      "--transport poll` — N long-poll clients wait, one per id, then one publish per id. "
      "\"All answered\" runs from the first publish to the last delivery; latency is each "
      "delivery's receive time minus its publish's send time. Missing = no delivery within "
      "10 s of the last publish.")
    w("")
    w("See [bench/README.md](../bench/README.md) for how the tool measures.")
    w("")
    w("Servers:")
    w("")
    w("- **CallHome**: `target/release/callhome --config <copy of config/callhome.toml> "
      "--listen 127.0.0.1:<port> --log warn`, under `ulimit -n 20000` (release build, "
      "shipped defaults: `poll_timeout` 25 s, `sse_keepalive` 15 s).")
    w("- **Nchan**: nginx with `libnginx-mod-nchan`, config "
      "[bench/nchan.conf.template](../bench/nchan.conf.template): one worker, "
      "`worker_rlimit_nofile 20000`, `worker_connections 30000`, `access_log off`; "
      "`/sub/<id>` is `nchan_subscriber longpoll eventsource`, `/pub/<id>` is "
      "`nchan_publisher` with a one-message buffer (`nchan_message_buffer_length 1`) that "
      "never expires (`nchan_message_timeout 0`); the channel pattern is `[\\w-]+` because the "
      "tool's ids contain `-`. Started with `nginx -c <conf> -p <tmp>` under "
      "`ulimit -n 20000`; nginx's warning that 30000 connections exceed the 20000 file "
      "limit is expected and not counted as a problem.")
    w("")

    w("## Machine and versions")
    w("")
    w("| | |")
    w("|---|---|")
    for key, label in (("cpu", "CPU"), ("nproc", "Cores (nproc)"), ("memory", "Memory"),
                       ("kernel", "Kernel (uname -r)"), ("load_at_start", "Load at start"),
                       ("callhome_describe", "CallHome (git describe)"),
                       ("callhome_commit", "CallHome commit"),
                       ("callhome_version", "callhome --version"),
                       ("callhome_built", "callhome binary built"),
                       ("rustc", "rustc"), ("nginx", "nginx -v"),
                       ("nginx_package", "nginx package"),
                       ("nchan_package", "Nchan package")):
        w(f"| {label} | `{m.get(key, 'unknown')}` |")
    w("")
    if "dirty" in str(m.get("callhome_describe", "")):
        w("The working tree had uncommitted changes when CallHome was built (`-dirty`).")
        w("")
    loads = [r["loadavg_1m"] for r in rows if isinstance(r.get("loadavg_1m"), (int, float))]
    if loads:
        w(f"1-minute load average at the end of each measurement: median "
          f"{statistics.median(loads):.2f}, max {max(loads):.2f} (the run itself keeps about "
          "one core busy while it connects and publishes).")
        w("")

    w("## Rerun")
    w("")
    w("```sh")
    w("bash bench/compare.sh                                  # defaults: N=19000 ROUNDS=3 NOTIFY_SECS=10")
    w("N=2000 ROUNDS=1 NOTIFY_SECS=3 bash bench/compare.sh    # a quick check")
    w("```")
    w("")
    w("It installs `nginx-light` and `libnginx-mod-nchan` with apt-get when they are missing "
      "(as root), builds `callhome` and `callhome-bench` in release mode, and rewrites this "
      "file and the chart. Knobs (environment): `N` (waiting clients, 19000), `ROUNDS` (3), "
      "`NOTIFY_SECS` (10), `CONNS` (publisher connections, 16), `HOLD_SECS` (10), "
      "`SETTLE_SECS` (2), `NOFILE` (20000), `CH_PORT` / `NCHAN_PORT` (18080 / 18081, or the "
      "next free port), `NO_INSTALL=1`, `NO_BUILD=1`, `DOC`, `SVG`, `OUT`.")
    w("")
    w(f"Raw JSON lines, the tool's progress output and both servers' logs are kept in "
      f"`target/bench-results/{m.get('stamp')}/` (not committed). The report can be "
      "regenerated from there with `python3 bench/summarize.py report "
      "target/bench-results/<timestamp> docs/benchmarks.md docs/images/benchmarks.svg`.")
    w("")
    # bench/cluster.sh's section (between its markers) is kept as it was.
    old = doc.read_text() if doc.exists() else ""
    begin, end = old.find(CLUSTER_BEGIN), old.find(CLUSTER_END)
    if begin != -1 and end > begin:
        L.append(old[begin:end + len(CLUSTER_END)])
        L.append("")
    doc.parent.mkdir(parents=True, exist_ok=True)
    doc.write_text("\n".join(L))


def main(argv):
    if len(argv) >= 3 and argv[1] == "meta":
        meta(argv[2])
    elif len(argv) >= 3 and argv[1] == "brief":
        brief(argv[2])
    elif len(argv) >= 5 and argv[1] == "report":
        report(argv[2], argv[3], argv[4])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
