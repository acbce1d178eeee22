# shellcheck shell=bash
# shellcheck disable=SC2034 # PGL_* variables are set for the scripts that source this file
# pg-local.sh — throwaway local Postgres servers for scripts/demo.sh and bench/.
#
# Source it (do not execute it):
#
#     . scripts/pg-local.sh
#     pgl_init                      # temp root dir + cleanup on EXIT/INT/TERM
#     pgl_start old 15              # Postgres 15 on a free 127.0.0.1 port
#     pgl_start new 18              # Postgres 18 (from scripts/install-deps.sh's cache)
#     pgl_psql old postgres -c 'select 1'
#     pgl_replicate old new postgres   # schema copy + publication/subscription, waits for 'r'
#     pgl_spawn proxy some-command args...   # background process killed on exit
#
# Servers:
#   * listen on 127.0.0.1 only, on a free port (or $PGL_PORT_<name> if set), with their own unix
#     socket dir (-k), wal_level=logical, max_connections=1200 ($PGL_MAX_CONNECTIONS);
#   * trust authentication for local and 127.0.0.1 connections — these are throwaway demo and
#     benchmark servers and must never hold anything of value;
#   * run as the unprivileged user `pgcutover` ($PGL_RUN_USER) when the caller is root (initdb and
#     postgres refuse to run as root); scripts/install-deps.sh creates that user.
#
# Everything lives under one temp dir ($PGL_ROOT, /tmp/pgcutover-local.XXXXXX) that is removed at
# exit after the servers and every process started with pgl_spawn are stopped. A later pgl_init
# sweeps roots left behind by a script that was killed with SIGKILL.
#
# After `pgl_start NAME VERSION` these are set:
#   PGL_PORT_<NAME>  TCP port      PGL_DIR_<NAME>  server dir (data/, sock/, server.log)
#   PGL_PID_<NAME>   postmaster pid
# (NAME is a shell identifier such as old, new, pg15.)
#
# Environment knobs:
#   PGCUTOVER_CACHE      install-deps cache (default ~/.cache/pgcutover; Postgres 18 in pg18/)
#   PGL_RUN_USER         user the servers run as when root (default pgcutover)
#   PGL_MAX_CONNECTIONS  default 1200
#   PGL_FSYNC            on|off (default off: throwaway servers; the benchmarks measure the proxy)
#   PGL_KEEP=1           keep $PGL_ROOT (data dirs, logs) at exit for inspection
#   PGL_QUIET=1          less chatter on stderr

PGL_PG15_BIN="${PGL_PG15_BIN:-/usr/lib/postgresql/15/bin}"
PGL_CLIENT_BIN="${PGL_CLIENT_BIN:-$PGL_PG15_BIN}"
PGL_RUN_USER="${PGL_RUN_USER:-pgcutover}"
PGL_MAX_CONNECTIONS="${PGL_MAX_CONNECTIONS:-1200}"
PGL_FSYNC="${PGL_FSYNC:-off}"
PGL_HOST=127.0.0.1
PGL_ROOT="${PGL_ROOT:-}"
PGL_SERVERS=()
PGL_PIDS=()
PGL_EXIT_HOOKS=()
# Command prefix that runs a program as the server user: `pgl_spawn x "${PGL_RUNAS[@]}" prog ...`
# (an exec chain, so the spawned pid is the program's own).
PGL_RUNAS=()

pgl_log() { [ "${PGL_QUIET:-0}" = 1 ] || echo "pg-local: $*" >&2; }
pgl_die() { echo "pg-local: ERROR: $*" >&2; exit 1; }

pgl_home() {
    if [ -n "${HOME:-}" ]; then printf '%s\n' "$HOME"; else getent passwd "$(id -u)" | cut -d: -f6; fi
}

pgl_cache() { printf '%s\n' "${PGCUTOVER_CACHE:-$(pgl_home)/.cache/pgcutover}"; }

# Directory of a major version's server binaries (initdb, postgres).
pgl_bin_dir() {
    case "$1" in
        15) printf '%s\n' "$PGL_PG15_BIN" ;;
        18) printf '%s\n' "$(pgl_cache)/pg18/package/native/bin" ;;
        *) pgl_die "unsupported Postgres version $1 (15 and 18 are available)" ;;
    esac
}

pgl_is_root() { [ "$(id -u)" = 0 ]; }

# Run a command as the server user (the unprivileged user when we are root).
pgl_as_server_user() {
    if pgl_is_root; then
        setpriv --reuid="$PGL_RUN_USER" --regid="$PGL_RUN_USER" --init-groups -- "$@"
    else
        "$@"
    fi
}

# A free TCP port on 127.0.0.1 (bound and released; tiny race, fine for local use).
pgl_free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1]); s.close()'
}

# Raise the open-files limit (many sessions = many sockets).
pgl_raise_nofile() {
    local hard
    hard="$(ulimit -Hn)"
    if [ "$hard" = unlimited ]; then hard=1048576; fi
    if [ "$(ulimit -Sn)" != unlimited ] && [ "$(ulimit -Sn)" -lt "$hard" ]; then
        ulimit -Sn "$hard" 2>/dev/null || true
    fi
}

# Remove roots left by earlier runs whose owning shell no longer exists.
pgl_sweep_stale() {
    local d owner pm
    for d in /tmp/pgcutover-local.*; do
        if [ ! -d "$d" ] || [ ! -f "$d/owner.pid" ]; then continue; fi
        owner="$(cat "$d/owner.pid" 2>/dev/null || true)"
        if [ -n "$owner" ] && kill -0 "$owner" 2>/dev/null; then continue; fi
        for pidfile in "$d"/*/data/postmaster.pid "$d"/*.pid; do
            [ -f "$pidfile" ] || continue
            pm="$(head -n1 "$pidfile" 2>/dev/null || true)"
            case "$pm" in '' | *[!0-9]*) continue ;; esac
            if [ -r "/proc/$pm/cmdline" ] && tr '\0' ' ' <"/proc/$pm/cmdline" | grep -Eq 'postgres|pgbouncer|pgcutover'; then
                kill -QUIT "$pm" 2>/dev/null || true
            fi
        done
        sleep 0.5
        rm -rf "$d"
    done
}

# pgl_init: create $PGL_ROOT and install the EXIT/INT/TERM cleanup. Call once, first.
pgl_init() {
    [ -z "$PGL_ROOT" ] || return 0
    pgl_raise_nofile
    if pgl_is_root && ! id -u "$PGL_RUN_USER" >/dev/null 2>&1; then
        pgl_die "running as root but user $PGL_RUN_USER does not exist (run scripts/install-deps.sh)"
    fi
    pgl_sweep_stale
    PGL_ROOT="$(mktemp -d /tmp/pgcutover-local.XXXXXX)" || pgl_die "mktemp failed"
    echo "$$" >"$PGL_ROOT/owner.pid"
    chmod 755 "$PGL_ROOT"
    if pgl_is_root; then
        PGL_RUNAS=(setpriv --reuid="$PGL_RUN_USER" --regid="$PGL_RUN_USER" --init-groups --)
    else
        PGL_RUNAS=()
    fi
    trap pgl_cleanup EXIT
    trap 'exit 130' INT
    trap 'exit 143' TERM
}

# pgl_on_exit "shell code": run at exit, before servers stop (last registered runs first).
pgl_on_exit() { PGL_EXIT_HOOKS+=("$1"); }

# pgl_spawn NAME cmd args...: start a background process (stdout+stderr to $PGL_ROOT/NAME.log),
# killed at exit. Sets PGL_SPAWNED_PID.
pgl_spawn() {
    local name="$1"; shift
    "$@" >"$PGL_ROOT/$name.log" 2>&1 &
    PGL_SPAWNED_PID=$!
    echo "$PGL_SPAWNED_PID" >"$PGL_ROOT/$name.pid"
    PGL_PIDS+=("$PGL_SPAWNED_PID")
}

# pgl_kill PID [timeout_s]: SIGTERM, wait, then SIGKILL. Only for processes this script started.
pgl_kill() {
    local pid="$1" timeout="${2:-10}" i
    kill -0 "$pid" 2>/dev/null || return 0
    kill -TERM "$pid" 2>/dev/null || true
    for ((i = 0; i < timeout * 10; i++)); do
        kill -0 "$pid" 2>/dev/null || { wait "$pid" 2>/dev/null || true; return 0; }
        sleep 0.1
    done
    kill -KILL "$pid" 2>/dev/null || true
    wait "$pid" 2>/dev/null || true
}

pgl_cleanup() {
    local rc=$? i name
    trap - EXIT INT TERM
    set +e
    for ((i = ${#PGL_EXIT_HOOKS[@]} - 1; i >= 0; i--)); do
        eval "${PGL_EXIT_HOOKS[$i]}"
    done
    for ((i = ${#PGL_PIDS[@]} - 1; i >= 0; i--)); do
        pgl_kill "${PGL_PIDS[$i]}" 5
    done
    for name in "${PGL_SERVERS[@]}"; do
        pgl_stop "$name"
    done
    if [ -n "$PGL_ROOT" ] && [ -d "$PGL_ROOT" ]; then
        if [ "${PGL_KEEP:-0}" = 1 ] || { [ "$rc" -ne 0 ] && [ "${PGL_KEEP_ON_FAILURE:-0}" = 1 ]; }; then
            pgl_log "kept $PGL_ROOT"
        else
            rm -rf "$PGL_ROOT"
        fi
    fi
    exit "$rc"
}

# pgl_var KIND NAME -> value of PGL_<KIND>_<NAME>
pgl_var() { local v="PGL_$1_$2"; printf '%s\n' "${!v:-}"; }

# pgl_start NAME VERSION [name=value ...]: initdb + start; extra args become postgresql.conf lines.
pgl_start() {
    local name="$1" version="$2"; shift 2
    [[ "$name" =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || pgl_die "server name must be an identifier: $name"
    [ -n "$PGL_ROOT" ] || pgl_init
    local bin dir port portvar out
    bin="$(pgl_bin_dir "$version")"
    { [ -x "$bin/postgres" ] && [ -x "$bin/initdb" ]; } || pgl_die "Postgres $version binaries missing in $bin (run scripts/install-deps.sh)"
    dir="$PGL_ROOT/$name"
    mkdir -p "$dir/sock"
    if pgl_is_root; then chown -R "$PGL_RUN_USER:" "$dir"; fi
    portvar="PGL_PORT_$name"
    port="${!portvar:-$(pgl_free_port)}"
    out="$(cd "$dir" && pgl_as_server_user env -i PATH=/usr/local/bin:/usr/bin:/bin LC_ALL=C HOME="$dir" \
        "$bin/initdb" -D "$dir/data" -U postgres -E UTF8 --locale=C -N --auth=trust 2>&1)" \
        || pgl_die "initdb (Postgres $version) failed:
$out"
    {
        echo "# --- pg-local.sh (throwaway server) ---"
        echo "listen_addresses = '$PGL_HOST'"
        echo "port = $port"
        echo "unix_socket_directories = '$dir/sock'"
        echo "wal_level = logical"
        echo "max_connections = $PGL_MAX_CONNECTIONS"
        echo "max_replication_slots = 20"
        echo "max_wal_senders = 20"
        echo "max_worker_processes = 16"
        echo "max_logical_replication_workers = 8"
        echo "shared_buffers = 256MB"
        echo "fsync = $PGL_FSYNC"
        echo "full_page_writes = $PGL_FSYNC"
        echo "synchronous_commit = on"
        echo "logging_collector = off"
        echo "log_line_prefix = '%m [%p] %q%u@%d '"
        echo "log_min_messages = warning"
        echo "lc_messages = 'C'"
        echo "timezone = 'UTC'"
        local kv
        for kv in "$@"; do echo "$kv"; done
    } | pgl_as_server_user tee -a "$dir/data/postgresql.conf" >/dev/null
    printf '%s\n' \
        "# pg-local.sh: throwaway server, trust for local and 127.0.0.1 only" \
        "local   all          all                  trust" \
        "local   replication  all                  trust" \
        "host    all          all   127.0.0.1/32   trust" \
        "host    replication  all   127.0.0.1/32   trust" \
        | pgl_as_server_user tee "$dir/data/pg_hba.conf" >/dev/null
    # The subshell execs env, which execs setpriv, which execs postgres: $! is the postmaster.
    if pgl_is_root; then
        (cd "$dir" && exec env -i PATH=/usr/local/bin:/usr/bin:/bin LC_ALL=C HOME="$dir" \
            setpriv --reuid="$PGL_RUN_USER" --regid="$PGL_RUN_USER" --init-groups -- \
            "$bin/postgres" -D "$dir/data" -k "$dir/sock" >>"$dir/server.log" 2>&1) &
    else
        (cd "$dir" && exec env -i PATH=/usr/local/bin:/usr/bin:/bin LC_ALL=C HOME="$dir" \
            "$bin/postgres" -D "$dir/data" -k "$dir/sock" >>"$dir/server.log" 2>&1) &
    fi
    local pid=$!
    printf -v "PGL_PID_$name" '%s' "$pid"
    printf -v "PGL_PORT_$name" '%s' "$port"
    printf -v "PGL_DIR_$name" '%s' "$dir"
    printf -v "PGL_VERSION_$name" '%s' "$version"
    PGL_SERVERS+=("$name")
    local i
    for ((i = 0; i < 600; i++)); do
        if ! kill -0 "$pid" 2>/dev/null; then
            pgl_die "Postgres $version ($name) exited during startup; log:
$(tail -n 30 "$dir/server.log" 2>/dev/null)"
        fi
        if "$PGL_CLIENT_BIN/pg_isready" -q -h "$PGL_HOST" -p "$port" -U postgres -d postgres -t 1 >/dev/null 2>&1; then
            pgl_log "Postgres $version ($name) ready on $PGL_HOST:$port (pid $pid, dir $dir)"
            return 0
        fi
        sleep 0.1
    done
    pgl_die "Postgres $version ($name) not ready after 60 s; log:
$(tail -n 30 "$dir/server.log" 2>/dev/null)"
}

# pgl_stop NAME: fast shutdown (SIGINT), SIGQUIT after 30 s. Idempotent.
pgl_stop() {
    local name="$1" pid i
    pid="$(pgl_var PID "$name")"
    [ -n "$pid" ] || return 0
    if kill -0 "$pid" 2>/dev/null; then
        kill -INT "$pid" 2>/dev/null || true
        for ((i = 0; i < 300; i++)); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
        if kill -0 "$pid" 2>/dev/null; then
            kill -QUIT "$pid" 2>/dev/null || true
            sleep 1
            kill -KILL "$pid" 2>/dev/null || true
        fi
    fi
    wait "$pid" 2>/dev/null || true
    printf -v "PGL_PID_$name" '%s' ""
}

# pgl_destroy NAME: stop and delete the server's directory.
pgl_destroy() {
    local name="$1" dir
    dir="$(pgl_var DIR "$name")"
    pgl_stop "$name"
    [ -n "$dir" ] && rm -rf "$dir"
    local keep=() s
    for s in "${PGL_SERVERS[@]}"; do [ "$s" = "$name" ] || keep+=("$s"); done
    PGL_SERVERS=("${keep[@]}")
    # A later pgl_start NAME picks a fresh port.
    unset "PGL_PORT_$name" "PGL_PID_$name" "PGL_DIR_$name"
}

# pgl_url NAME [DB] -> postgres://postgres@127.0.0.1:PORT/DB
pgl_url() { printf 'postgres://postgres@%s:%s/%s\n' "$PGL_HOST" "$(pgl_var PORT "$1")" "${2:-postgres}"; }

# pgl_conninfo NAME [DB] -> libpq keyword/value string (for CREATE SUBSCRIPTION)
pgl_conninfo() { printf 'host=%s port=%s user=postgres dbname=%s\n' "$PGL_HOST" "$(pgl_var PORT "$1")" "${2:-postgres}"; }

# Client tools (Postgres 15's; they talk to 18 fine) with a clean PG* environment
# (PGOPTIONS only from PGL_PGOPTIONS).
pgl_client() {
    local tool="$1"; shift
    env -u PGHOST -u PGPORT -u PGUSER -u PGDATABASE -u PGPASSWORD -u PGSERVICE \
        PGOPTIONS="${PGL_PGOPTIONS:-}" PGSSLMODE=disable PGGSSENCMODE=disable PGCONNECT_TIMEOUT=10 \
        "$PGL_CLIENT_BIN/$tool" "$@"
}

# pgl_psql NAME DB [psql args...]: psql as postgres over TCP, -XAtq, stop on error.
pgl_psql() {
    local name="$1" db="$2"; shift 2
    PGL_PGOPTIONS="-c client_min_messages=warning" \
        pgl_client psql -XAtq -v ON_ERROR_STOP=1 -h "$PGL_HOST" -p "$(pgl_var PORT "$name")" -U postgres -d "$db" "$@"
}

# pgl_sql NAME DB "SQL": one statement's result, trimmed.
pgl_sql() { pgl_psql "$1" "$2" -c "$3"; }

# pgl_pgbench NAME DB [pgbench args...] (against a server, not a proxy)
pgl_pgbench() {
    local name="$1" db="$2"; shift 2
    pgl_client pgbench -h "$PGL_HOST" -p "$(pgl_var PORT "$name")" -U postgres "$@" "$db"
}

# pgl_replicate OLD NEW DB [timeout_s]: logical replication of database DB from OLD to NEW.
#   1. create DB on NEW if missing; 2. pg_dump --schema-only of DB on OLD loaded into NEW;
#   3. CREATE PUBLICATION pgcutover_pub FOR ALL TABLES on OLD;
#   4. CREATE SUBSCRIPTION pgcutover_<DB> on NEW (copies the data);
#   5. wait until every table of the publication is in pg_subscription_rel with state 'r'.
# Sets PGL_SUBSCRIPTION (the subscription's name).
pgl_replicate() {
    local old="$1" new="$2" db="$3" timeout="${4:-300}"
    local sub pub="pgcutover_pub" dump i state want
    sub="pgcutover_$(printf '%s' "$db" | tr -c '[:alnum:]_' '_' | tr '[:upper:]' '[:lower:]')"
    [ "$(pgl_sql "$new" postgres "SELECT count(*) FROM pg_database WHERE datname = '$db'")" = 1 ] \
        || pgl_sql "$new" postgres "CREATE DATABASE \"$db\"" >/dev/null
    dump="$PGL_ROOT/schema-$db.sql"
    pgl_client pg_dump --schema-only --no-owner --no-privileges --no-publications --no-subscriptions \
        -h "$PGL_HOST" -p "$(pgl_var PORT "$old")" -U postgres -d "$db" -f "$dump" \
        || pgl_die "pg_dump --schema-only of $db on $old failed"
    # 'public' exists on NEW already; everything else must load cleanly.
    pgl_psql "$new" "$db" -q -f "$dump" >/dev/null 2>"$PGL_ROOT/schema-$db.err" || {
        if grep -v 'schema "public" already exists' "$PGL_ROOT/schema-$db.err" | grep -q ERROR; then
            pgl_die "loading the schema of $db into $new failed:
$(cat "$PGL_ROOT/schema-$db.err")"
        fi
    }
    pgl_sql "$old" "$db" "CREATE PUBLICATION $pub FOR ALL TABLES" >/dev/null \
        || pgl_die "CREATE PUBLICATION on $old failed"
    want="$(pgl_sql "$old" "$db" "SELECT count(*) FROM pg_publication_tables WHERE pubname = '$pub'")"
    pgl_sql "$new" "$db" "CREATE SUBSCRIPTION $sub CONNECTION '$(pgl_conninfo "$old" "$db")' PUBLICATION $pub" >/dev/null \
        || pgl_die "CREATE SUBSCRIPTION on $new failed"
    pgl_log "replicating $db: $old -> $new ($want tables, subscription $sub); waiting for all tables to be 'r'"
    for ((i = 0; i < timeout * 5; i++)); do
        state="$(pgl_sql "$new" "$db" "SELECT count(*) FILTER (WHERE r.srsubstate = 'r') || '/' || count(*)
            FROM pg_subscription_rel r JOIN pg_subscription s ON s.oid = r.srsubid WHERE s.subname = '$sub'")"
        if [ "$state" = "$want/$want" ]; then
            PGL_SUBSCRIPTION="$sub"
            pgl_log "replication of $db ready ($state tables in state r)"
            return 0
        fi
        sleep 0.2
    done
    pgl_die "replication of $db not ready after ${timeout}s (tables ready/total: $state, expected $want); new server log:
$(tail -n 20 "$(pgl_var DIR "$new")/server.log")"
}

# pgl_wait_port PORT [timeout_s]: wait until something accepts TCP connections on 127.0.0.1:PORT.
pgl_wait_port() {
    local port="$1" timeout="${2:-30}" i
    for ((i = 0; i < timeout * 10; i++)); do
        if (exec 3<>"/dev/tcp/$PGL_HOST/$port") 2>/dev/null; then return 0; fi
        sleep 0.1
    done
    return 1
}

# pgl_cpu_ticks PID -> utime+stime of the whole process (all threads), in clock ticks.
pgl_cpu_ticks() {
    # Field 2 (comm) may contain spaces: cut after the last ')'.
    local rest
    rest="$(sed 's/.*) //' "/proc/$1/stat")" || return 1
    # rest starts at field 3 (state): utime is field 14 -> index 12, stime 15 -> 13.
    awk '{ print $12 + $13 }' <<<"$rest"
}
