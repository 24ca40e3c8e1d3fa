#!/usr/bin/env bash
# CI: the demo over NATS JetStream (`idem demo --broker nats`, feature `nats`), when nats-server is
# on the PATH or apt-get can install it without asking (root or passwordless sudo); otherwise it
# prints that it skipped, and why, and succeeds. The demo starts its own nats-server on a free
# loopback port with a scratch store and stops it by its process id.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! command -v nats-server >/dev/null 2>&1; then
  sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    if command -v sudo >/dev/null 2>&1 && sudo -n true 2>/dev/null; then
      sudo="sudo -n"
    else
      echo "skipped the NATS demo: nats-server is not installed, and installing it needs root (no passwordless sudo)"
      exit 0
    fi
  fi
  if ! command -v apt-get >/dev/null 2>&1; then
    echo "skipped the NATS demo: nats-server is not installed and there is no apt-get to install it with"
    exit 0
  fi
  echo "installing nats-server with apt-get"
  log=$(mktemp)
  if ! { $sudo env DEBIAN_FRONTEND=noninteractive apt-get update -qq &&
         $sudo env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nats-server; } >"$log" 2>&1; then
    echo "skipped the NATS demo: apt-get could not install nats-server:"
    tail -n 5 "$log"
    exit 0
  fi
fi
echo "$(nats-server --version)"

# (The NATS code is linted by .ci/run's clippy step, which enables the feature.)
# (The same run is `tiny_nats_demo_end_to_end` in the bin's tests, with --features nats; CI runs
# the demo itself only, to build the NATS code once.)
# Exit status 1 if the run with idem double-charged or lost anything.
cargo run --release -q -p idem --features nats -- demo --broker nats --events 10000 --ack-wait 2s --json

# Issue #14: the changelog tests (replicated partitions against a real nats-server: the old owner
# refused by the stream, catch-up after failover, cold restore from snapshot + tail, a partition
# moving back and forth, a failed publish never answered), then a small scale-out demo: a 3-node
# nats-server cluster on loopback, two consumer nodes, one node and one server SIGKILLed; exit
# status 1 on any double or lost charge.
# (idem/nats too: the library is then built once for both commands, with the same features.)
cargo test --release -q -p idem-tests --features nats,idem/nats --test partitions
# The scale demo's take-over re-creates an input consumer that does not answer; the demo takes
# that path only when the cluster is slow to elect, so its tests force it (one server, seconds).
cargo test --release -q -p idem --features nats --bin idem binding_
cargo run --release -q -p idem --features nats -- demo --broker nats --replicate --partitions 8 --nodes 2 --events 6000 --json
