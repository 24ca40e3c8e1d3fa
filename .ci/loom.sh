#!/usr/bin/env bash
# loom models (under --cfg loom, in their own target directory so the normal build is not
# invalidated): the single-flight hand-off of check_or_insert_with and the group-commit hand-off
# between callers and the log writer, and the commit queue's targeted wake-ups. Each prints how
# many interleavings it explored.
set -euo pipefail
cd "$(dirname "$0")/.."
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p idem --lib --release -- single_flight loom_group_commit loom_commit_queue --nocapture 2>&1 |
  grep -E "loom model|^test |test result|panicked|error" || true
# Re-run quietly for the exit status (the build is cached).
RUSTFLAGS="--cfg loom" CARGO_TARGET_DIR=target/loom \
  cargo test -p idem --lib --release -q -- single_flight loom_group_commit loom_commit_queue >/dev/null
