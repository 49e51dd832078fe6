# syntax=docker/dockerfile:1
# wxauth image: a release build on Debian bookworm, run on distroless (glibc, no shell, no
# package manager) as the nonroot user. The binary uses rustls (no OpenSSL) and a vendored
# protoc, so the runtime needs only glibc and libgcc. Built `--no-default-features`: without the
# `dev` feature, so the binary carries no WeChat simulator, demo page or dev mode (run without a
# config, it says that a config is required and exits 2).
#
#   docker build -t wxauth:0.1.0 .
#   docker run --rm wxauth:0.1.0 gen-key          # a sealing-key line

FROM rust:1-bookworm AS builder
WORKDIR /src

# Dependencies first, in their own layer: rebuilt only when the manifests or the proto change.
# The workspace names the benchmark harness (`bench/`), so its manifest comes too, with empty
# sources: the image never builds it.
COPY Cargo.toml Cargo.lock build.rs ./
COPY bench/Cargo.toml ./bench/
COPY proto ./proto
RUN mkdir -p src bench/src \
    && echo 'fn main() {}' > src/main.rs \
    && touch src/lib.rs bench/src/lib.rs \
    && echo 'fn main() {}' > bench/src/main.rs \
    && cargo build --release --locked --no-default-features --bin wxauth \
    && rm -rf src

# The application. `touch` makes cargo rebuild the crate: COPY keeps the files' old mtimes,
# which may predate the placeholder build above.
COPY src ./src
RUN touch src/lib.rs src/main.rs \
    && cargo build --release --locked --no-default-features --bin wxauth \
    && install -D -m 0755 target/release/wxauth /out/wxauth

FROM gcr.io/distroless/cc-debian12:nonroot
COPY --from=builder /out/wxauth /usr/local/bin/wxauth
# The helm chart mounts the config here (ConfigMap) and the secrets under /etc/wxauth/secrets.
USER nonroot:nonroot
# gRPC, public HTTP (the callback relay), admin HTTP (/healthz, /readyz, /metrics).
EXPOSE 50051 8080 9090
ENTRYPOINT ["/usr/local/bin/wxauth"]
CMD ["--config", "/etc/wxauth/config.toml"]
