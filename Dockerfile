# CallHome container image.
#
#   docker build -t callhome .
#   docker run -p 8080:8080 -e CALLHOME_PUBLIC_URL=https://push.example.com callhome
#
# The shipped config (config/callhome.toml) sets public_url = http://127.0.0.1:8080, which
# is only right for a browser on the same machine. Operators set CALLHOME_PUBLIC_URL to
# the URL browsers reach this container at (through any reverse proxy); it builds the
# iframe_url and poll_url handed to backends. The shipped config also holds the demo app
# and its well-known key: for real use mount your own config over
# /etc/callhome/callhome.toml (or point CALLHOME_CONFIG elsewhere) and give app keys with
# key_env.
#
# TLS in the container itself (docs/deploy.md, "TLS in the daemon"): mount the certificate
# directory read-only and name the files; the port then speaks HTTPS (HTTP/2 and HTTP/1.1)
# only, and renewed files on the host are picked up within tls.reload_interval (30s):
#
#   docker run -p 443:8080 \
#     -v /etc/letsencrypt:/etc/letsencrypt:ro \
#     -e CALLHOME_TLS__CERT_PATH=/etc/letsencrypt/live/push.example.com/fullchain.pem \
#     -e CALLHOME_TLS__KEY_PATH=/etc/letsencrypt/live/push.example.com/privkey.pem \
#     -e CALLHOME_PUBLIC_URL=https://push.example.com callhome
#
# Mount the whole /etc/letsencrypt, not live/ alone: live/ holds symlinks into archive/. The
# files must be readable by the container's callhome user (a group of its own with read
# access, or copies made readable by a deploy hook). Behind a proxy that terminates TLS,
# leave [tls] out.

# ---- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src

# The whole workspace (the load tool in bench/ is a member; examples and benches are
# declared targets), built with cache mounts so rebuilds reuse the registry and target
# directory (BuildKit, the default builder of current Docker).
COPY Cargo.toml Cargo.lock ./
COPY src ./src
COPY assets ./assets
COPY bench ./bench
COPY benches ./benches
COPY examples ./examples
COPY tests ./tests
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p callhome --bin callhome \
    && cp target/release/callhome /usr/local/bin/callhome

# ---- runtime -----------------------------------------------------------------------------
FROM debian:bookworm-slim

# curl is for the HEALTHCHECK.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system callhome \
    && useradd --system --gid callhome --no-create-home --home-dir /nonexistent \
               --shell /usr/sbin/nologin callhome \
    && install -d -m 0700 -o callhome -g callhome /var/lib/callhome

COPY --from=build /usr/local/bin/callhome /usr/local/bin/callhome
COPY config/callhome.toml /etc/callhome/callhome.toml

# CALLHOME_CONFIG is read by the --config flag; CALLHOME_LISTEN and CALLHOME_PUBLIC_URL
# override the file's listen and public_url. Set CALLHOME_PUBLIC_URL at run time.
# The snapshot (ids across restarts) lives in a volume the non-root user can write.
ENV CALLHOME_CONFIG=/etc/callhome/callhome.toml \
    CALLHOME_LISTEN=0.0.0.0:8080 \
    CALLHOME_STORE__SNAPSHOT_PATH=/var/lib/callhome/callhome.snapshot
VOLUME /var/lib/callhome

# The one port: plain HTTP, or TLS only when [tls] is set (published as 443, say).
EXPOSE 8080

# Assumes the default port; change it here too if CALLHOME_LISTEN changes. Plain HTTP, or
# HTTPS when [tls] is set (-k: the certificate names the public host, not 127.0.0.1).
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || curl -kfsS https://127.0.0.1:8080/healthz \
        || exit 1

USER callhome
ENTRYPOINT ["/usr/local/bin/callhome"]
