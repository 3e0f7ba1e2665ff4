# syntax=docker/dockerfile:1
# usher: two stages, a Rust build and a slim Debian runtime.
#   docker build -t usher .
#   docker run --rm usher config

FROM rust:1-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches speed up rebuilds; the binary is copied out of the cache.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin usher \
    && install -m 0755 target/release/usher /usr/local/bin/usher

FROM debian:bookworm-slim
# ca-certificates: TLS to PostgreSQL/Redis. curl: the health check probe (also used by compose).
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates curl \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --no-create-home --shell /usr/sbin/nologin usher
COPY --from=build /usr/local/bin/usher /usr/local/bin/usher
# The example route map; mount your own over /etc/usher (usher reloads it when it changes).
COPY gateway-config/routes.toml /etc/usher/routes.toml
ENV USHER_ROUTES__FILE=/etc/usher/routes.toml \
    USHER_LISTEN__API=0.0.0.0:8080 \
    USHER_LISTEN__INTERNAL=0.0.0.0:9191
USER usher
# 8080: the API (through the gateway). 9191: the check endpoint, health and metrics — keep it
# off the public network.
EXPOSE 8080 9191
# Ready or degraded (Redis down) is healthy; unready (PostgreSQL down) or draining is not.
HEALTHCHECK --interval=5s --timeout=6s --start-period=10s --retries=5 \
    CMD ["usher", "healthcheck"]
ENTRYPOINT ["usher"]
CMD ["serve"]
