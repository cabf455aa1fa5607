#!/bin/sh
# A stand-in coding agent, to see loopd work before wiring a real one (the image installs it as
# `stub-agent` with --build-arg AGENT=stub; examples/demo uses it). loopd runs `agent_cmd` in the
# run's workspace with the prompt as the last argument; the prompt's first line starting with
# `@` names the spec, the plan and the runner notes: `@<spec> @<plan> @<notes> …`.
#
# One task per step: tick the plan's first open box (`- [ ] …`), write done/<n>.md, commit.
# When no box is left, print the completion token. Asked to review, approve.
set -eu
for prompt; do :; done
: "${prompt:?usage: stub-agent.sh [ARGS…] PROMPT}"

case "$prompt" in
  *"You are a code reviewer"*) echo "Reviewed the last commit: fine."; echo "APPROVED"; exit 0 ;;
esac

plan=$(printf '%s\n' "$prompt" | grep -m 1 '^@' | tr ' ' '\n' | sed -n '2s/^@//p')
if [ -z "$plan" ] || [ ! -f "$plan" ]; then
  echo "stub-agent: the prompt names no plan file I can read ($plan)" >&2
  exit 1
fi
if ! grep -q -- '- \[ \] ' "$plan"; then
  echo "Every task of the plan is done."
  echo "<promise>COMPLETE</promise>"
  exit 0
fi
line=$(grep -n -- '- \[ \] ' "$plan" | head -n 1 | cut -d: -f1)
task=$(sed -n "${line}s/.*- \[ \] //p" "$plan")
sed -i "${line}s/- \[ \] /- [x] /" "$plan"
n=$(grep -c -- '- \[x\] ' "$plan")
mkdir -p done
printf '# Task %s\n\n%s\n\nDone by the stub agent on %s.\n' "$n" "$task" "$(hostname)" > "done/$n.md"
git add -A
git -c user.name=stub-agent -c user.email=stub-agent@localhost commit -q -m "task $n: $task"
echo "Worked on task $n: $task"
