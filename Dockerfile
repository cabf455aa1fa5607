# One image for every role of loopd:
#   docker run IMAGE --role controller --config /etc/loopd/controller.toml
#   docker run IMAGE --role worker --controller http://controller:7700
# Multi-stage: build with the Rust toolchain, run on a slim Debian with git (agents use it).

FROM rust:1.95-bookworm AS build
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential pkg-config libssl-dev \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
# Dependencies first, so source edits do not rebuild them. The manifest names its bench
# targets, which must exist for it to parse (they are not built here).
COPY Cargo.toml Cargo.lock ./
RUN mkdir -p src benches/pool && echo 'fn main() {}' > src/main.rs \
 && touch src/lib.rs benches/iteration_overhead.rs benches/pool/main.rs \
 && cargo build --release --locked \
 && rm -rf src
COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin loopd

FROM debian:bookworm-slim
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates git tini \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --create-home --home-dir /var/lib/loopd --uid 10001 loopd
COPY --from=build /src/target/release/loopd /usr/local/bin/loopd
COPY config /etc/loopd
USER loopd
WORKDIR /var/lib/loopd
ENV LOOPD__DATA_DIR=/var/lib/loopd
VOLUME ["/var/lib/loopd"]
EXPOSE 7700
# tini forwards SIGTERM to loopd (a worker drains on it) and reaps agent processes.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/loopd"]
CMD ["--role", "single", "--bind", "0.0.0.0:7700", "--data-dir", "/var/lib/loopd"]
