#!/usr/bin/env bash
# bench/run.sh — throughput, CPU cost and idle-session memory of pgcutover vs. PgBouncer vs. a
# direct connection, all against the same local Postgres 15 in the same run.
#
#   bench/run.sh                      # full matrix, ~5 s per run (about 5 minutes in all)
#   BENCH_SECONDS=10 BENCH_ROUNDS=3 bench/run.sh
#
# Matrix: pgbench select-only (-S) and TPC-B-like, each -M prepared and -M simple, at 1, 16 and 64
# clients (-j 2), against
#   direct     Postgres 15 itself
#   pgcutover  target/release/pgcutover serve --auth trust (old server only: no cutover here)
#   pgbouncer  PgBouncer, session pooling, auth_type trust, run as the unprivileged server user
# Runs are interleaved (for each configuration: direct, pgcutover, pgbouncer) so drift on the
# machine affects all three alike. Each proxy's CPU time is utime+stime of its process from
# /proc/<pid>/stat (all threads) before/after each pgbench run, divided by the transactions.
# Then memory per idle session: a fresh pgcutover and a fresh PgBouncer each get
# $BENCH_IDLE_SESSIONS idle sessions (bench/pgclient.py: raw protocol, no libpq); VmRSS and
# Pss before/after, divided by the sessions.
#
# Not part of the test suite. Environment:
#   BENCH_SECONDS=5            duration of each pgbench run
#   BENCH_ROUNDS=1             repeat the matrix; the report takes the median TPS per cell
#   BENCH_CLIENTS="1 16 64"    client counts
#   BENCH_JOBS=2               pgbench threads (-j; capped at the client count)
#   BENCH_MODES="select tpcb"  select = pgbench -S, tpcb = the default TPC-B-like script
#   BENCH_PROTOCOLS="prepared simple"
#   BENCH_TARGETS="direct pgcutover pgbouncer"
#   BENCH_SCALE=10             pgbench -i scale
#   BENCH_IDLE_SESSIONS=1000   sessions for the memory test (0 skips it)
#   BENCH_WORKERS=             pgcutover --workers (default: its own, one per CPU)
#   BENCH_OUT=FILE             also write the report (markdown) to FILE
#   BENCH_SKIP_DEPS=1          do not run scripts/install-deps.sh
#   PGCUTOVER_BIN=PATH         use this binary instead of building target/release/pgcutover
# shellcheck disable=SC2154 # PGL_PORT_<name> and friends are set by pgl_start (scripts/pg-local.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$PWD"

BENCH_SECONDS="${BENCH_SECONDS:-5}"
BENCH_ROUNDS="${BENCH_ROUNDS:-1}"
BENCH_CLIENTS="${BENCH_CLIENTS:-1 16 64}"
BENCH_JOBS="${BENCH_JOBS:-2}"
BENCH_MODES="${BENCH_MODES:-select tpcb}"
BENCH_PROTOCOLS="${BENCH_PROTOCOLS:-prepared simple}"
BENCH_TARGETS="${BENCH_TARGETS:-direct pgcutover pgbouncer}"
BENCH_SCALE="${BENCH_SCALE:-10}"
BENCH_IDLE_SESSIONS="${BENCH_IDLE_SESSIONS:-1000}"
BENCH_WORKERS="${BENCH_WORKERS:-}"

say() { echo "bench: $*" >&2; }
die() { echo "bench: ERROR: $*" >&2; exit 1; }

# shellcheck source=bench/common.sh
. "$REPO/bench/common.sh"
bench_init pgbouncer

pgl_start pg 15
say "pgbench -i -s $BENCH_SCALE"
pgl_pgbench pg postgres -i -q -s "$BENCH_SCALE" >"$PGL_ROOT/pgbench-init.log" 2>&1 \
    || die "pgbench -i failed: $(tail -n 5 "$PGL_ROOT/pgbench-init.log")"
PG_PORT="$PGL_PORT_pg"

# ------------------------------------------------------------------ proxies
start_pgcutover() { # NAME -> sets PROXY_PORT, PROXY_PID
    local name="$1"
    PROXY_PORT="$(pgl_free_port)"
    local workers=()
    if [ -n "$BENCH_WORKERS" ]; then workers=(--workers "$BENCH_WORKERS"); fi
    PGCUTOVER_LOG=warn pgl_spawn "$name" "$PGCUTOVER" serve --listen "127.0.0.1:$PROXY_PORT" \
        --old "$(pgl_url pg)" --auth trust "${workers[@]}"
    PROXY_PID="$PGL_SPAWNED_PID"
    pgl_wait_port "$PROXY_PORT" 30 || die "pgcutover did not start: $(tail -n 20 "$PGL_ROOT/$name.log")"
}

start_pgbouncer() { # NAME -> sets PROXY_PORT, PROXY_PID
    # $BENCH_IDLE_SESSIONS idle sessions or 64 benchmark clients, each with a server connection.
    bench_pgbouncer "$1" "host=127.0.0.1 port=$PG_PORT dbname=postgres user=postgres" "auth_type = trust" "pool_mode = session" \
        "max_client_conn = $((BENCH_IDLE_SESSIONS + 200))" "default_pool_size = $((BENCH_IDLE_SESSIONS + 100))" "max_db_connections = 0"
}

declare -A PORT PID
PORT[direct]="$PG_PORT"
PID[direct]=""
for t in $BENCH_TARGETS; do
    case "$t" in
        direct) ;;
        pgcutover) start_pgcutover pgcutover; PORT[pgcutover]="$PROXY_PORT"; PID[pgcutover]="$PROXY_PID" ;;
        pgbouncer) start_pgbouncer pgbouncer; PORT[pgbouncer]="$PROXY_PORT"; PID[pgbouncer]="$PROXY_PID" ;;
        *) die "unknown target $t (valid: direct pgcutover pgbouncer)" ;;
    esac
done

# ------------------------------------------------------------------ throughput
RAW="$PGL_ROOT/raw.tsv"
printf 'mode\tprotocol\tclients\ttarget\tround\ttps\ttransactions\tfailed\tcpu_ticks\tloadavg\n' >"$RAW"

runs=0
for _ in $BENCH_MODES; do for _ in $BENCH_PROTOCOLS; do for _ in $BENCH_CLIENTS; do for _ in $BENCH_TARGETS; do
    runs=$((runs + 1))
done; done; done; done
runs=$((runs * BENCH_ROUNDS))
say "$runs pgbench runs of ${BENCH_SECONDS}s (direct: port ${PORT[direct]}$(for t in $BENCH_TARGETS; do [ "$t" = direct ] || printf ', %s: port %s pid %s' "$t" "${PORT[$t]}" "${PID[$t]}"; done))"

n=0
for round in $(seq 1 "$BENCH_ROUNDS"); do
    for mode in $BENCH_MODES; do
        case "$mode" in select) script=(-S) ;; tpcb) script=() ;; *) die "unknown mode $mode (valid: select tpcb)" ;; esac
        for proto in $BENCH_PROTOCOLS; do
            for clients in $BENCH_CLIENTS; do
                jobs=$((BENCH_JOBS < clients ? BENCH_JOBS : clients))
                for target in $BENCH_TARGETS; do
                    n=$((n + 1))
                    # Same starting state for every run; done directly on the server.
                    pgl_sql pg postgres "TRUNCATE pgbench_history" >/dev/null
                    pgl_sql pg postgres "VACUUM pgbench_branches, pgbench_tellers, pgbench_history" >/dev/null
                    pid="${PID[$target]}"
                    before=0
                    [ -z "$pid" ] || before="$(pgl_cpu_ticks "$pid")"
                    log="$PGL_ROOT/pgbench-$mode-$proto-$clients-$target-$round.log"
                    if ! pgl_client pgbench -h 127.0.0.1 -p "${PORT[$target]}" -U postgres -n "${script[@]}" \
                        -M "$proto" -c "$clients" -j "$jobs" -T "$BENCH_SECONDS" postgres >"$log" 2>&1; then
                        cat "$log" >&2
                        die "pgbench failed: $mode $proto $clients clients via $target"
                    fi
                    after=0
                    [ -z "$pid" ] || after="$(pgl_cpu_ticks "$pid")"
                    result="$(bench_pgbench_result "$log")"
                    read -r tps tx failed <<<"$result"
                    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$proto" "$clients" "$target" "$round" \
                        "$tps" "$tx" "$failed" "$((after - before))" "$(cut -d' ' -f1 /proc/loadavg)" >>"$RAW"
                    say "[$n/$runs] $mode -M $proto -c $clients via $target: $tps tps, $tx tx, cpu $((after - before)) ticks"
                done
            done
        done
    done
done

# ------------------------------------------------------------------ memory per idle session
MEM="$PGL_ROOT/memory.tsv"
printf 'target\tsessions\trss_before\trss_after\trss_per_session\tpss_before\tpss_after\tpss_per_session\n' >"$MEM"
if [ "$BENCH_IDLE_SESSIONS" -gt 0 ]; then
    # Free the benchmark proxies' server connections first.
    for t in pgcutover pgbouncer; do
        [ -n "${PID[$t]:-}" ] && pgl_kill "${PID[$t]}" 10
    done
    for t in pgcutover pgbouncer; do
        case " $BENCH_TARGETS " in *" $t "*) ;; *) continue ;; esac
        if [ "$t" = pgcutover ]; then start_pgcutover mem-pgcutover; else start_pgbouncer mem-pgbouncer; fi
        sleep 1
        say "memory: $BENCH_IDLE_SESSIONS idle sessions through a fresh $t (pid $PROXY_PID)"
        out="$(python3 "$REPO/bench/pgclient.py" measure --port "$PROXY_PORT" --count "$BENCH_IDLE_SESSIONS" --pid "$PROXY_PID")" \
            || { echo "$out" >&2; die "idle-session measurement via $t failed"; }
        printf '%s\n' "$out" | sed 's/^/  /' >&2 # indent for the log
        result="$(echo "$out" | sed -n 's/^RESULT //p')"
        get() { tr ' ' '\n' <<<"$result" | sed -n "s/^$1=//p"; }
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$t" "$(get sessions)" "$(get rss_before_0)" "$(get rss_after_0)" \
            "$(get rss_per_session_0)" "$(get pss_before_0)" "$(get pss_after_0)" "$(get pss_per_session_0)" >>"$MEM"
        pgl_kill "$PROXY_PID" 10
    done
fi

# ------------------------------------------------------------------ report
versions="pgcutover $("$PGCUTOVER" --version | awk '{print $2}') ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')$(git -C "$REPO" diff --quiet HEAD -- src 2>/dev/null || echo '+uncommitted src changes')), $("$PGL_PG15_BIN/postgres" --version | sed 's/postgres (PostgreSQL) /PostgreSQL /'), $("$PGBOUNCER" --version | head -n1), $("$PGL_PG15_BIN/pgbench" --version | sed 's/ (PostgreSQL)//')"
if [ -n "$BENCH_WORKERS" ]; then versions="$versions; pgcutover --workers $BENCH_WORKERS"; fi
machine="$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores, $(awk '/MemTotal/ { printf "%.0f GiB", $2 / 1048576 }' /proc/meminfo)"
report="$(python3 "$REPO/bench/report.py" --raw "$RAW" --memory "$MEM" --clk-tck "$CLK_TCK" \
    --seconds "$BENCH_SECONDS" --rounds "$BENCH_ROUNDS" --scale "$BENCH_SCALE" --jobs "$BENCH_JOBS" \
    --versions "$versions" --machine "$machine" --cores "$(nproc)")"
echo "$report"
if [ -n "${BENCH_OUT:-}" ]; then
    printf '%s\n' "$report" >"$BENCH_OUT"
    say "report written to $BENCH_OUT"
fi
