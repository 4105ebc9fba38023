# syntax=docker/dockerfile:1
# The ktrigger image: a static (musl) binary on a distroless, non-root base.
#   docker build -t ghcr.io/ktrigger/ktrigger:v0.1.0 .

FROM rust:1-bookworm AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends musl-tools \
 && rm -rf /var/lib/apt/lists/*
RUN rustup target add x86_64-unknown-linux-musl
WORKDIR /src
COPY . .
RUN cargo build --release --locked -p ktrigger --target x86_64-unknown-linux-musl \
 && cp target/x86_64-unknown-linux-musl/release/ktrigger /ktrigger

# distroless/static carries the CA certificates, /etc/passwd and tzdata; no shell.
FROM gcr.io/distroless/static-debian12:nonroot
COPY --from=builder /ktrigger /ktrigger
USER 65532:65532
# 8080 metrics, 8081 health probes, 8090 inbound webhooks
EXPOSE 8080 8081 8090
ENTRYPOINT ["/ktrigger"]
CMD ["controller"]
