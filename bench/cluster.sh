#!/usr/bin/env bash
# Redis Cluster benchmark: the same sharded workload (16 shard keys, 1,000 devices) through (a) one relay on
# one Redis node, (b) one relay on a Redis Cluster of three primaries and three replicas, (c) two relays in
# one group on that cluster, with Debian's redis-server started by the benchmark itself. Prints entries/s
# (a 300,000-entry backlog drained, timed from the first commit), XADD->commit p50/p99 at 2,000 entries/s, the relays' peak RSS and
# Redis connections, Redis CPU; then the ceiling (1, 2, 4 and 8 relays with the live feed on and off: the
# database CPU the feeds cost); and the goals. Extra arguments go to `trackway-bench cluster`, e.g.:
#   bench/cluster.sh --repetitions 5 --ceiling 1,2,4 \
#                    --database-url postgres://postgres@localhost/postgres
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
# 8 relays x 16 shards hold a few thousand Redis connections.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
cargo build --release -q -p trackway-relay -p trackway-bench
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
exec "$target_dir/release/trackway-bench" cluster --relay-binary "$target_dir/release/trackway-relay" "$@"
