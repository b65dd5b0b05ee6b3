#!/usr/bin/env bash
# Live-path benchmark: positions XADDed at a fixed rate go through trackway-relay into a fresh database, and
# out of the relay's /live WebSocket to clients in the benchmark process. Prints XADD->commit, commit->receipt
# and XADD->receipt latency p50/p95/p99, delivered vs expected, the relay's RSS and CPU and the benchmark's
# own CPU for the scenarios notify (XADD->NOTIFY alone), routed, broadcast and idle; then storm (clients
# reconnecting at once to resume), unread (clients that never read) and forged (an honest and a forged
# `since`); and the goals. `--scenario anchor --anchor-binary PATH` compares with pg_eventserv (a binary
# you bring: this project neither builds nor installs it); `--anchor-durable` adds pg_eventserv with a
# publisher that stores each payload, so that its commit waits for the WAL flush as Trackway's does.
# Extra arguments go to `trackway-bench live`, e.g.:
#   bench/live.sh --scenario routed --routed-seconds 10 --relay-arg=--batch-size=200
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
# 10,000 connections: one descriptor each in the relay and in the benchmark.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p trackway-relay -p trackway-bench
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
exec "$target_dir/release/trackway-bench" live --relay-binary "$target_dir/release/trackway-relay" "$@"
