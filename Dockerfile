# syntax=docker/dockerfile:1
# pg_kpi images (docs/docker.md):
#   docker build -t pg_kpi .                                  # postgres:15 with pg_kpi preloaded
#   docker build --target notifier -t pg_kpi-notifier .       # the notifier on bookworm-slim
# The build runs the scripts CI runs: scripts/setup.sh --build-only (apt packages with the
# Postgres headers pinned to the image's server, cargo-pgrx 0.18.1, cargo pgrx init),
# scripts/lib.sh's install_extension (cargo pgrx install, the frozen releases and the
# upgrade scripts) and scripts/build-dashboard.sh (npm ci from the committed lockfile).
# No image can be built on the project's machines (no container registry); the file is
# linted and its scripts are tested there (scripts/check-packaging.sh).

ARG RUST_VERSION=1.95.0

# --- the toolchain, on the same image as the server, so headers and server agree ---
FROM postgres:15-bookworm AS build-base
ARG RUST_VERSION
ENV CARGO_HOME=/usr/local/cargo \
    RUSTUP_HOME=/usr/local/rustup \
    PATH=/usr/local/cargo/bin:$PATH
SHELL ["/bin/bash", "-o", "pipefail", "-c"]
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl gcc libc6-dev \
    && rm -rf /var/lib/apt/lists/*
RUN curl --proto '=https' --tlsv1.2 -sSf https://sh.rustup.rs \
    | sh -s -- -y --no-modify-path --profile minimal --default-toolchain "${RUST_VERSION}"
WORKDIR /src
COPY scripts/setup.sh scripts/setup.sh
RUN scripts/setup.sh --build-only && rm -rf /var/lib/apt/lists/*

# --- pg_kpi, installed into this stage's Postgres like on a CI machine ---
FROM build-base AS extension-build
COPY . .
RUN ROOT=/src && . scripts/lib.sh && install_extension

# --- the notifier, with the dashboard it embeds ---
FROM build-base AS notifier-build
COPY . .
RUN scripts/build-dashboard.sh \
    && cargo build --release --locked -p notifier --bin notifier

# --- the notifier image ---
FROM debian:bookworm-slim AS notifier
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home-dir /nonexistent --shell /usr/sbin/nologin notifier
COPY --from=notifier-build /src/target/release/notifier /usr/local/bin/notifier
USER notifier
EXPOSE 8080
ENTRYPOINT ["/usr/local/bin/notifier"]
CMD ["serve"]

# --- the database image (the default target): postgres:15 with pg_kpi preloaded ---
FROM postgres:15-bookworm AS postgres
COPY --from=extension-build /usr/lib/postgresql/15/lib/pg_kpi.so /usr/lib/postgresql/15/lib/
COPY --from=extension-build /usr/share/postgresql/15/extension/pg_kpi* /usr/share/postgresql/15/extension/
# initdb copies this sample into every new cluster; the image's entrypoint runs initdb.
# Databases created at first start (POSTGRES_DB) get the extension.
RUN echo "shared_preload_libraries = 'pg_kpi'" >> /usr/share/postgresql/postgresql.conf.sample \
    && echo 'CREATE EXTENSION IF NOT EXISTS pg_kpi;' > /docker-entrypoint-initdb.d/00-pg_kpi.sql
