#!/usr/bin/env bash
# bench/cpu-split.sh — where each proxy's CPU per transaction goes: user space vs kernel.
#
#   bench/cpu-split.sh
#   SPLIT_ROUNDS=3 SPLIT_SECONDS=6 SPLIT_CLIENTS=16 bench/cpu-split.sh
#
# One Postgres 15, pgcutover and PgBouncer (session pooling) in front of it; pgbench -S
# -M prepared through each in turn, SPLIT_ROUNDS times. For each run: the proxy's utime and
# stime (/proc/<pid>/stat, all threads) divided by the transactions pgbench processed.
# Environment: SPLIT_ROUNDS=3 SPLIT_SECONDS=6 SPLIT_CLIENTS=16 SPLIT_SCALE=10,
#   SPLIT_WORKERS= (pgcutover --workers; default: its own, one per CPU),
#   BENCH_SKIP_DEPS=1, PGCUTOVER_BIN=PATH   as for bench/run.sh
# shellcheck disable=SC2154 # PGL_PORT_<name> and friends are set by pgl_start (scripts/pg-local.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$PWD"

SPLIT_ROUNDS="${SPLIT_ROUNDS:-3}"
SPLIT_SECONDS="${SPLIT_SECONDS:-6}"
SPLIT_CLIENTS="${SPLIT_CLIENTS:-16}"
SPLIT_SCALE="${SPLIT_SCALE:-10}"

say() { echo "cpu-split: $*" >&2; }
die() { echo "cpu-split: ERROR: $*" >&2; exit 1; }

# shellcheck source=bench/common.sh
. "$REPO/bench/common.sh"
bench_init pgbouncer

pgl_start pg 15
pgl_pgbench pg postgres -i -q -s "$SPLIT_SCALE" >"$PGL_ROOT/init.log" 2>&1 || die "pgbench -i failed"

CUT_PORT="$(pgl_free_port)"
workers=()
if [ -n "${SPLIT_WORKERS:-}" ]; then workers=(--workers "$SPLIT_WORKERS"); fi
PGCUTOVER_LOG=warn pgl_spawn pgcutover "$PGCUTOVER" serve --listen "127.0.0.1:$CUT_PORT" --old "$(pgl_url pg)" --auth trust "${workers[@]}"
CUT_PID="$PGL_SPAWNED_PID"
pgl_wait_port "$CUT_PORT" 30 || die "pgcutover did not start"

bench_pgbouncer pgbouncer "host=127.0.0.1 port=$PGL_PORT_pg dbname=postgres user=postgres" "auth_type = trust" "pool_mode = session" \
    "max_client_conn = 200" "default_pool_size = 100"
BOUNCER_PORT="$PROXY_PORT"
BOUNCER_PID="$PROXY_PID"

# run NAME PORT PID: one pgbench run; prints "NAME tx user_us sys_us" per transaction.
run() {
    local name="$1" port="$2" pid="$3" u0 s0 u1 s1 tx
    read -r u0 s0 < <(awk '{ print $14, $15 }' "/proc/$pid/stat")
    tx="$(pgl_client pgbench -h 127.0.0.1 -p "$port" -U postgres -c "$SPLIT_CLIENTS" -j 2 -T "$SPLIT_SECONDS" -S -M prepared postgres 2>/dev/null \
        | awk '/number of transactions actually processed/ { split($NF, a, "/"); print a[1] }')"
    read -r u1 s1 < <(awk '{ print $14, $15 }' "/proc/$pid/stat")
    if [ -z "$tx" ] || [ "$tx" -le 0 ]; then die "pgbench through $name processed nothing"; fi
    awk -v n="$name" -v tx="$tx" -v u="$((u1 - u0))" -v s="$((s1 - s0))" -v hz="$CLK_TCK" \
        'BEGIN { printf "%-10s %9d tx   user %5.2f us/tx   kernel %5.2f us/tx   total %5.2f us/tx\n", n, tx, u * 1e6 / hz / tx, s * 1e6 / hz / tx, (u + s) * 1e6 / hz / tx }'
}

say "pgbench -S -M prepared -c $SPLIT_CLIENTS -T $SPLIT_SECONDS, $SPLIT_ROUNDS rounds, interleaved"
for _ in $(seq 1 "$SPLIT_ROUNDS"); do
    run pgcutover "$CUT_PORT" "$CUT_PID"
    run pgbouncer "$BOUNCER_PORT" "$BOUNCER_PID"
done
