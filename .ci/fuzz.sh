#!/usr/bin/env bash
# Short fuzz run of every cargo-fuzz target in fuzz/ (record, recover, ops), from the repo root:
#
#   bash .ci/fuzz.sh                     # 10 s per target; about 3 min in all with the build
#   FUZZ_SECONDS=600 bash .ci/fuzz.sh    # longer
#   FUZZ_TARGETS="ops recover" bash .ci/fuzz.sh
#
# Each target starts from its committed seeds (fuzz/corpus/<target>/seed-*); what the run adds
# goes to a scratch directory, so the work tree stays clean. A crash fails the script; its input
# is in fuzz/artifacts/<target>/ (git-ignored): replay it with
#   cargo fuzz run --sanitizer none <target> fuzz/artifacts/<target>/crash-...
# Inputs that once showed an engine bug are kept in fuzz/regressions/<target>/ and replayed
# first: they must pass. A bug not fixed yet is skipped by a guard in the harness unless
# IDEM_FUZZ_STRICT=1; the strict replay reports, without failing, each one that still reproduces.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${FUZZ_SECONDS:-10}
targets=${FUZZ_TARGETS:-record recover ops}
export CARGO_TERM_COLOR=${CARGO_TERM_COLOR:-never}

if ! cargo fuzz --version >/dev/null 2>&1; then
  echo "installing cargo-fuzz"
  cargo install cargo-fuzz --locked
fi
cargo fuzz --version

# The fuzz crate is outside the main workspace, so the workspace's fmt and clippy miss it.
cargo fmt --manifest-path fuzz/Cargo.toml -- --check
cargo clippy --manifest-path fuzz/Cargo.toml --all-targets -- -D warnings

# Builds every target once (stable toolchain: no sanitizer; debug assertions on).
cargo fuzz build --sanitizer none
triple=$(rustc -vV | sed -n 's/^host: //p')
bin_dir=fuzz/target/$triple/release

scratch=$(mktemp -d -t idem-fuzz-corpus.XXXXXX)
trap 'rm -rf "$scratch"' EXIT

failed=()
summary=()
for target in $targets; do
  echo
  echo "== fuzz target $target (${seconds} s)"

  regressions=fuzz/regressions/$target
  if [[ -d $regressions ]] && compgen -G "$regressions/*" >/dev/null; then
    if ! "$bin_dir/$target" "$regressions"/* >"$scratch/$target-regressions.log" 2>&1; then
      echo "FAIL: a regression input of $target crashes (log below)"
      tail -n 40 "$scratch/$target-regressions.log"
      failed+=("$target (regressions)")
    fi
    for input in "$regressions"/*; do
      if ! IDEM_FUZZ_STRICT=1 "$bin_dir/$target" "$input" >/dev/null 2>&1; then
        echo "note: known engine bug still reproduces (checked with IDEM_FUZZ_STRICT=1): $input"
      fi
    done
  fi

  mkdir -p "$scratch/$target"
  log=$scratch/$target.log
  status=0
  # New inputs go to the first (scratch) directory; the committed seeds are only read.
  cargo fuzz run --sanitizer none "$target" "$scratch/$target" "fuzz/corpus/$target" -- \
    -max_total_time="$seconds" -timeout=30 -print_final_stats=1 >"$log" 2>&1 || status=$?
  final=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n 1 || true)
  if [[ $status -ne 0 || -z $final ]]; then
    echo "FAIL: $target (exit $status); last lines of the log:"
    tail -n 60 "$log"
    failed+=("$target")
    last=$(grep -E '^#[0-9]+' "$log" | tail -n 1 || true)
    summary+=("$target: CRASH after ${last:-no stats}")
  else
    execs=$(sed -n 's/^stat::number_of_executed_units:[[:space:]]*//p' "$log" | tail -n 1)
    echo "$final"
    echo "executions: ${execs:-?}"
    summary+=("$target: ${execs:-?} execs; $final")
  fi
done

echo
echo "== fuzz summary"
printf '%s\n' "${summary[@]}"
if [[ ${#failed[@]} -gt 0 ]]; then
  echo "fuzzing FAILED: ${failed[*]}"
  exit 1
fi
echo "fuzzing passed"
