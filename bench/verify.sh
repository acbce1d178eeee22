#!/usr/bin/env bash
# bench/verify.sh — VERIFY's throughput, and what it costs a running application.
#
#   bench/verify.sh
#   VERIFY_SCALE=10 VERIFY_SECONDS=20 bench/verify.sh
#
# On a fresh pair of servers (Postgres 15 -> 18, pgbench -i -s $VERIFY_SCALE replicated), with
# pgbench -c $VERIFY_CLIENTS -j 2 -M prepared -l running through pgcutover:
#   baseline   pgbench alone for $VERIFY_SECONDS s: latency p50/p99/avg, tps;
#   verify     the same load while `VERIFY` runs unthrottled: its duration, rows per second and
#              MB/s of row text per side (from the verify_* metrics), every table's result, and
#              the latency of the transactions that completed while it ran;
#   verify-N   the same with `VERIFY rows_per_second=N` for each N in $VERIFY_RATES.
#   pgcopydb   `pgcopydb compare data` on the same data, when the installed pgcopydb has it.
# Prints a summary table; exit status 1 if a VERIFY failed or reported a table not equal, or
# pgbench failed.
#
# Environment:
#   VERIFY_SCALE=50          pgbench -i scale (50: 5,000,000 accounts rows)
#   VERIFY_CLIENTS=4         pgbench clients
#   VERIFY_SECONDS=30        baseline length; the verify phases run pgbench until VERIFY ends
#   VERIFY_RATES="20000"     rows_per_second limits to measure ("" skips them)
#   VERIFY_CHUNK_ROWS=5000   chunk_rows
#   BENCH_SKIP_DEPS=1, PGCUTOVER_BIN=PATH   as for bench/run.sh
# shellcheck disable=SC2154 # PGL_PORT_<name> and friends are set by pgl_start (scripts/pg-local.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$PWD"

VERIFY_SCALE="${VERIFY_SCALE:-50}"
VERIFY_CLIENTS="${VERIFY_CLIENTS:-4}"
VERIFY_SECONDS="${VERIFY_SECONDS:-30}"
VERIFY_RATES="${VERIFY_RATES-20000}"
VERIFY_CHUNK_ROWS="${VERIFY_CHUNK_ROWS:-5000}"

say() { echo "verify-bench: $*" >&2; }
die() { echo "verify-bench: ERROR: $*" >&2; exit 1; }

# shellcheck source=bench/common.sh
. "$REPO/bench/common.sh"
bench_init

now() { date +%s.%N; }
secs_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# ------------------------------------------------------------------ servers, data, proxy
pgl_start old 15
pgl_start new 18
say "pgbench -i -s $VERIFY_SCALE on 15"
pgl_pgbench old postgres -i -q -s "$VERIFY_SCALE" >"$PGL_ROOT/init.log" 2>&1 || die "pgbench -i failed: $(tail -n 5 "$PGL_ROOT/init.log")"
t_copy="$(now)"
pgl_replicate old new postgres
say "initial copy to 18 took $(secs_between "$t_copy" "$(now)") s"
PROXY_PORT="$(pgl_free_port)"
ADMIN_PORT="$(pgl_free_port)"
METRICS_PORT="$(pgl_free_port)"
CONFIG="$PGL_ROOT/proxy.toml"
cat >"$CONFIG" <<EOF
[verify]
chunk_rows = $VERIFY_CHUNK_ROWS
EOF
PGCUTOVER_LOG="${PGCUTOVER_LOG:-info}" pgl_spawn proxy "$PGCUTOVER" serve --config "$CONFIG" --listen "127.0.0.1:$PROXY_PORT" \
    --old "$(pgl_url old)" --new "$(pgl_url new)" --admin-listen "127.0.0.1:$ADMIN_PORT" \
    --metrics-listen "127.0.0.1:$METRICS_PORT" --auth trust
pgl_wait_port "$PROXY_PORT" 30 || die "pgcutover did not start: $(tail -n 20 "$PGL_ROOT/proxy.log")"
pgl_wait_port "$ADMIN_PORT" 10 || die "no admin console"

admin() { "$PGCUTOVER" admin --addr "127.0.0.1:$ADMIN_PORT" "$@"; }
# Sum of a metric's samples whose labels contain $2 (e.g. side="old").
metric() {
    python3 - "$METRICS_PORT" "$1" "$2" <<'PY'
import sys, urllib.request
port, name, label = sys.argv[1], sys.argv[2], sys.argv[3]
text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10).read().decode()
total = 0.0
for line in text.splitlines():
    if line.startswith(name + "{") and label in line:
        total += float(line.rsplit(" ", 1)[1])
print(int(total))
PY
}

# Latency of the transactions that completed in [from, to] (epoch seconds) in pgbench -l logs:
# "count p50_ms p99_ms avg_ms tps".
latency() {
    python3 - "$1" "$2" "$3"/tx.* <<'PY'
import sys
lo, hi = float(sys.argv[1]), float(sys.argv[2])
lat = []
for path in sys.argv[3:]:
    for line in open(path):
        f = line.split()
        if len(f) < 6 or not f[2].isdigit():
            continue
        end = int(f[4]) + int(f[5]) / 1e6
        if lo <= end <= hi:
            lat.append(int(f[2]) / 1000.0)
lat.sort()
def pct(q):
    return lat[min(len(lat) - 1, int(round(q * (len(lat) - 1))))] if lat else float("nan")
avg = sum(lat) / len(lat) if lat else float("nan")
print(f"{len(lat)} {pct(0.5):.2f} {pct(0.99):.2f} {avg:.2f} {len(lat) / max(hi - lo, 1e-9):.0f}")
PY
}

start_pgbench() {
    local tag="$1" seconds="$2"
    mkdir -p "$PGL_ROOT/$tag"
    pgl_spawn "pgbench-$tag" env PGSSLMODE=disable PGGSSENCMODE=disable \
        "$PGL_CLIENT_BIN/pgbench" -h 127.0.0.1 -p "$PROXY_PORT" -U postgres -c "$VERIFY_CLIENTS" -j 2 \
        -T "$seconds" -M prepared -n -l --log-prefix="$PGL_ROOT/$tag/tx" postgres
    BENCH_PID="$PGL_SPAWNED_PID"
}

stop_pgbench() {
    pgl_kill "$BENCH_PID" 10 || true
}

ROWS=()
FAILED=0

# ------------------------------------------------------------------ baseline
say "=== baseline: pgbench -c $VERIFY_CLIENTS for ${VERIFY_SECONDS}s through pgcutover"
start_pgbench baseline "$((VERIFY_SECONDS + 2))"
sleep 2
b0="$(now)"
sleep "$VERIFY_SECONDS"
b1="$(now)"
set +e
wait "$BENCH_PID"
set -e
read -r n p50 p99 avg tps <<<"$(latency "$b0" "$b1" "$PGL_ROOT/baseline")"
say "baseline: $n transactions, p50 $p50 ms, p99 $p99 ms, avg $avg ms, $tps tps"
ROWS+=("baseline|-|-|-|-|-|$p50|$p99|$avg|$tps|-")

# ------------------------------------------------------------------ VERIFY under load
run_verify() {
    local tag="$1" options="$2"
    say "=== $tag: VERIFY $options while pgbench -c $VERIFY_CLIENTS runs"
    start_pgbench "$tag" 3600
    sleep 3
    local rows_old0 rows_new0 bytes_old0 bytes_new0
    rows_old0="$(metric pgcutover_verify_rows_total 'side="old"')"
    rows_new0="$(metric pgcutover_verify_rows_total 'side="new"')"
    bytes_old0="$(metric pgcutover_verify_bytes_total 'side="old"')"
    bytes_new0="$(metric pgcutover_verify_bytes_total 'side="new"')"
    local v0 v1 out rc
    v0="$(now)"
    set +e
    # shellcheck disable=SC2086 # options is a list of words on purpose
    out="$(admin VERIFY $options 2>&1)"
    rc=$?
    set -e
    v1="$(now)"
    stop_pgbench
    printf '%s\n' "$out" | sed 's/^/    | /' >&2
    local secs rows_old rows_new mb_old mb_new results
    secs="$(secs_between "$v0" "$v1")"
    rows_old=$(( $(metric pgcutover_verify_rows_total 'side="old"') - rows_old0 ))
    rows_new=$(( $(metric pgcutover_verify_rows_total 'side="new"') - rows_new0 ))
    mb_old="$(awk -v b="$(( $(metric pgcutover_verify_bytes_total 'side="old"') - bytes_old0 ))" -v s="$secs" 'BEGIN { printf "%.1f", b / 1048576 / s }')"
    mb_new="$(awk -v b="$(( $(metric pgcutover_verify_bytes_total 'side="new"') - bytes_new0 ))" -v s="$secs" 'BEGIN { printf "%.1f", b / 1048576 / s }')"
    # The console prints columns separated by two or more spaces.
    results="$(grep -oE '  (equal|differ|still changing|error|stopped)  ' <<<"$out" | awk '{$1=$1; print}' | sort | uniq -c | awk '{ n = $1; $1 = ""; sub(/^ /, ""); printf "%s%s %s", sep, n, $0; sep = ", " }')"
    if [ "$rc" -ne 0 ] || grep -qE '  (differ|error|stopped)  ' <<<"$out"; then FAILED=1; fi
    read -r n p50 p99 avg tps <<<"$(latency "$v0" "$v1" "$PGL_ROOT/$tag")"
    say "$tag: ${secs}s, old $rows_old rows ($(awk -v r="$rows_old" -v s="$secs" 'BEGIN { printf "%.0f", r / s }') rows/s, $mb_old MB/s), new $rows_new rows; pgbench p50 $p50 ms p99 $p99 ms avg $avg ms $tps tps"
    ROWS+=("$tag|$secs|$(awk -v r="$rows_old" -v s="$secs" 'BEGIN { printf "%.0f", r / s }')|$mb_old|$(awk -v r="$rows_new" -v s="$secs" 'BEGIN { printf "%.0f", r / s }')|$mb_new|$p50|$p99|$avg|$tps|${results:-?}")
}

run_verify verify ""
for rate in $VERIFY_RATES; do
    run_verify "verify-$rate" "rows_per_second=$rate"
done

# ------------------------------------------------------------------ pgcopydb
PGCOPYDB_NOTE=""
if ! command -v pgcopydb >/dev/null 2>&1; then
    PGCOPYDB_NOTE="pgcopydb is not installed (Debian: apt-get install pgcopydb)"
elif ! pgcopydb compare data --help >/dev/null 2>&1; then
    PGCOPYDB_NOTE="the installed $(pgcopydb --version 2>/dev/null | grep -m1 -o 'pgcopydb version [^ ]*') has no 'compare' command (it came in 0.13; Debian 12 ships 0.10)"
else
    say "=== pgcopydb compare data (no load)"
    c0="$(now)"
    set +e
    pgcopydb compare data --source "$(pgl_url old)" --target "$(pgl_url new)" --dir "$PGL_ROOT/pgcopydb" >"$PGL_ROOT/pgcopydb.log" 2>&1
    crc=$?
    set -e
    c1="$(now)"
    PGCOPYDB_NOTE="pgcopydb compare data: exit $crc in $(secs_between "$c0" "$c1") s (no load; see its log)"
fi
say "$PGCOPYDB_NOTE"

# ------------------------------------------------------------------ summary
echo
echo "VERIFY benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
echo "pgbench -i -s $VERIFY_SCALE, pgbench -c $VERIFY_CLIENTS -j 2 -M prepared through pgcutover, chunk_rows $VERIFY_CHUNK_ROWS; load average now: $(cut -d' ' -f1-3 /proc/loadavg)"
echo
printf '| %-16s | %7s | %12s | %9s | %12s | %9s | %8s | %8s | %8s | %6s | %s |\n' scenario "VERIFY s" "old rows/s" "old MB/s" "new rows/s" "new MB/s" "p50 ms" "p99 ms" "avg ms" tps results
printf '|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|%s|\n' "------------------" "---------" "--------------" "-----------" "--------------" "-----------" "----------" "----------" "----------" "--------" "---------"
for row in "${ROWS[@]}"; do
    IFS='|' read -r a b c d e f g h i j k <<<"$row"
    printf '| %-16s | %7s | %12s | %9s | %12s | %9s | %8s | %8s | %8s | %6s | %s |\n' "$a" "$b" "$c" "$d" "$e" "$f" "$g" "$h" "$i" "$j" "$k"
done
echo
echo "pgcopydb: $PGCOPYDB_NOTE"
exit "$FAILED"
