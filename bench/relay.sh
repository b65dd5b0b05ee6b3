#!/usr/bin/env bash
# End-to-end benchmark: 200,000 entries of 1,000 devices XADDed to a stream, trackway-relay drains it into a
# fresh database; compared with calling trackway.ingest_batch directly on the same payloads, in one run.
# Prints rows/s of both, their ratio, and the relay's peak RSS. Extra arguments go to `trackway-bench relay`:
#   bench/relay.sh --rows 200000 --devices 1000 --batch 1000 --repetitions 3 \
#                  --database-url postgres://postgres@localhost/postgres --redis-url redis://127.0.0.1:6379
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
cargo build --release -q -p trackway-relay -p trackway-bench
target_dir=$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
exec "$target_dir/release/trackway-bench" relay --relay-binary "$target_dir/release/trackway-relay" "$@"
