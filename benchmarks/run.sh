#!/usr/bin/env bash
# taskwarren in the anchor benchmark, interleaved with raw py-amqp, Celery and Dramatiq.
#
# Usage:
#   bash benchmarks/run.sh [N] [REPS]        full run (default N=10000, REPS=3)
#   bash benchmarks/run.sh --ratios FILE...  re-print the taskwarren ratios of results-*.jsonl
#
# Env (passed through to the harness; see /work/shared/bench/README.md):
#   BENCH_DIR=/work/shared/bench   the harness (read-only)
#   VENV=/tmp/anchor-venv          its venv (made by setup.sh; taskwarren installed editable)
#   OUT=/tmp/anchor-bench          results-*.jsonl, table-*.md, logs, marks
#   SYSTEMS="raw celery dramatiq taskwarren"
#   SKIP_RAW_SUITE=1, LAT_N=200, RAW_SUITE_N=...
set -uo pipefail
export PYTHONDONTWRITEBYTECODE=1   # no __pycache__ in the repo (the worker imports from here)
HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
REPO="$(cd "$HERE/.." && pwd)"
BENCH_DIR="${BENCH_DIR:-/work/shared/bench}"
export VENV="${VENV:-/tmp/anchor-venv}"
export OUT="${OUT:-/tmp/anchor-bench}"
export BENCH_HARNESS_DIR="$BENCH_DIR"
export BENCH_PLUGIN_taskwarren="$HERE/taskwarren_bench.py"
PY="$VENV/bin/python"

ratios() {  # taskwarren / raw and taskwarren / dramatiq from results-*.jsonl files
  "$PY" - "$@" <<'EOF'
import json, statistics, sys
rows = []
for p in sys.argv[1:]:
    with open(p) as f:
        rows += [json.loads(l) for l in f if l.startswith("{")]
ok = [r for r in rows if r.get("mode") in ("enqueue", "drain", "latency") and "error" not in r]
bad = [r for r in rows if r.get("mode") == "error" or "error" in r]

def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else None

def get(system, mode, variant, task=None, field="rate"):
    return med([r.get(field) for r in ok if r["system"] == system and r["mode"] == mode
                and r["variant"] == variant and (task is None or r.get("task") == task)])

def ratio(a, b):
    return "-" if a is None or b is None or b == 0 else "%.2f" % (a / b)

def f0(x):
    return "-" if x is None else "%.0f" % x

def f2(x):
    return "-" if x is None else "%.2f" % x

tw_drain = sorted({(r["variant"], r["task"]) for r in ok
                   if r["system"] == "taskwarren" and r["mode"] == "drain"})
print("\n## taskwarren against raw py-amqp and Dramatiq (medians over reps, same run)\n")
print("Drain: raw = c2-p100-multi (2 bare consumer processes, noop only); "
      "dramatiq = p2-t8 (its default threads) and p2-t1.\n")
print("| taskwarren variant | task | taskwarren drain/s | raw c2 | tw/raw | dramatiq p2-t8 | tw/dramatiq p2-t8 | dramatiq p2-t1 | tw/dramatiq p2-t1 |")
print("|---|---|---|---|---|---|---|---|---|")
for v, t in tw_drain:
    tw = get("taskwarren", "drain", v, t)
    raw = get("raw", "drain", "c2-p100-multi", t)
    d8 = get("dramatiq", "drain", "p2-t8", t)
    d1 = get("dramatiq", "drain", "p2-t1", t)
    print("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        v, t, f0(tw), f0(raw), ratio(tw, raw), f0(d8), ratio(tw, d8), f0(d1), ratio(tw, d1)))

print("\nEnqueue (noop and sleep1ms pooled): taskwarren's `.send()` always waits for the confirm, "
      "so its peers are raw `confirm-each` and Dramatiq/Celery `confirm`; `send_many` "
      "(pipelined confirms) compares with raw `window1000`.\n")
print("| taskwarren variant | taskwarren/s | raw confirm-each | tw/raw c-e | raw window1000 | tw/raw w1000 | dramatiq confirm | tw/dramatiq confirm | dramatiq default (no confirms) |")
print("|---|---|---|---|---|---|---|---|---|")
tw_enq = sorted({r["variant"] for r in ok if r["system"] == "taskwarren" and r["mode"] == "enqueue"})
for v in tw_enq:
    tw = get("taskwarren", "enqueue", v)
    rce, rw = get("raw", "enqueue", "confirm-each"), get("raw", "enqueue", "window1000")
    dc, dd = get("dramatiq", "enqueue", "confirm"), get("dramatiq", "enqueue", "default")
    print("| %s | %s | %s | %s | %s | %s | %s | %s | %s |" % (
        v, f0(tw), f0(rce), ratio(tw, rce), f0(rw), ratio(tw, rw), f0(dc), ratio(tw, dc), f0(dd)))

print("\nLatency at low load (ms, median of per-rep p50 / p99):\n")
print("| system | variant | p50 | p99 |")
print("|---|---|---|---|")
for s, v in [("raw", "c1-p100-multi"), ("dramatiq", "p2-t8"), ("celery", "prefork-c2-pm4")] + \
        sorted({("taskwarren", r["variant"]) for r in ok
                if r["system"] == "taskwarren" and r["mode"] == "latency"}):
    p50 = get(s, "latency", v, field="p50_ms")
    if p50 is not None:
        print("| %s | %s | %s | %s |" % (s, v, f2(p50), f2(get(s, "latency", v, field="p99_ms"))))
tw_bad = [r for r in bad if r.get("system") == "taskwarren"]
print("\ntaskwarren failures: %d" % len(tw_bad))
for r in tw_bad:
    print("- " + json.dumps(r)[:400])
EOF
}

if [ "${1:-}" = "--ratios" ]; then
  shift; ratios "$@"; exit $?
fi

N="${1:-10000}"
REPS="${2:-3}"
export SYSTEMS="${SYSTEMS:-raw celery dramatiq taskwarren}"

if [ ! -x "$PY" ]; then
  echo "no venv at $VENV: running $BENCH_DIR/setup.sh" >&2
  VENV="$VENV" bash "$BENCH_DIR/setup.sh" || exit 1
fi
if ! "$PY" -c 'import taskwarren' 2>/dev/null; then
  echo "installing taskwarren (editable) into $VENV" >&2
  "$PY" -m pip install -q -e "$REPO" || exit 1
fi

mkdir -p "$OUT"
TW_VERSION="taskwarren $("$PY" -c 'import taskwarren; print(taskwarren.__version__)') at $(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet 2>/dev/null || echo ' (uncommitted changes)')"
echo "$TW_VERSION" >&2
before="$(ls "$OUT"/results-*.jsonl 2>/dev/null | sort | tail -n 1)"
bash "$BENCH_DIR/run_all.sh" "$N" "$REPS"
rc=$?
res="$(ls "$OUT"/results-*.jsonl 2>/dev/null | sort | tail -n 1)"
if [ -z "$res" ] || [ "$res" = "$before" ]; then
  echo "run_all.sh wrote no new results file (rc=$rc)" >&2
  exit 1
fi
stamp="$(basename "$res" .jsonl)"; stamp="${stamp#results-}"
{ echo "<!-- $TW_VERSION; N=$N REPS=$REPS SYSTEMS=$SYSTEMS -->"; ratios "$res"; } | tee "$OUT/taskwarren-ratios-$stamp.md"
echo "results: $res ; tables: $OUT/table-$stamp.md $OUT/taskwarren-ratios-$stamp.md" >&2
exit $rc
