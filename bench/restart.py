#!/usr/bin/env python3
"""bench/restart.sh's helpers, with no dependencies beyond python3.

    restart.py log-metrics LOG                  the daemon's snapshot figures, as KEY=VALUE lines
    restart.py check-ids PORT KEY RUN IDS SAMPLE   do sampled ids answer with their seq and info?
    restart.py summary RESULTS.jsonl            medians and ranges over the rounds, for people

The daemon's log lines are read in `log_metrics` only: when their wording or fields change,
that is the one place to adapt.
"""

import http.client
import json
import random
import re
import statistics
import sys

sys.dont_write_bytecode = True  # no __pycache__ in bench/

# Units of Rust's `Debug` for `Duration` ("850µs", "12.3ms", "1.2s"), and of field names that
# carry their unit instead ("took_ms=12.3").
UNIT_MS = {"ns": 1e-6, "µs": 1e-3, "us": 1e-3, "ms": 1.0, "s": 1e3, "secs": 1e3, "sec": 1e3}
DURATION_KEYS = ("took", "duration", "elapsed")


def duration_ms(fields):
    """The first duration among `fields` (name -> raw value), in milliseconds, or None."""
    for name, raw in fields.items():
        base, _, key_unit = name.partition("_")
        if base not in DURATION_KEYS:
            continue
        m = re.fullmatch(r"([0-9]+(?:\.[0-9]+)?)\s*([a-zµ]*)", raw)
        if not m:
            continue
        unit = m.group(2) or key_unit or "s"
        if unit in UNIT_MS:
            return float(m.group(1)) * UNIT_MS[unit]
    return None


def fields_of(line):
    """`key=value` pairs of a tracing line (plain text or JSON)."""
    line = line.strip()
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError:
            return {}
        flat = dict(obj.get("fields", {}))
        flat.update({k: v for k, v in obj.items() if k != "fields"})
        return {k: str(v) for k, v in flat.items()}
    return {k: v.strip('"') for k, v in re.findall(r'([A-Za-z_][A-Za-z0-9_.]*)=("[^"]*"|\S+)', line)}


def log_metrics(path):
    """The last final-snapshot and restore lines of a daemon log, loosely: the message names
    the event, the fields give bytes, ids and a duration."""
    out = {}
    with open(path, encoding="utf-8", errors="replace") as f:
        lines = f.readlines()
    for line in lines:
        text = re.sub(r"\x1b\[[0-9;]*m", "", line)
        low = text.lower()
        fields = fields_of(text)
        if "final snapshot" in low:
            out["final_snapshot_ms"] = duration_ms(fields)
            out["final_snapshot_bytes"] = fields.get("bytes")
            out["final_snapshot_ids"] = fields.get("ids")
        elif re.search(r"\brestored\b|\brestore\b.*\bids=", low):
            out["restore_ms"] = duration_ms(fields)
            out["restored_ids"] = fields.get("ids")
            out["restore_over_limit"] = fields.get("over_limit")
            out["restore_unknown_app"] = fields.get("unknown_app")
        elif "drain timeout" in low:
            out["drain_timeout_hit"] = "true"
    for key, value in out.items():
        if value is None:
            value = "null"
        elif isinstance(value, float):
            value = f"{value:.3f}"
        elif not re.fullmatch(r"[0-9]+(\.[0-9]+)?|true|false", str(value)):
            value = "null"
        print(f"{key}={value}")


def check_ids(port, key, run, count, sample):
    """Each sampled id must have seq 1 in its status (with the app key) and its info in a
    poll from 0; one id past the last must be unknown (404), so the check can fail.
    The names and infos are callhome-bench's (bench/src/ids.rs): b{run}-{i:08},
    "{i}:1" padded to 16 bytes with '.'."""
    indices = list(range(count)) if sample >= count else random.sample(range(count), sample)
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    auth = {"Authorization": f"Bearer {key}"}

    def get(path, headers=None):
        conn.request("GET", path, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, resp.read()

    ok, first_failure = 0, ""
    for i in indices:
        name = f"b{run}-{i:08}"
        info = f"{i}:1".ljust(16, ".")
        status, body = get(f"/v1/ids/{name}", auth)
        good = status == 200 and json.loads(body).get("seq") == 1
        if good:
            status, body = get(f"/v1/poll?id={name}&since=0")
            good = status == 200 and json.loads(body) == {"seq": 1, "info": info}
        if good:
            ok += 1
        elif not first_failure:
            first_failure = f"{name}: {status} {body[:120]!r}"
    status, _ = get(f"/v1/ids/b{run}-{count:08}", auth)
    print(f"checked={len(indices)}")
    print(f"ok={ok}")
    print(f"unknown_is_404={'true' if status == 404 else 'false'}")
    if first_failure:
        print(f"first failure: {first_failure}", file=sys.stderr)


# (case, field, label, unit)
ROWS = [
    ("restart", "stop_ms", "SIGTERM to exit (with final snapshot)", "ms"),
    ("restart", "final_snapshot_ms", "final snapshot write (logged)", "ms"),
    ("restart", "final_snapshot_bytes", "final snapshot size (logged)", "bytes"),
    ("restart", "snapshot_file_bytes", "snapshot file size", "bytes"),
    ("restart", "restore_ms", "restore (logged)", "ms"),
    ("restart", "ready_ms", "exec to /readyz 200", "ms"),
    ("restart", "restored_ids", "ids restored (logged)", "count"),
    ("restart", "fill_secs", "fill: create + notify all ids", "s"),
    ("restart", "loadavg_1m", "machine load (1-min average) after", "load"),
    ("drain", "stop_ms", "SIGTERM to exit", "ms"),
    ("drain", "held", "polls held at SIGTERM", "count"),
    ("drain", "answered", "held polls answered 204", "count"),
    ("drain", "cut", "held polls cut (no answer)", "count"),
    ("drain", "unended", "held polls never ended", "count"),
    ("drain", "loadavg_1m", "machine load (1-min average) after", "load"),
]


def fmt(value, unit, short=False):
    if unit == "ms":
        return f"{value:.1f} ms"
    if unit == "s":
        return f"{value:.2f} s"
    if unit == "load":
        return f"{value:.2f}"
    if unit == "bytes" and not short:
        return f"{value:,.0f} B ({value / 1024 / 1024:.2f} MiB)"
    if unit == "bytes":
        return f"{value:,.0f} B"
    return f"{value:,.0f}"


def summary(path):
    results = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            if line.startswith("{"):
                results.append(json.loads(line))
    for case in ("restart", "drain"):
        rows = [r for r in results if r.get("case") == case]
        if not rows:
            continue
        size = rows[0].get("ids") if case == "restart" else rows[0].get("waiters")
        what = "ids" if case == "restart" else "waiting polls"
        print(f"{case} with {size:,} {what}: {len(rows)} round(s); median [min .. max]")
        for row_case, field, label, unit in ROWS:
            if row_case != case:
                continue
            values = [r[field] for r in rows if isinstance(r.get(field), (int, float))]
            if not values:
                print(f"  {label:<40} n/a")
                continue
            med = statistics.median(values)
            line = f"  {label:<40} {fmt(med, unit)}"
            if len(values) > 1 and min(values) == max(values):
                line += "  (every round)"
            elif len(values) > 1:
                line += f"  [{fmt(min(values), unit, True)} .. {fmt(max(values), unit, True)}]"
            if len(values) < len(rows):
                line += f"  ({len(values)} of {len(rows)} rounds)"
            print(line)
        if case == "restart":
            checked = sum(r.get("verify_checked") or 0 for r in rows)
            ok = sum(r.get("verify_ok") or 0 for r in rows)
            neg = all(r.get("unknown_is_404") is True for r in rows)
            print(f"  {'ids checked after restart (seq, info)':<40} {ok}/{checked} ok; "
                  f"an unknown id answers 404: {'yes' if neg else 'NO'}")
        bad = [r["round"] for r in rows if not r.get("ok")]
        print(f"  {'rounds with a failed check':<40} {bad if bad else 'none'}")


def main(argv):
    if len(argv) == 3 and argv[1] == "log-metrics":
        log_metrics(argv[2])
    elif len(argv) == 7 and argv[1] == "check-ids":
        check_ids(int(argv[2]), argv[3], argv[4], int(argv[5]), int(argv[6]))
    elif len(argv) == 3 and argv[1] == "summary":
        summary(argv[2])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main(sys.argv)
