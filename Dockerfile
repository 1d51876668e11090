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

# ---- build -------------------------------------------------------------------------------
FROM rust:1-bookworm AS build
WORKDIR /src

# Dependencies first, against stub targets, so this layer is reused until Cargo.toml or
# Cargo.lock change.
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src tests/it \
    && echo 'fn main() {}' > src/main.rs \
    && echo '' > src/lib.rs \
    && echo '' > tests/it/main.rs \
    && cargo build --release --locked --bin callhome \
    && rm -rf src

# The real sources. assets/ is compiled in (include_str!). Remove the stub's build
# artefacts so cargo cannot mistake them for up to date (COPY keeps the sources' older
# mtimes).
COPY src ./src
COPY assets ./assets
RUN rm -rf target/release/.fingerprint/callhome-* \
           target/release/deps/callhome-* target/release/deps/libcallhome-* \
    && cargo build --release --locked --bin callhome

# ---- runtime -----------------------------------------------------------------------------
FROM debian:bookworm-slim

# curl is for the HEALTHCHECK.
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system callhome \
    && useradd --system --gid callhome --no-create-home --home-dir /nonexistent \
               --shell /usr/sbin/nologin callhome

COPY --from=build /src/target/release/callhome /usr/local/bin/callhome
COPY config/callhome.toml /etc/callhome/callhome.toml

# CALLHOME_CONFIG is read by the --config flag; CALLHOME_LISTEN and CALLHOME_PUBLIC_URL
# override the file's listen and public_url. Set CALLHOME_PUBLIC_URL at run time.
ENV CALLHOME_CONFIG=/etc/callhome/callhome.toml \
    CALLHOME_LISTEN=0.0.0.0:8080

EXPOSE 8080

# Assumes the default port; change it here too if CALLHOME_LISTEN changes.
HEALTHCHECK --interval=30s --timeout=3s --start-period=5s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/healthz || exit 1

USER callhome
ENTRYPOINT ["/usr/local/bin/callhome"]
