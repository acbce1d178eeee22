# shellcheck shell=bash
# bench/common.sh — what the benchmark scripts share. Source it from bench/<script>.sh (after
# `cd` to the repository and REPO="$PWD"), having defined say and die:
#
#   bench_init [pgbouncer]   cargo on PATH; scripts/install-deps.sh unless BENCH_SKIP_DEPS=1;
#                            with "pgbouncer", PGBOUNCER (its binary); the release build unless
#                            PGCUTOVER_BIN is given; scripts/pg-local.sh sourced and its root
#                            made; a private copy of the binary in $PGCUTOVER (a concurrent
#                            rebuild cannot swap it between runs); CLK_TCK.
#   bench_pgbouncer NAME DATABASE_LINE [ini lines...]
#                            PgBouncer on a free port, run as the server user, with
#                            `postgres = DATABASE_LINE` under [databases] and the given lines
#                            (auth_type, pool_mode, sizes, ...) under [pgbouncer]; its
#                            userlist.txt holds "postgres" "". Sets PROXY_PORT and PROXY_PID.
#   bench_pgbench_result LOG "tps transactions failed" of a pgbench log (fails if absent; call
#                            it in an assignment, `r="$(bench_pgbench_result "$log")"`, so that
#                            set -e stops the script).
# shellcheck disable=SC2154 # PGL_* variables are set by scripts/pg-local.sh

# shellcheck source=scripts/pg-local.sh
. "$REPO/scripts/pg-local.sh"

bench_init() {
    if ! command -v cargo >/dev/null 2>&1 && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
        export PATH="${HOME:-/root}/.cargo/bin:$PATH"
    fi
    if [ "${BENCH_SKIP_DEPS:-0}" != 1 ]; then
        say "scripts/install-deps.sh"
        bash scripts/install-deps.sh
    fi
    if [ "${1:-}" = pgbouncer ]; then
        PGBOUNCER="$(command -v pgbouncer || echo /usr/sbin/pgbouncer)"
        [ -x "$PGBOUNCER" ] || die "pgbouncer not found (scripts/install-deps.sh installs it)"
    fi
    if [ -z "${PGCUTOVER_BIN:-}" ]; then
        say "cargo build --release"
        cargo build --release --quiet || die "cargo build --release failed"
        PGCUTOVER_BIN="$REPO/target/release/pgcutover"
    fi
    [ -x "$PGCUTOVER_BIN" ] || die "$PGCUTOVER_BIN is not executable"
    pgl_init
    cp "$PGCUTOVER_BIN" "$PGL_ROOT/pgcutover"
    PGCUTOVER="$PGL_ROOT/pgcutover"
    CLK_TCK="$(getconf CLK_TCK)"
}

bench_pgbouncer() {
    local name="$1" database="$2" dir="$PGL_ROOT/$1" line
    shift 2
    PROXY_PORT="$(pgl_free_port)"
    mkdir -p "$dir"
    printf '"postgres" ""\n' >"$dir/userlist.txt"
    {
        printf '[databases]\npostgres = %s\n\n[pgbouncer]\n' "$database"
        printf 'listen_addr = 127.0.0.1\nlisten_port = %s\nunix_socket_dir =\nauth_file = %s\n' "$PROXY_PORT" "$dir/userlist.txt"
        printf 'server_tls_sslmode = disable\nignore_startup_parameters = extra_float_digits\n'
        printf 'log_connections = 0\nlog_disconnections = 0\nlogfile = %s\npidfile = %s\n' "$dir/pgbouncer.log" "$dir/pgbouncer.pid"
        for line in "$@"; do printf '%s\n' "$line"; done
    } >"$dir/pgbouncer.ini"
    if pgl_is_root; then chown -R "$PGL_RUN_USER:" "$dir"; fi
    pgl_spawn "$name" "${PGL_RUNAS[@]}" "$PGBOUNCER" "$dir/pgbouncer.ini"
    PROXY_PID="$PGL_SPAWNED_PID"
    pgl_wait_port "$PROXY_PORT" 30 || die "$name did not start: $(tail -n 20 "$dir/pgbouncer.log" "$PGL_ROOT/$name.log" 2>/dev/null)"
}

bench_pgbench_result() {
    local log="$1" tps tx failed
    tps="$(awk -F'[ =]+' '/^tps = / { print $2; exit }' "$log")"
    tx="$(awk -F': *' '/^number of transactions actually processed/ { split($2, a, "/"); print a[1]; exit }' "$log")"
    failed="$(awk -F': *' '/^number of failed transactions/ { split($2, a, " "); print a[1]; exit }' "$log")"
    if [ -z "$tps" ] || [ -z "$tx" ]; then
        cat "$log" >&2
        say "ERROR: cannot parse pgbench output"
        return 1
    fi
    printf '%s %s %s\n' "$tps" "$tx" "${failed:-0}"
}
