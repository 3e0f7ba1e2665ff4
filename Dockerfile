# syntax=docker/dockerfile:1
# usher: a Rust build stage and a distroless runtime (glibc, CA certificates, no shell, no
# package manager), running as an unprivileged user.
#   docker build -t usher .
#   docker run --rm usher config

ARG RUST_VERSION=1.95
FROM rust:${RUST_VERSION}-bookworm AS build
WORKDIR /src
COPY . .
# The registry and target caches speed up rebuilds; the binary is copied out of the cache.
# The release profile strips symbols (Cargo.toml), so nothing else needs doing to the binary.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked --bin usher \
    && install -m 0755 target/release/usher /usr/local/bin/usher

# Debian 12, as the build stage, so the binary finds the glibc it was linked against.
FROM gcr.io/distroless/cc-debian12:nonroot
ARG VERSION=0.1.0
ARG REVISION=unknown
LABEL org.opencontainers.image.title="usher" \
      org.opencontainers.image.description="Authentication service and gateway authorizer of the online cinema" \
      org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${REVISION}" \
      org.opencontainers.image.licenses="MIT" \
      org.opencontainers.image.base.name="gcr.io/distroless/cc-debian12:nonroot"
COPY --from=build /usr/local/bin/usher /usr/local/bin/usher
# The example route map; mount your own folder over /etc/usher (usher reloads it when it changes).
COPY gateway-config/routes.toml /etc/usher/routes.toml
ENV USHER_ROUTES__FILE=/etc/usher/routes.toml \
    USHER_LISTEN__API=0.0.0.0:8080 \
    USHER_LISTEN__INTERNAL=0.0.0.0:9191
# distroless's `nonroot`, by number so that Kubernetes' runAsNonRoot can check it.
USER 65532:65532
# 8080: the API (through the gateway). 9191: the check endpoint, health and metrics — keep it
# off the public network.
EXPOSE 8080 9191
# `usher healthcheck` asks the internal listener's /readyz: ready or degraded (Redis down) is
# healthy, unready (PostgreSQL down) or draining is not. No curl needed.
HEALTHCHECK --interval=5s --timeout=6s --start-period=10s --retries=5 \
    CMD ["/usr/local/bin/usher", "healthcheck"]
ENTRYPOINT ["/usr/local/bin/usher"]
CMD ["serve"]
