#!/usr/bin/env bash
# SQL-ingest benchmark: trackway.ingest_batch vs COPY vs plain SQL, in one fresh database.
# Works from any directory; extra arguments go to `trackway-bench ingest`, e.g.
#   bench/ingest.sh --rows 200000 --devices 1000 --batch 1000 \
#                   --database-url postgres://postgres@localhost/postgres [--keep] [--without-trigger]
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
exec cargo run --release -p trackway-bench -- ingest "$@"
