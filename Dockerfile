# pgcutover container image.
#
#   docker build -t pgcutover .
#   docker run --rm -p 6432:6432 -p 6433:6433 -p 9187:9187 \
#       -v "$PWD/my-proxy.toml:/etc/pgcutover/proxy.toml:ro" pgcutover
#
# The image ships the example proxy.toml, which listens on 127.0.0.1 only and uses auth = trust
# for the local demo: mount your own config (listen = "0.0.0.0:6432", admin_listen and
# metrics_listen likewise, scram-sha-256 users, an [admin] password) to use the image for real.
# Flags after the image name are appended to `serve --config ...` and override the file.

# ---------------------------------------------------------------- build
FROM rust:1.95-slim-bookworm AS builder
WORKDIR /build

# The image's binary carries no debug info (the repository's release profile keeps some for
# profiling); symbol names stay for backtraces.
ENV CARGO_PROFILE_RELEASE_DEBUG=0 \
    CARGO_PROFILE_RELEASE_STRIP=debuginfo \
    CARGO_TERM_COLOR=never

# Dependencies first, in their own layer: editing src/ does not rebuild them.
COPY Cargo.toml Cargo.lock ./
RUN mkdir src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs \
    && cargo build --release --locked \
    && rm -rf src

COPY src ./src
# COPY keeps the files' modification times, which may be older than the placeholder build.
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked \
    && install -D -m 0755 target/release/pgcutover /out/pgcutover \
    && /out/pgcutover --version

# ---------------------------------------------------------------- runtime
# The binary needs only glibc, libgcc_s and libm (TLS is rustls), all in the base image:
# no packages to install.
FROM debian:bookworm-slim

RUN groupadd --system --gid 10001 pgcutover \
    && useradd --system --uid 10001 --gid pgcutover --home-dir /nonexistent --no-create-home \
        --shell /usr/sbin/nologin pgcutover

COPY --from=builder /out/pgcutover /usr/local/bin/pgcutover
COPY proxy.toml /etc/pgcutover/proxy.toml

# Numeric, so runtimes that check "runAsNonRoot" can verify it without the passwd file.
USER 10001:10001

# 6432 clients, 6433 admin console, 9187 Prometheus metrics (/metrics).
EXPOSE 6432 6433 9187

# SIGTERM (docker stop) drains: the proxy stops accepting, lets sessions finish until
# shutdown_timeout, then closes the rest.
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/local/bin/pgcutover", "serve", "--config", "/etc/pgcutover/proxy.toml"]
