# syntax=docker/dockerfile:1
#
# scriptd in a container, with an external PostgreSQL: set DATABASE_URL
# (scriptd applies pending migrations at start). Without it scriptd would start
# its embedded PostgreSQL, but the image holds no initdb/pg_ctl, so it exits
# with code 2. It listens on 0.0.0.0:8080.
#
#   docker build -t scriptd .
#   docker run -p 8080:8080 -e DATABASE_URL=postgres://user:pass@db:5432/scriptd \
#     -e SCRIPTD__AUTH__MODE=jwt -e SCRIPTD__AUTH__JWT_SECRET=… scriptd
#
# auth.mode "dev" (the default) accepts any token and refuses a non-loopback
# bind unless SCRIPTD__AUTH__ALLOW_DEV_ON_PUBLIC=true (compose.yaml sets it for
# local use). Every other key: config/default.toml, as SCRIPTD__SECTION__KEY.

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/usr/local/cargo/git \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p scriptd \
    && install -m 0755 target/release/scriptd /usr/local/bin/scriptd

FROM debian:bookworm-slim
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --create-home --home-dir /home/scriptd --shell /usr/sbin/nologin scriptd
COPY --from=build /usr/local/bin/scriptd /usr/local/bin/scriptd
USER scriptd
WORKDIR /home/scriptd
ENV SCRIPTD__HTTP__BIND=0.0.0.0 \
    SCRIPTD__LOG__FORMAT=json
EXPOSE 8080
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
    CMD curl -fsS http://127.0.0.1:8080/readyz || exit 1
ENTRYPOINT ["scriptd"]
CMD ["serve"]
