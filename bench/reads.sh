#!/usr/bin/env bash
# The live feed's read: this build's extension against the previous release (its kept install script), on
# tables of 1, 10 and 50 TimescaleDB chunks (a plain table where TimescaleDB is missing). Works from any
# directory; extra arguments go to `trackway-bench reads`, e.g.
#   bench/reads.sh --database-url "host=127.0.0.1 port=5433 user=postgres" --chunks 1,10,50,100
# Needs the release extension and the earlier releases installed (scripts/setup, scripts/pg17).
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
exec cargo run --release -p trackway-bench -- reads "$@"
