#!/usr/bin/env bash
# bench/cutover.sh — what a CUTOVER costs the clients.
#
#   bench/cutover.sh
#   CUTOVER_CLIENTS="16 64" CUTOVER_SECONDS=20 CUTOVER_AT=8 bench/cutover.sh
#
# Scenarios, each on a fresh pair of servers (a cutover is one-way: 15 -> 18):
#   pgbench-N  pgbench -c N -j 2 -M prepared -l (TPC-B-like, per-transaction log) through
#              pgcutover; CUTOVER after $CUTOVER_AT s. From the logs: the longest transaction
#              overlapping the hold window (end of preflight to end of rebind, from the report's
#              phase durations) = the client-visible stall; the longest overlapping the whole
#              command (the preflight holds nothing, but its load can slow clients too); the
#              longest time in which no client completed anything; failed transactions.
#              Just before the CUTOVER, the replication apply lag under that load is sampled
#              (a row upserted on 15, polled on 18): the catch-up proof cannot beat it.
#   idle-N     N ($CUTOVER_IDLE_SESSIONS) idle sessions (bench/pgclient.py), then CUTOVER, timed;
#              afterwards every session must answer a query, from Postgres 18.
# Prints a summary table; exit status 1 if any CUTOVER failed or any transaction failed.
#
# Environment:
#   CUTOVER_CLIENTS="16 64"     pgbench scenarios ("" skips them)
#   CUTOVER_SECONDS=20          pgbench duration
#   CUTOVER_AT=8                seconds into the run when CUTOVER is sent
#   CUTOVER_SCALE=10            pgbench -i scale
#   CUTOVER_IDLE_SESSIONS=1000  idle scenario (0 skips it)
#   CUTOVER_OPTIONS=""          appended to the command, e.g. "drain_timeout=2s catchup_timeout=5s"
#   CUTOVER_KEEP_LOGS=DIR       copy pgbench logs, proxy logs and reports to DIR
#   BENCH_SKIP_DEPS=1, PGCUTOVER_BIN=PATH   as for bench/run.sh
# shellcheck disable=SC2154 # PGL_PORT_<name> and friends are set by pgl_start (scripts/pg-local.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$PWD"

CUTOVER_CLIENTS="${CUTOVER_CLIENTS-16 64}"
CUTOVER_SECONDS="${CUTOVER_SECONDS:-20}"
CUTOVER_AT="${CUTOVER_AT:-8}"
CUTOVER_SCALE="${CUTOVER_SCALE:-10}"
CUTOVER_IDLE_SESSIONS="${CUTOVER_IDLE_SESSIONS:-1000}"
CUTOVER_OPTIONS="${CUTOVER_OPTIONS:-}"

say() { echo "cutover-bench: $*" >&2; }
die() { echo "cutover-bench: ERROR: $*" >&2; exit 1; }

[ "$CUTOVER_AT" -lt "$CUTOVER_SECONDS" ] || die "CUTOVER_AT ($CUTOVER_AT) must be less than CUTOVER_SECONDS ($CUTOVER_SECONDS)"

# shellcheck source=bench/common.sh
. "$REPO/bench/common.sh"
bench_init
if [ -n "${CUTOVER_KEEP_LOGS:-}" ]; then mkdir -p "$CUTOVER_KEEP_LOGS"; fi

now() { date +%s.%N; }
ms_between() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.0f", (b - a) * 1000 }'; }
result_get() { tr ' ' '\n' <<<"$1" | sed -n "s/^$2=//p"; }
# A value from the CUTOVER report (rows "item  value  detail"): report_get TEXT ITEM
report_get() { awk -v item="$2" 'index($0, item) == 1 { rest = substr($0, length(item) + 1); sub(/^ +/, "", rest); split(rest, f, /  +/); print f[1]; exit }' <<<"$1"; }

# Fresh servers + replication + proxy for one scenario. Sets PROXY_PORT ADMIN_PORT PROXY_PID.
setup() {
    local tag="$1"
    pgl_destroy old
    pgl_destroy new
    pgl_start old 15
    pgl_start new 18
    pgl_pgbench old postgres -i -q -s "$CUTOVER_SCALE" >"$PGL_ROOT/init-$tag.log" 2>&1 \
        || die "pgbench -i failed: $(tail -n 5 "$PGL_ROOT/init-$tag.log")"
    pgl_sql old postgres "CREATE TABLE bench_lag (id int PRIMARY KEY, token text NOT NULL)" >/dev/null
    pgl_replicate old new postgres
    PROXY_PORT="$(pgl_free_port)"
    ADMIN_PORT="$(pgl_free_port)"
    PGCUTOVER_LOG="${PGCUTOVER_LOG:-info}" pgl_spawn "proxy-$tag" "$PGCUTOVER" serve --listen "127.0.0.1:$PROXY_PORT" \
        --old "$(pgl_url old)" --new "$(pgl_url new)" --admin-listen "127.0.0.1:$ADMIN_PORT" --auth trust
    PROXY_PID="$PGL_SPAWNED_PID"
    pgl_wait_port "$PROXY_PORT" 30 || die "pgcutover did not start: $(tail -n 20 "$PGL_ROOT/proxy-$tag.log")"
    pgl_wait_port "$ADMIN_PORT" 10 || say "warning: nothing listens on the admin port $ADMIN_PORT yet"
}

teardown() {
    local tag="$1"
    pgl_kill "$PROXY_PID" 10
    if [ -n "${CUTOVER_KEEP_LOGS:-}" ]; then
        cp "$PGL_ROOT/proxy-$tag.log" "$CUTOVER_KEEP_LOGS/" 2>/dev/null || true
    fi
}

cutover_cmd() {
    # shellcheck disable=SC2086 # CUTOVER_OPTIONS is a list of words on purpose
    "$PGCUTOVER" admin --addr "127.0.0.1:$ADMIN_PORT" CUTOVER $CUTOVER_OPTIONS
}

ROWS=()
FAILED=0
# Table rows: fields separated by \x1f (not a whitespace character, so empty fields survive `read`).
# shellcheck disable=SC2059 # the format is built just above, not data
ROW_FORMAT="$(printf '%%s\x1f%.0s' {1..11})%s"

# ------------------------------------------------------------------ pgbench scenarios
for clients in $CUTOVER_CLIENTS; do
    tag="pgbench-$clients"
    say "=== $tag: pgbench -c $clients -j 2 -T $CUTOVER_SECONDS -M prepared -l, CUTOVER at ${CUTOVER_AT}s"
    setup "$tag"
    logdir="$PGL_ROOT/$tag"
    mkdir -p "$logdir"
    pgl_spawn "$tag" env PGSSLMODE=disable PGGSSENCMODE=disable \
        "$PGL_CLIENT_BIN/pgbench" -h 127.0.0.1 -p "$PROXY_PORT" -U postgres -c "$clients" -j 2 \
        -T "$CUTOVER_SECONDS" -M prepared -l --log-prefix="$logdir/tx" postgres
    bench_pid="$PGL_SPAWNED_PID"
    # Apply lag sampling takes ~2 s; start it so the CUTOVER still comes at CUTOVER_AT.
    sleep "$((CUTOVER_AT > 3 ? CUTOVER_AT - 3 : 1))"
    lag_out="$(python3 "$REPO/bench/pgclient.py" lag --old-port "$PGL_PORT_old" --new-port "$PGL_PORT_new" --samples 5 --interval 0.3 --duration 2.5 2>&1)" \
        || say "apply-lag probe failed: $lag_out"
    lag="$(sed -n 's/^RESULT //p' <<<"$lag_out")"
    say "apply lag under load: median $(result_get "$lag" median_ms) ms, max $(result_get "$lag" max_ms) ms"
    kill -0 "$bench_pid" 2>/dev/null || die "pgbench ended before the cutover: $(tail -n 20 "$PGL_ROOT/$tag.log")"
    t0="$(now)"
    set +e
    report="$(cutover_cmd 2>&1)"
    rc=$?
    set -e
    t1="$(now)"
    if [ "$rc" -eq 0 ]; then
        say "CUTOVER completed in $(ms_between "$t0" "$t1") ms"
    else
        say "CUTOVER FAILED (exit $rc) after $(ms_between "$t0" "$t1") ms"
        FAILED=1
    fi
    printf '%s\n' "$report" | sed 's/^/    | /' >&2
    set +e
    wait "$bench_pid"
    bench_rc=$?
    set -e
    [ "$bench_rc" -eq 0 ] || { say "pgbench exited with $bench_rc: $(grep -E 'error|abort' "$PGL_ROOT/$tag.log" | head -n 5)"; FAILED=1; }
    # The hold window from the report: it starts when the preflight ends and lasts through the
    # rebind (phases are sequential; their durations are in the report).
    hold_args=()
    pre="$(report_get "$report" "phase preflight" | awk '{print $1}')"
    held="$(for ph in hold catch-up sequences rebind; do report_get "$report" "phase $ph"; done | awk '{ s += $1 } END { print s + 0 }')"
    if [ -n "$pre" ] && [ "$rc" -eq 0 ]; then
        hold_args=(--hold-from "$pre" --hold-to "$(awk -v a="$pre" -v b="$held" 'BEGIN { print a + b }')")
    fi
    tx_out="$(python3 "$REPO/bench/txlog.py" --t0 "$t0" --t1 "$t1" "${hold_args[@]}" "$logdir"/tx.* 2>&1)" || true
    printf '%s\n' "$tx_out" | grep -v '^RESULT' | sed 's/^/    /' >&2
    tx="$(sed -n 's/^RESULT //p' <<<"$tx_out")"
    [ "$(result_get "$tx" failed)" = 0 ] || FAILED=1
    if [ -n "${CUTOVER_KEEP_LOGS:-}" ]; then
        cp -r "$logdir" "$CUTOVER_KEEP_LOGS/"
        printf '%s\n' "$report" >"$CUTOVER_KEEP_LOGS/$tag-report.txt"
        cp "$PGL_ROOT/$tag.log" "$CUTOVER_KEEP_LOGS/$tag-pgbench.txt"
    fi
    teardown "$tag"
    # shellcheck disable=SC2059
    ROWS+=("$(printf "$ROW_FORMAT" "$tag" \
        "$([ "$rc" -eq 0 ] && echo completed || echo "FAILED (exit $rc)")" "$(ms_between "$t0" "$t1")" \
        "$(report_get "$report" "longest hold")" "$(result_get "$tx" spanning)" "$(result_get "$tx" hold_stall_ms)" "$(result_get "$tx" stall_ms)" \
        "$(result_get "$tx" gap_ms)" "$(result_get "$tx" p50_ms)/$(result_get "$tx" p99_ms)" \
        "$(result_get "$tx" failed)" "$(result_get "$lag" median_ms)/$(result_get "$lag" max_ms)" "-")")
done

# ------------------------------------------------------------------ idle sessions
if [ "$CUTOVER_IDLE_SESSIONS" -gt 0 ]; then
    tag="idle-$CUTOVER_IDLE_SESSIONS"
    say "=== $tag: $CUTOVER_IDLE_SESSIONS idle sessions, then CUTOVER"
    setup "$tag"
    set +e
    hold_out="$(python3 "$REPO/bench/pgclient.py" hold --port "$PROXY_PORT" --count "$CUTOVER_IDLE_SESSIONS" \
        --expect-version-min 180000 --run "$PGCUTOVER admin --addr 127.0.0.1:$ADMIN_PORT CUTOVER $CUTOVER_OPTIONS" 2>&1)"
    hold_rc=$?
    set -e
    printf '%s\n' "$hold_out" | grep -v '^RESULT' | sed 's/^/    /' >&2
    hold="$(sed -n 's/^RESULT //p' <<<"$hold_out")"
    run_ok="$(result_get "$hold" run_ok)"
    [ "$hold_rc" -eq 0 ] || FAILED=1
    report="$(sed -n 's/^  | //p' <<<"$hold_out")"
    if [ -n "${CUTOVER_KEEP_LOGS:-}" ]; then printf '%s\n' "$hold_out" >"$CUTOVER_KEEP_LOGS/$tag.txt"; fi
    teardown "$tag"
    # shellcheck disable=SC2059
    ROWS+=("$(printf "$ROW_FORMAT" "$tag" \
        "$([ "$run_ok" = 1 ] && echo completed || echo FAILED)" "$(result_get "$hold" run_ms)" \
        "$(report_get "$report" "longest hold")" "-" "-" "-" "-" "-" "-" "-" \
        "$(result_get "$hold" on_expected_version)/$(result_get "$hold" opened) on 18, $(result_get "$hold" check_failed) failed")")
fi

# ------------------------------------------------------------------ summary
echo
echo "CUTOVER benchmark — $(date -u +%Y-%m-%dT%H:%MZ), $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//'), $(nproc) cores"
echo "pgbench scenarios: TPC-B-like -M prepared -j 2, scale $CUTOVER_SCALE, CUTOVER at ${CUTOVER_AT}s of ${CUTOVER_SECONDS}s${CUTOVER_OPTIONS:+, options: $CUTOVER_OPTIONS}"
echo
echo "| scenario | outcome | CUTOVER command ms | report: longest hold | tx overlapping the command | longest tx overlapping the hold ms (stall) | longest tx overlapping the command ms | longest no-completion gap ms | baseline p50/p99 ms | failed tx | apply lag before, median/max ms | sessions after |"
echo "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|"
for row in "${ROWS[@]}"; do
    IFS=$'\x1f' read -r -a f <<<"$row"
    printf '|'
    for v in "${f[@]}"; do
        case "$v" in '' | nan | '/' | 'nan/nan') v=- ;; esac
        printf ' %s |' "$v"
    done
    echo
done
echo
if [ "$FAILED" -ne 0 ]; then
    echo "RESULT: FAILED — a CUTOVER failed, a transaction failed, or a session did not survive (details above)."
    exit 1
fi
echo "RESULT: every CUTOVER completed with 0 failed transactions."
