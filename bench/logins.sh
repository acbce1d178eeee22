#!/usr/bin/env bash
# bench/logins.sh — logins per second with SCRAM pass-through: pgcutover with auth_query vs.
# PgBouncer with auth_query vs. a direct connection, against the same local Postgres 15 in the
# same run.
#
#   bench/logins.sh
#   LOGINS_SECONDS=10 LOGINS_ROUNDS=5 bench/logins.sh
#
# The server: a role `bench_login` whose pg_hba.conf line requires scram-sha-256 (its password
# stored as a SCRAM verifier); `postgres` stays trusted (the proxies' auth_query user). Each
# login is a full SCRAM exchange with the client, on every target:
#   direct     Postgres 15 itself
#   pgcutover  serve --auth scram-sha-256 --auth-query "... pg_authid ...": no password in its
#              config; it checks the client's proof against the verifier and logs into the
#              server with the recovered ClientKey, a fresh server connection per login
#   pgbouncer  auth_type = scram-sha-256, auth_user = postgres, auth_query on pg_shadow, session
#              pooling: it keeps server connections between logins, so most logins need no
#              server login (no backend fork) at all
#   pgbouncer-once  the same with server_lifetime = 0: each server connection serves one client,
#              so every login is also a SCRAM pass-through login to the server, as with
#              pgcutover (which opens a server connection per client session by design)
# Load: pgbench -C (a fresh connection per transaction) -S -M simple, $LOGINS_CLIENTS parallel
# connectors (-j 2), as bench_login with PGPASSWORD; libpq runs PBKDF2 on the client side for
# every target alike. Runs interleave the targets; the report takes the median per target.
# CPU = utime+stime of the proxy process around each run, per 1,000 logins.
#
# Not part of the test suite. Environment:
#   LOGINS_SECONDS=5         duration of each pgbench run
#   LOGINS_ROUNDS=3          rounds (each runs every target once)
#   LOGINS_CLIENTS=16        parallel connectors (pgbench -c)
#   LOGINS_TARGETS="direct pgcutover pgbouncer pgbouncer-once"
#   BENCH_SKIP_DEPS=1, PGCUTOVER_BIN=PATH, BENCH_OUT=FILE   as for bench/run.sh
# shellcheck disable=SC2154 # PGL_PORT_<name> and friends are set by pgl_start (scripts/pg-local.sh)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
REPO="$PWD"

LOGINS_SECONDS="${LOGINS_SECONDS:-5}"
LOGINS_ROUNDS="${LOGINS_ROUNDS:-3}"
LOGINS_CLIENTS="${LOGINS_CLIENTS:-16}"
LOGINS_TARGETS="${LOGINS_TARGETS:-direct pgcutover pgbouncer pgbouncer-once}"
ROLE=bench_login
ROLE_PASSWORD=bench-login-pw

say() { echo "logins-bench: $*" >&2; }
die() { echo "logins-bench: ERROR: $*" >&2; exit 1; }

# shellcheck source=bench/common.sh
. "$REPO/bench/common.sh"
bench_init pgbouncer

# A client tool logged in with a password (pgl_client drops PGPASSWORD on purpose).
client_as() {
    local password="$1" tool="$2"; shift 2
    env -u PGHOST -u PGPORT -u PGUSER -u PGDATABASE -u PGSERVICE -u PGOPTIONS PGPASSWORD="$password" \
        PGSSLMODE=disable PGGSSENCMODE=disable PGCONNECT_TIMEOUT=10 "$PGL_CLIENT_BIN/$tool" "$@"
}

pgl_start pg 15 "password_encryption = 'scram-sha-256'"
PG_PORT="$PGL_PORT_pg"
pgl_pgbench pg postgres -i -q -s 1 >"$PGL_ROOT/pgbench-init.log" 2>&1 \
    || die "pgbench -i failed: $(tail -n 5 "$PGL_ROOT/pgbench-init.log")"
pgl_sql pg postgres "CREATE ROLE $ROLE LOGIN PASSWORD '$ROLE_PASSWORD'; GRANT SELECT ON pgbench_accounts, pgbench_branches TO $ROLE" >/dev/null
# scram-sha-256 for the role, ahead of pg-local's trust lines.
hba="$PGL_DIR_pg/data/pg_hba.conf"
{ printf 'host all %s 127.0.0.1/32 scram-sha-256\n' "$ROLE"; cat "$hba"; } >"$PGL_ROOT/pg_hba.conf"
pgl_as_server_user tee "$hba" <"$PGL_ROOT/pg_hba.conf" >/dev/null
pgl_sql pg postgres "SELECT pg_reload_conf()" >/dev/null
sleep 1
if client_as wrong psql -XAtq -h 127.0.0.1 -p "$PG_PORT" -U "$ROLE" -d postgres -c "SELECT 1" >/dev/null 2>&1; then
    die "the server let $ROLE in with a wrong password: pg_hba.conf was not applied"
fi

# ------------------------------------------------------------------ proxies
start_pgcutover() { # -> PROXY_PORT, PROXY_PID
    PROXY_PORT="$(pgl_free_port)"
    PGCUTOVER_LOG=warn pgl_spawn pgcutover "$PGCUTOVER" serve --listen "127.0.0.1:$PROXY_PORT" \
        --old "$(pgl_url pg)?sslmode=disable" --auth scram-sha-256 \
        --auth-query 'SELECT rolname, rolpassword, rolvaliduntil FROM pg_catalog.pg_authid WHERE rolname = $1 AND rolcanlogin'
    PROXY_PID="$PGL_SPAWNED_PID"
    pgl_wait_port "$PROXY_PORT" 30 || die "pgcutover did not start: $(tail -n 20 "$PGL_ROOT/pgcutover.log")"
}

start_pgbouncer() { # NAME [ini lines...] -> PROXY_PORT, PROXY_PID
    # No user in the database line: each client's own role, its secret from the auth_query
    # (run as postgres, the only entry of userlist.txt).
    bench_pgbouncer "$1" "host=127.0.0.1 port=$PG_PORT dbname=postgres" "auth_type = scram-sha-256" "auth_user = postgres" \
        'auth_query = SELECT usename, passwd FROM pg_shadow WHERE usename=$1' "pool_mode = session" \
        "max_client_conn = 200" "default_pool_size = 100" "${@:2}"
}

declare -A PORT PID
PORT[direct]="$PG_PORT"
PID[direct]=""
for t in $LOGINS_TARGETS; do
    case "$t" in
        direct) ;;
        pgcutover) start_pgcutover; PORT[pgcutover]="$PROXY_PORT"; PID[pgcutover]="$PROXY_PID" ;;
        pgbouncer) start_pgbouncer pgbouncer; PORT[$t]="$PROXY_PORT"; PID[$t]="$PROXY_PID" ;;
        pgbouncer-once) start_pgbouncer pgbouncer-once "server_lifetime = 0"; PORT[$t]="$PROXY_PORT"; PID[$t]="$PROXY_PID" ;;
        *) die "unknown target $t (valid: direct pgcutover pgbouncer pgbouncer-once)" ;;
    esac
done
# Every target refuses a wrong password (the proxies really check it).
for t in $LOGINS_TARGETS; do
    if client_as wrong psql -XAtq -h 127.0.0.1 -p "${PORT[$t]}" -U "$ROLE" -d postgres -c "SELECT 1" >/dev/null 2>&1; then
        die "$t let $ROLE in with a wrong password"
    fi
done

# ------------------------------------------------------------------ runs
RAW="$PGL_ROOT/logins.tsv"
printf 'target\tround\tlogins_per_s\tlogins\tfailed\tcpu_ticks\tloadavg\n' >"$RAW"
for round in $(seq 1 "$LOGINS_ROUNDS"); do
    for target in $LOGINS_TARGETS; do
        pid="${PID[$target]}"
        before=0
        [ -z "$pid" ] || before="$(pgl_cpu_ticks "$pid")"
        log="$PGL_ROOT/pgbench-$target-$round.log"
        if ! client_as "$ROLE_PASSWORD" pgbench -h 127.0.0.1 -p "${PORT[$target]}" -U "$ROLE" -n -C -S -M simple \
            -c "$LOGINS_CLIENTS" -j 2 -T "$LOGINS_SECONDS" postgres >"$log" 2>&1; then
            cat "$log" >&2
            die "pgbench -C failed via $target"
        fi
        after=0
        [ -z "$pid" ] || after="$(pgl_cpu_ticks "$pid")"
        result="$(bench_pgbench_result "$log")"
        read -r tps tx failed <<<"$result"
        printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$target" "$round" "$tps" "$tx" "$failed" "$((after - before))" \
            "$(cut -d' ' -f1 /proc/loadavg)" >>"$RAW"
        say "[round $round] via $target: $tps logins/s, $tx logins, cpu $((after - before)) ticks"
    done
done

# ------------------------------------------------------------------ report
versions="pgcutover $("$PGCUTOVER" --version | awk '{print $2}') ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo '?')), $("$PGL_PG15_BIN/postgres" --version | sed 's/postgres (PostgreSQL) /PostgreSQL /'), $("$PGBOUNCER" --version | head -n1), $("$PGL_PG15_BIN/pgbench" --version | sed 's/ (PostgreSQL)//')"
report="$(python3 - "$RAW" "$CLK_TCK" "$LOGINS_CLIENTS" "$LOGINS_SECONDS" "$LOGINS_ROUNDS" "$versions" <<'EOF'
import csv, statistics, sys
raw, clk, clients, seconds, rounds, versions = sys.argv[1:]
rows = list(csv.DictReader(open(raw), delimiter="\t"))
targets = list(dict.fromkeys(r["target"] for r in rows))
direct = [float(r["logins_per_s"]) for r in rows if r["target"] == "direct"]
direct_median = statistics.median(direct) if direct else None
print(f"SCRAM logins through pgbench -C -S -M simple, {clients} connectors, {seconds} s x {rounds} rounds ({versions})")
print()
print("| target | logins/s (median) | rounds | vs direct | proxy CPU s / 1k logins | failed | load avg |")
print("|---|---:|---|---:|---:|---:|---|")
for t in targets:
    mine = [r for r in rows if r["target"] == t]
    rates = [float(r["logins_per_s"]) for r in mine]
    med = statistics.median(rates)
    logins = sum(int(r["logins"]) for r in mine)
    ticks = sum(int(r["cpu_ticks"]) for r in mine)
    cpu = "-" if t == "direct" else f"{ticks / int(clk) / logins * 1000:.3f}"
    vs = f"{med / direct_median:.2f}" if direct_median else "-"
    failed = sum(int(r["failed"]) for r in mine)
    loads = ", ".join(r["loadavg"] for r in mine)
    print(f"| {t} | {med:,.0f} | {' / '.join(f'{x:,.0f}' for x in rates)} | {vs} | {cpu} | {failed} | {loads} |")
EOF
)"
echo "$report"
if [ -n "${BENCH_OUT:-}" ]; then
    printf '%s\n' "$report" >"$BENCH_OUT"
    say "report written to $BENCH_OUT"
fi
