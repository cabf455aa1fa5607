#!/bin/sh
# Submits the demo run and waits for it to end: the quickstart's one-shot `demo` service (and
# scripts/image-test) run it in the image. It makes REPOS/demo a git repository from
# examples/demo (once), waits until the controller is ready, submits a git-mode run of it (the
# workers clone file://REPOS/demo), polls until the run ends, and prints it with its steps.
# Exit 0 when the run COMPLETED.
#
#   demo-run.sh [REPOS]     (default /repos: a volume the controller and the workers mount too)
#   env: LOOPD_ADDR (the controller), LOOPD_TOKEN (its client token), DEMO_TIMEOUT_SEC (600)
set -eu
repos=${1:-/repos}
here=$(cd "$(dirname "$0")" && pwd)
timeout=${DEMO_TIMEOUT_SEC:-600}
deadline=$(($(date +%s) + timeout))
: "${LOOPD_ADDR:=http://127.0.0.1:7700}"
export LOOPD_ADDR

if ! command -v stub-agent >/dev/null 2>&1; then
  echo "demo: no stub-agent in this image (build it with AGENT=stub): not submitting the demo"
  exit 0
fi

repo=$repos/demo
if [ ! -d "$repo/.git" ]; then
  mkdir -p "$repo"
  cp -R "$here/demo/." "$repo/"
  git -C "$repo" init -q -b main
  git -C "$repo" add -A
  git -C "$repo" -c user.name=loopd-demo -c user.email=demo@localhost commit -q -m "demo: spec and plan"
fi

# Poll until ready (compose may start this before the controller is healthy).
until loopd health >/dev/null 2>&1; do
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "demo: the controller at $LOOPD_ADDR is not ready after ${timeout}s: $(loopd health 2>&1)" >&2
    exit 1
  fi
  sleep 1
done

out=$(loopd run --repo-url "file://$repo" specs/demo.md PLAN.md)
echo "$out"
id=$(echo "$out" | sed -n 's/^Run created: //p')
[ -n "$id" ] || { echo "demo: no run id in the answer" >&2; exit 1; }

status=""
while :; do
  status=$(loopd inspect "$id" | awk '$1 == "status" { print $2; exit }')
  case "$status" in COMPLETED|FAILED|CANCELED) break ;; esac
  if [ "$(date +%s)" -ge "$deadline" ]; then
    echo "demo: run $id still $status after ${timeout}s" >&2
    break
  fi
  sleep 1
done
loopd inspect "$id"
echo "demo: run $id $status"
[ "$status" = COMPLETED ]
