#!/usr/bin/env bash
# loom models (under --cfg loom, in their own target directory so the normal build is not
# invalidated): the single-flight hand-off of check_or_insert_with, the group-commit hand-off
# between callers (threads and async tasks) and the log writer, the order of fenced inserts
# across append lanes, and the commit queue's targeted wake-ups. Each prints how many
# interleavings it explored; one run, its exit status kept.
set -euo pipefail
cd "$(dirname "$0")/.."
log=$(mktemp)
status=0
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p idem --lib --release -- single_flight loom_group_commit loom_commit_queue loom_fenced --nocapture \
  >"$log" 2>&1 || status=$?
grep -E "loom model|^test |test result|panicked|error" "$log" || true
if [[ $status -ne 0 ]]; then
  tail -n 40 "$log"
fi
rm -f "$log"
exit "$status"
