#!/usr/bin/env bash
# Backup-and-restore at scale: 1,000,000 positions through pg_dump -Fc and pg_restore into an empty database,
# with the checks of tests/restore.rs (every row and latest position back, cursors renumbered for the new
# database, one NOTIFY summary instead of a flood) and the time of each step printed.
# Needs the release extension installed (scripts/setup). Rows: first argument, default 1000000.
set -euo pipefail
cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/.."
TRACKWAY_RESTORE_ROWS="${1:-1000000}" exec cargo test --release -p trackway-tests --test restore -- --nocapture
