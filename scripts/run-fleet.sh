#!/usr/bin/env bash
# Starts Fleet locally: makes sure Redis and PostgreSQL run, builds the release
# binaries, and runs a worker in the foreground (Ctrl-C stops it gracefully).
# Config: deploy/local/worker.toml, overridable with FLEET_* variables.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
cargo build --release --locked -p fleet-worker
echo "run-fleet: worker health on http://127.0.0.1:9464/healthz, metrics on /metrics" >&2
exec target/release/fleet-worker --config "${FLEET_CONFIG:-deploy/local/worker.toml}"
