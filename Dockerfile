# One image for every role of loopd (single, controller, worker); docs/containers.md has more.
#   docker build -t loopd .                                # no agent CLI: bring your own
#   docker build --build-arg AGENT=stub -t loopd .         # + stub-agent (the quickstart demo)
#   docker build --build-arg AGENT=claude-code -t loopd .  # + Node and the Claude Code CLI
# Stage `build` compiles loopd with the Rust toolchain; the runtime stage is a slim Debian with
# git (agents commit; loopd fetches and pushes with it), ssh (ssh remotes), tini, libssl3 and
# the agent. `--build-context build=DIR` (BuildKit, podman) replaces the build stage with DIR
# holding DIR/src/target/release/loopd built on the host: that is how scripts/image-test builds
# it.

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
COPY build.rs ./
COPY src ./src
COPY migrations ./migrations
RUN touch src/main.rs src/lib.rs && cargo build --release --locked --bin loopd

FROM debian:bookworm-slim
# none | stub | claude-code (Node from Debian, the CLI from the npm registry at this version).
ARG AGENT=none
ARG CLAUDE_CODE_VERSION=2.1.332
# PEM certificates to trust besides Debian's, e.g. a TLS-inspecting proxy's CA:
#   --build-arg EXTRA_CA_CERTS="$(cat /usr/local/share/ca-certificates/*.crt)"
ARG EXTRA_CA_CERTS=""
# Claude Code's npm package is a native binary per platform (Node only installs it); npm 9
# installs the musl build too (400 MB), which is removed: glibc's is the one used.
RUN set -eu; \
    case "$AGENT" in none|stub|claude-code) ;; \
      *) echo "AGENT=$AGENT: use none, stub or claude-code" >&2; exit 1 ;; esac; \
    pkgs="ca-certificates git openssh-client tini libssl3"; \
    if [ "$AGENT" = claude-code ]; then pkgs="$pkgs nodejs npm"; fi; \
    apt-get update; \
    apt-get install -y --no-install-recommends $pkgs; \
    if [ -n "$EXTRA_CA_CERTS" ]; then \
      printf '%s\n' "$EXTRA_CA_CERTS" > /usr/local/share/ca-certificates/extra.crt; \
      update-ca-certificates; \
    fi; \
    if [ "$AGENT" = claude-code ]; then \
      NODE_EXTRA_CA_CERTS=/etc/ssl/certs/ca-certificates.crt npm install --global --no-fund \
        --no-audit "@anthropic-ai/claude-code@$CLAUDE_CODE_VERSION"; \
      npm cache clean --force; \
      rm -rf "$(npm root --global)"/@anthropic-ai/claude-code/node_modules/@anthropic-ai/*-musl; \
      apt-get purge -y --auto-remove npm; \
      claude --version; \
    fi; \
    rm -rf /var/lib/apt/lists/*; \
    groupadd --system --gid 10001 loopd; \
    useradd --system --gid loopd --uid 10001 --create-home --home-dir /var/lib/loopd loopd; \
    install -d -o loopd -g loopd /repos
COPY --from=build /src/target/release/loopd /usr/local/bin/loopd
COPY config /etc/loopd
COPY examples /usr/share/loopd/examples
RUN if [ "$AGENT" = stub ]; then \
      ln -s /usr/share/loopd/examples/stub-agent.sh /usr/local/bin/stub-agent; fi \
 && loopd --version
USER loopd
WORKDIR /var/lib/loopd
ENV LOOPD__DATA_DIR=/var/lib/loopd
# Named volumes mounted here (and on /repos) start owned by loopd (uid and gid 10001).
VOLUME ["/var/lib/loopd"]
EXPOSE 7700
# `loopd health` asks LOOPD_ADDR (default http://127.0.0.1:7700) for /ready: a worker sets
# LOOPD_ADDR to its own --bind (default 127.0.0.1:7701).
HEALTHCHECK --interval=10s --timeout=15s --start-period=30s --retries=3 CMD ["loopd", "health"]
# tini forwards SIGTERM to loopd (a worker drains on it) and reaps agent processes.
ENTRYPOINT ["/usr/bin/tini", "--", "/usr/local/bin/loopd"]
# A single host reachable from outside the container, so loopd refuses to start without a
# client token: docker run -e LOOPD_AUTH_TOKEN=… -p 127.0.0.1:7700:7700 IMAGE
CMD ["--role", "single", "--bind", "0.0.0.0:7700"]
