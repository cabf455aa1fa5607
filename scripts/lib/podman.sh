# Shared by scripts/image-test and scripts/compose-test (sourced, not run): messages, podman set
# up the way it works on a machine like this one, waits with deadlines, free ports, the release
# binary. The caller sets `tag` (its message prefix) and `deadline` (epoch seconds) before it
# waits, and `work` (a private directory) before podman_conf.

say() { printf '[%s %s] %s\n' "$tag" "$(date -u +%H:%M:%S)" "$*"; }
fail() { say "FAILED: $*" >&2; exit 1; }

# need TOOL…: fails naming the Debian packages when a tool is missing.
need() {
  local t
  for t in "$@"; do
    command -v "$t" >/dev/null || fail "$t is missing (Debian: apt-get install podman runc debootstrap podman-compose postgresql-client iproute2)"
  done
}

# podman as docs/containers.md says works here: runc (crun refuses hybrid cgroups), no default
# ulimits (setrlimit is refused), cgroupfs and file events (no systemd). Only for this script.
podman_conf() {
  export CONTAINERS_CONF=$work/containers.conf
  cat > "$CONTAINERS_CONF" <<'CONF'
[containers]
default_ulimits = []
[engine]
runtime = "runc"
cgroup_manager = "cgroupfs"
events_logger = "file"
CONF
}

# Seconds left before the deadline.
left() { echo $((deadline - $(date +%s))); }

# wait_until WHAT SECONDS CMD…: runs CMD every second until it succeeds; fails naming WHAT after
# SECONDS (or at the overall deadline).
wait_until() {
  local what=$1 until=$(($(date +%s) + $2))
  shift 2
  [ "$until" -le "$deadline" ] || until=$deadline
  until "$@" >/dev/null 2>&1; do
    [ "$(date +%s)" -lt "$until" ] || fail "timed out waiting for $what"
    sleep 1
  done
}

# free_port: appends a port nothing listens on (and not handed out before) to `ports`.
ports=()
free_port() {
  local p
  for _ in $(seq 100); do
    p=$((20000 + RANDOM % 30000))
    if ! ss -Hltn "sport = :$p" | grep -q . && [[ " ${ports[*]} " != *" $p "* ]]; then
      ports+=("$p")
      return
    fi
  done
  fail "no free port"
}

# A random hex string of N bytes (tokens, names).
random_hex() { od -An -N"$1" -tx1 /dev/urandom | tr -d ' \n'; }

# release_bin: sets `bin` to LOOPD_BIN, else builds target/release/loopd (reused when fresh).
release_bin() {
  bin=${LOOPD_BIN:-}
  if [ -z "$bin" ]; then
    say "cargo build --release (reused when up to date)"
    cargo build --release --locked --bin loopd
    bin=target/release/loopd
  fi
  [ -x "$bin" ] || fail "no loopd binary at $bin"
}

# build_context DIR: the directory `--build-context build=DIR` names, holding the binary where
# the Dockerfile's build stage leaves it.
build_context() {
  mkdir -p "$1/src/target/release"
  cp "$bin" "$1/src/target/release/loopd"
}
