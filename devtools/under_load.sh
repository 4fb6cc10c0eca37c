#!/usr/bin/env bash
# make test, N times in a row (default 3), each on a fresh clone of this repository's HEAD,
# while one busy loop per core keeps every core at 100%: how issue 13's "deterministic
# tests" item is checked. Usage: devtools/under_load.sh [N] [WORKDIR]; a summary line per run.
set -u
runs=${1:-3}
work=${2:-/tmp/caliban-under-load}
repo=$(git -C "$(dirname "$0")/.." rev-parse --show-toplevel)
mkdir -p "$work"
burners=()
for _ in $(seq "$(nproc)"); do
  ( while :; do :; done ) &
  burners+=($!)
done
trap 'kill "${burners[@]}" 2>/dev/null' EXIT
echo "${#burners[@]} busy loops, $(git -C "$repo" rev-parse --short HEAD), $(date -u +%T)"
for i in $(seq "$runs"); do
  rm -rf "$work/ci" && git clone -q "$repo" "$work/ci"
  start=$(date +%s)
  (cd "$work/ci" && CI=true bash .ci/run > "$work/run$i.log" 2>&1); rc=$?
  echo "run $i: exit $rc in $(( $(date +%s) - start )) s;" \
       "$(grep -E '^=+ .*(passed|failed)' "$work/run$i.log" | tail -1)"
  [ "$rc" -eq 0 ] || exit "$rc"
done
