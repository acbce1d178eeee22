#!/usr/bin/env bash
# The single command that sets up and runs the whole test suite (CI runs it through .ci/run).
#   1. scripts/install-deps.sh   (Postgres 15 + 18, pgbench, pgbouncer, hadolint, user pgcutover)
#   2. cargo build --all-targets
#   3. cargo test --all-targets  (libtest, not nextest: the integration tests share one Postgres 15
#      and one Postgres 18 server per test binary, which a process-per-test runner would defeat)
#   4. hadolint Dockerfile       (if a Dockerfile exists)
# Exits non-zero on any failure. The last line is the overall "N passed, N failed" summary.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

# cargo may live in ~/.cargo/bin without being on PATH in a bare CI environment.
if ! command -v cargo >/dev/null 2>&1 && [ -x "${HOME:-/root}/.cargo/bin/cargo" ]; then
    export PATH="${HOME:-/root}/.cargo/bin:$PATH"
fi

TEST_THREADS="${TEST_THREADS:-4}"
# A watchdog: a hung test ends the run with a message instead of using up CI's time limit.
TEST_TIMEOUT="${TEST_TIMEOUT:-50m}"

echo "==> scripts/install-deps.sh"
bash scripts/install-deps.sh

echo "==> cargo build --all-targets"
cargo build --all-targets

echo "==> cargo test --all-targets -- --test-threads=$TEST_THREADS"
log="$(mktemp "${TMPDIR:-/tmp}/pgcutover-test.XXXXXX.log")"
trap 'rm -f "$log"' EXIT
set +e
timeout --kill-after=30s "$TEST_TIMEOUT" cargo test --all-targets --no-fail-fast -- --test-threads="$TEST_THREADS" 2>&1 | tee "$log"
test_rc=${PIPESTATUS[0]}
if [ "$test_rc" -eq 124 ] || [ "$test_rc" -eq 137 ]; then
    echo "cargo test did not finish within TEST_TIMEOUT=$TEST_TIMEOUT; the tests still running are the" \
         "ones reported as 'running for over 60 seconds' above without a result" >&2
fi
set -e

lint_rc=0
if [ -f Dockerfile ]; then
    echo "==> hadolint Dockerfile"
    if hadolint --no-color Dockerfile; then
        echo "hadolint: Dockerfile clean"
    else
        lint_rc=1
        echo "hadolint: Dockerfile has findings (see above)" >&2
    fi
fi

# Sum libtest's per-binary "test result:" lines.
read -r passed failed ignored binaries < <(awk '
    /^test result:/ {
        for (i = 1; i <= NF; i++) {
            v = $(i - 1) + 0
            if ($i ~ /^passed/)  p += v
            if ($i ~ /^failed/)  f += v
            if ($i ~ /^ignored/) g += v
        }
        b++
    }
    END { printf "%d %d %d %d\n", p, f, g, b }' "$log")

echo
if [ "$test_rc" -ne 0 ]; then
    echo "cargo test FAILED (exit $test_rc)" >&2
    grep -E '^test .* FAILED$|^error(\[|:)' "$log" >&2 || true
fi
[ "$lint_rc" -ne 0 ] && echo "hadolint FAILED" >&2
if [ "$binaries" -eq 0 ] && [ "$test_rc" -eq 0 ]; then
    echo "no test binary ran" >&2
fi
echo "summary: $passed passed, $failed failed, $ignored skipped"
if [ "$test_rc" -ne 0 ] || [ "$lint_rc" -ne 0 ]; then
    exit 1
fi
