# syntax=docker/dockerfile:1
# The ktrigger image: a static (musl) binary on a distroless, non-root base.
#   docker build --build-arg KTRIGGER_GIT_COMMIT=$(git rev-parse --short=12 HEAD) -t ghcr.io/ktrigger/ktrigger:v0.1.0 .

FROM rust:1-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
# .git is not copied: the commit `ktrigger version` names comes from the build argument.
ARG KTRIGGER_GIT_COMMIT=unknown
ENV KTRIGGER_GIT_COMMIT=${KTRIGGER_GIT_COMMIT}
RUN cargo build --release --locked -p ktrigger --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/ktrigger /ktrigger

# distroless/static carries the CA certificates, /etc/passwd and tzdata; no shell.
FROM gcr.io/distroless/static-debian12:nonroot
ARG KTRIGGER_GIT_COMMIT=unknown
LABEL org.opencontainers.image.title="ktrigger" \
      org.opencontainers.image.description="Kubernetes-native trigger engine: source → CEL filter → destinations" \
      org.opencontainers.image.version="v0.1.0" \
      org.opencontainers.image.revision="${KTRIGGER_GIT_COMMIT}" \
      org.opencontainers.image.source="https://github.com/ktrigger/ktrigger" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY --from=builder /ktrigger /ktrigger
USER 65532:65532
# 8080 metrics, 8081 health probes, 8090 inbound webhooks
EXPOSE 8080 8081 8090
ENTRYPOINT ["/ktrigger"]
CMD ["controller"]
