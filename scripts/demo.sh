#!/usr/bin/env bash
# scripts/demo.sh — the live demo: move a running pgbench from Postgres 15 to Postgres 18.
#
#   1. scripts/install-deps.sh (installs whatever is missing), cargo build --release
#   2. start a throwaway Postgres 15 ("old") and 18 ("new") on free 127.0.0.1 ports
#   3. pgbench -i -s 10 on 15, then logical replication 15 -> 18 (schema, publication,
#      subscription, wait until every table is 'r')
#   4. start pgcutover in front of both (auth trust, admin console, metrics)
#   5. pgbench -c 16 -j 2 -T 20 -M prepared -P 2 through pgcutover, in the background
#   6. after ~8 s: pgcutover admin CUTOVER, and print its report
#   7. wait for pgbench, print its summary (failed transactions must be 0)
#   8. verify on 18: sum(abalance) = sum(delta) = sum(tbalance) = sum(bbalance) and
#      count(pgbench_history) = pgbench's processed transactions; then PASS or FAIL
# Everything (servers, proxy, temp dirs) is cleaned up on exit. Exit status 0 only on PASS.
#
# Environment: DEMO_SCALE=10 DEMO_CLIENTS=16 DEMO_JOBS=2 DEMO_SECONDS=20 DEMO_CUTOVER_AFTER=8
#   DEMO_SKIP_DEPS=1 (skip install-deps), PGCUTOVER_BIN=path (skip the build),
#   PGL_KEEP=1 (keep the temp dir with all logs), PGCUTOVER_LOG=info (proxy log level),
#   DEMO_CONFIG=proxy.toml: run `pgcutover serve --config FILE` instead of the flags; the servers
#     then start on the ports of the file's [old]/[new] URLs (127.0.0.1 only), and the proxy,
#     admin and metrics ports are the file's. E.g.
#     PGL_PORT_old=5415 PGL_PORT_new=5418 DEMO_CONFIG=proxy.toml scripts/demo.sh
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$PWD"

DEMO_SCALE="${DEMO_SCALE:-10}"
DEMO_CLIENTS="${DEMO_CLIENTS:-16}"
DEMO_JOBS="${DEMO_JOBS:-2}"
DEMO_SECONDS="${DEMO_SECONDS:-20}"
DEMO_CUTOVER_AFTER="${DEMO_CUTOVER_AFTER:-8}"

if [ -t 1 ]; then BOLD=$'\e[1m'; RED=$'\e[31m'; GREEN=$'\e[32m'; RESET=$'\e[0m'; else BOLD=; RED=; GREEN=; RESET=; fi
step() { echo; echo "${BOLD}==> $*${RESET}"; }
info() { echo "    $*"; }
die() { echo "${RED}demo: ERROR: $*${RESET}" >&2; echo "${RED}${BOLD}FAIL${RESET}: demo could not run (see the error above)"; exit 1; }

if ! command -v cargo >/dev/null 2>&1 && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi

# ------------------------------------------------------------------ 1. dependencies and build
if [ "${DEMO_SKIP_DEPS:-0}" != 1 ]; then
    step "scripts/install-deps.sh (Postgres 15 + 18, pgbench, pgbouncer, hadolint)"
    bash scripts/install-deps.sh || die "scripts/install-deps.sh failed"
fi
if [ -z "${PGCUTOVER_BIN:-}" ]; then
    command -v cargo >/dev/null 2>&1 || die "cargo not found: install a Rust toolchain (rustup) first"
    step "cargo build --release"
    cargo build --release || die "cargo build --release failed"
    PGCUTOVER_BIN="$REPO/target/release/pgcutover"
fi
[ -x "$PGCUTOVER_BIN" ] || die "$PGCUTOVER_BIN is not executable"

# With DEMO_CONFIG: read the addresses from the file (flags are not used then).
if [ -n "${DEMO_CONFIG:-}" ]; then
    [ -f "$DEMO_CONFIG" ] || die "DEMO_CONFIG=$DEMO_CONFIG: no such file"
    DEMO_CONFIG="$(cd "$(dirname "$DEMO_CONFIG")" && pwd)/$(basename "$DEMO_CONFIG")"
    addresses="$(python3 - "$DEMO_CONFIG" <<'EOF'
import sys, tomllib, urllib.parse
c = tomllib.load(open(sys.argv[1], "rb"))
def port(key, addr):
    if addr is None:
        sys.exit(f"{key} is not set in {sys.argv[1]}; the demo needs it")
    host, _, p = addr.rpartition(":")
    if host != "127.0.0.1":
        sys.exit(f"{key} = {addr!r}: the demo needs 127.0.0.1")
    return p
def server(name):
    url = urllib.parse.urlparse(c.get(name, {}).get("url") or sys.exit(f"[{name}] url is not set in {sys.argv[1]}"))
    if url.hostname != "127.0.0.1" or url.username != "postgres":
        sys.exit(f"[{name}] url must be postgres://postgres@127.0.0.1:PORT/... for the demo")
    return str(url.port or 5432)
if c.get("auth", "scram-sha-256") != "trust":
    sys.exit("the demo needs auth = \"trust\"")
print(port("listen", c.get("listen", "127.0.0.1:6432")), port("admin_listen", c.get("admin_listen")),
      port("metrics_listen", c.get("metrics_listen")), server("old"), server("new"))
EOF
)" || die "DEMO_CONFIG=$DEMO_CONFIG cannot be used for the demo: $addresses"
    read -r CFG_PROXY_PORT CFG_ADMIN_PORT CFG_METRICS_PORT CFG_OLD_PORT CFG_NEW_PORT <<<"$addresses"
    [ "${PGL_PORT_old:-$CFG_OLD_PORT}" = "$CFG_OLD_PORT" ] || die "PGL_PORT_old=$PGL_PORT_old but $DEMO_CONFIG says $CFG_OLD_PORT"
    [ "${PGL_PORT_new:-$CFG_NEW_PORT}" = "$CFG_NEW_PORT" ] || die "PGL_PORT_new=$PGL_PORT_new but $DEMO_CONFIG says $CFG_NEW_PORT"
    export PGL_PORT_old="$CFG_OLD_PORT" PGL_PORT_new="$CFG_NEW_PORT"
fi

# shellcheck source=scripts/pg-local.sh
. "$REPO/scripts/pg-local.sh"
pgl_init
PGCUTOVER="$PGCUTOVER_BIN"

# ------------------------------------------------------------------ 2-3. servers and replication
step "starting Postgres 15 (old) and Postgres 18 (new)"
pgl_start old 15
pgl_start new 18
info "old: $(pgl_sql old postgres 'SHOW server_version') on 127.0.0.1:$PGL_PORT_old"
info "new: $(pgl_sql new postgres 'SHOW server_version') on 127.0.0.1:$PGL_PORT_new"

step "pgbench -i -s $DEMO_SCALE on Postgres 15"
pgl_pgbench old postgres -i -q -s "$DEMO_SCALE" >"$PGL_ROOT/pgbench-init.log" 2>&1 \
    || die "pgbench -i failed: $(tail -n 5 "$PGL_ROOT/pgbench-init.log")"
info "$(grep '^done' "$PGL_ROOT/pgbench-init.log" || true)"

step "logical replication 15 -> 18 (schema, publication, subscription, initial copy)"
pgl_replicate old new postgres
info "subscription $PGL_SUBSCRIPTION on 18: every table in state 'r' (streaming)"
info "accounts on 18: $(pgl_sql new postgres 'SELECT count(*) FROM pgbench_accounts')"

# ------------------------------------------------------------------ 4. the proxy
if [ -n "${DEMO_CONFIG:-}" ]; then
    PROXY_PORT="$CFG_PROXY_PORT" ADMIN_PORT="$CFG_ADMIN_PORT" METRICS_PORT="$CFG_METRICS_PORT"
    serve=("$PGCUTOVER" serve --config "$DEMO_CONFIG")
else
    PROXY_PORT="$(pgl_free_port)"
    ADMIN_PORT="$(pgl_free_port)"
    METRICS_PORT="$(pgl_free_port)"
    serve=("$PGCUTOVER" serve --listen "127.0.0.1:$PROXY_PORT"
        --old "postgres://postgres@127.0.0.1:$PGL_PORT_old/postgres"
        --new "postgres://postgres@127.0.0.1:$PGL_PORT_new/postgres"
        --admin-listen "127.0.0.1:$ADMIN_PORT" --metrics-listen "127.0.0.1:$METRICS_PORT" --auth trust)
fi
step "starting pgcutover on 127.0.0.1:$PROXY_PORT (admin 127.0.0.1:$ADMIN_PORT, metrics 127.0.0.1:$METRICS_PORT)"
info "${serve[*]}"
PGCUTOVER_LOG="${PGCUTOVER_LOG:-info}" pgl_spawn pgcutover "${serve[@]}"
PROXY_PID="$PGL_SPAWNED_PID"
info "pgcutover pid $PROXY_PID, log $PGL_ROOT/pgcutover.log (kept after exit with PGL_KEEP=1)"
if ! pgl_wait_port "$PROXY_PORT" 30; then
    die "pgcutover did not start listening; its log:
$(tail -n 30 "$PGL_ROOT/pgcutover.log")"
fi
proxy_sql() { pgl_client psql -XAtq -v ON_ERROR_STOP=1 -h 127.0.0.1 -p "$PROXY_PORT" -U postgres -d postgres -c "$1"; }
info "through the proxy: $(proxy_sql 'SHOW server_version' 2>&1)"

# ------------------------------------------------------------------ 5. the workload
step "pgbench -c $DEMO_CLIENTS -j $DEMO_JOBS -T $DEMO_SECONDS -M prepared -P 2 through pgcutover (background)"
pgl_spawn pgbench env PGSSLMODE=disable PGGSSENCMODE=disable \
    "$PGL_CLIENT_BIN/pgbench" -h 127.0.0.1 -p "$PROXY_PORT" -U postgres \
    -c "$DEMO_CLIENTS" -j "$DEMO_JOBS" -T "$DEMO_SECONDS" -M prepared -P 2 postgres
PGBENCH_PID="$PGL_SPAWNED_PID"
PGBENCH_LOG="$PGL_ROOT/pgbench.log"
# Show pgbench's progress lines as they come (the summary is printed once it is done).
tail -n +1 -F --pid="$PGBENCH_PID" "$PGBENCH_LOG" 2>/dev/null | sed -u -n '/^transaction type:/q; s/^/    pgbench | /p' &
TAIL_PID=$!
pgl_on_exit "kill $TAIL_PID 2>/dev/null || true"

# ------------------------------------------------------------------ 6. CUTOVER
sleep "$DEMO_CUTOVER_AFTER"
kill -0 "$PGBENCH_PID" 2>/dev/null || die "pgbench ended before the cutover; its output:
$(cat "$PGBENCH_LOG")"
echo
echo "${BOLD}==> pgcutover admin --addr 127.0.0.1:$ADMIN_PORT CUTOVER${RESET}"
cutover_started="$(date +%s.%N)"
set +e
cutover_out="$("$PGCUTOVER" admin --addr "127.0.0.1:$ADMIN_PORT" CUTOVER 2>&1)"
cutover_rc=$?
set -e
cutover_ms="$(awk -v a="$cutover_started" -v b="$(date +%s.%N)" 'BEGIN { printf "%.0f", (b - a) * 1000 }')"
printf '%s\n' "${cutover_out:-(no output)}" | sed 's/^/    cutover | /'
if [ "$cutover_rc" -eq 0 ]; then
    info "CUTOVER succeeded (command took $cutover_ms ms end to end)"
else
    echo "    ${RED}CUTOVER FAILED${RESET}: \`pgcutover admin CUTOVER\` exited with status $cutover_rc after $cutover_ms ms (output above)."
    echo "    Sessions stay on Postgres 15; pgbench keeps running there."
fi

# ------------------------------------------------------------------ 7. pgbench summary
set +e
wait "$PGBENCH_PID"
pgbench_rc=$?
set -e
wait "$TAIL_PID" 2>/dev/null || true
step "pgbench summary"
sed -n '/^transaction type:/,$p' "$PGBENCH_LOG" | grep -v '^progress:' | sed 's/^/    /'
processed="$(awk -F': *' '/^number of transactions actually processed/ { split($2, a, "/"); print a[1]; exit }' "$PGBENCH_LOG")"
failed="$(awk -F': *' '/^number of failed transactions/ { split($2, a, " "); print a[1]; exit }' "$PGBENCH_LOG")"
errors_seen="$(grep -cE '^pgbench: (error|fatal)|client [0-9]+ (aborted|script)' "$PGBENCH_LOG" || true)"

# A few proxy metrics, if the endpoint answers.
metrics="$(python3 - "$METRICS_PORT" <<'EOF' 2>/dev/null || true
import sys, urllib.request
body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=3).read().decode()
for line in body.splitlines():
    if line.startswith(("pgcutover_transactions_total", "pgcutover_server_connections", "pgcutover_cutovers_total",
                        "pgcutover_errors_total", "pgcutover_session_held_seconds_count", "pgcutover_session_held_seconds_sum")):
        print(line)
EOF
)"
if [ -n "$metrics" ]; then
    step "proxy metrics (http://127.0.0.1:$METRICS_PORT/metrics, excerpt)"
    printf '%s\n' "$metrics" | sed 's/^/    /'
fi

# ------------------------------------------------------------------ 8. verification
failures=()
[ "$cutover_rc" -eq 0 ] || failures+=("CUTOVER failed (exit $cutover_rc): $(printf '%s' "$cutover_out" | head -n 1)")
[ "$pgbench_rc" -eq 0 ] || failures+=("pgbench exited with status $pgbench_rc")
[ -n "$processed" ] || failures+=("cannot read pgbench's processed transaction count")
[ "${failed:-0}" = 0 ] || failures+=("pgbench reports $failed failed transactions")
[ "$errors_seen" = 0 ] || failures+=("pgbench printed $errors_seen error lines (see $PGBENCH_LOG with PGL_KEEP=1)")

check_server() { # NAME -> prints the sums; appends to failures if inconsistent
    local name="$1" row a d t b h
    row="$(pgl_sql "$name" postgres "SELECT (SELECT coalesce(sum(abalance), 0) FROM pgbench_accounts),
        (SELECT coalesce(sum(delta), 0) FROM pgbench_history), (SELECT coalesce(sum(tbalance), 0) FROM pgbench_tellers),
        (SELECT coalesce(sum(bbalance), 0) FROM pgbench_branches), (SELECT count(*) FROM pgbench_history)")" \
        || { failures+=("cannot query $name"); return; }
    IFS='|' read -r a d t b h <<<"$row"
    info "sum(abalance)=$a sum(delta)=$d sum(tbalance)=$t sum(bbalance)=$b count(history)=$h"
    CHECK_HISTORY="$h"
    if [ "$a" = "$d" ] && [ "$d" = "$t" ] && [ "$t" = "$b" ]; then
        info "balances consistent"
    else
        failures+=("balances differ on $name: abalance $a, delta $d, tbalance $t, bbalance $b")
    fi
}

if [ "$cutover_rc" -eq 0 ]; then
    step "verifying the data on Postgres 18 (where every session now runs)"
    check_server new
    if [ -n "$processed" ]; then
        if [ "$CHECK_HISTORY" = "$processed" ]; then
            info "count(pgbench_history) on 18 = $processed = transactions pgbench committed"
        else
            failures+=("count(pgbench_history) on 18 is $CHECK_HISTORY but pgbench committed $processed transactions")
        fi
    fi
    on_old="$(pgl_sql old postgres 'SELECT count(*) FROM pgbench_history')"
    info "transactions committed on 15 before the cutover: $on_old; on 18 after it: $((${processed:-0} - on_old))"
    if [ -n "$processed" ] && [ "$on_old" -ge "$processed" ]; then
        failures+=("all $processed transactions are on 15: the sessions did not move to 18")
    fi
else
    step "the data (still on Postgres 15: no cutover happened)"
    check_server old
    if [ -n "$processed" ] && [ "$CHECK_HISTORY" != "$processed" ]; then
        failures+=("count(pgbench_history) on 15 is $CHECK_HISTORY but pgbench committed $processed transactions")
    fi
fi

echo
if [ "${#failures[@]}" -eq 0 ]; then
    echo "${GREEN}${BOLD}PASS${RESET}: $processed transactions, 0 failed; CUTOVER moved $DEMO_CLIENTS live sessions from Postgres 15 to 18 and the data on 18 is consistent."
    exit 0
fi
echo "${RED}${BOLD}FAIL${RESET}:"
for f in "${failures[@]}"; do echo "  - $f"; done
exit 1
