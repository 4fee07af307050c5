#!/usr/bin/env bash
# Starts Fleet locally: makes sure Redis and PostgreSQL run (installing them if
# needed), builds the release binaries, starts the scheduler (HTTP API on
# 127.0.0.1:8080, cron schedules) and a worker (health and metrics on 127.0.0.1:9464).
# Ctrl-C stops both gracefully. Configs: deploy/local/*.toml, overridable with FLEET_*.
# FLEET_REDIS_CLUSTER=1 runs it on a local Redis Cluster, FLEET_REDIS_SENTINEL=1 behind a
# local Redis Sentinel (see the README).
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/services.sh
# FLEET_REDIS_CLUSTER=1: run on a local 3+3 Redis Cluster (scripts/redis-cluster.sh) instead
# of the single Redis (PostgreSQL stays as it is).
if [[ "${FLEET_REDIS_CLUSTER:-}" == 1 ]]; then
  FLEET_REDIS_URL=$(scripts/redis-cluster.sh start)
  export FLEET_REDIS_URL
  echo "run-fleet: Redis Cluster $FLEET_REDIS_URL" >&2
elif [[ "${FLEET_REDIS_SENTINEL:-}" == 1 ]]; then
  FLEET_REDIS_URL=$(scripts/redis-sentinel.sh start)
  export FLEET_REDIS_URL
  echo "run-fleet: Redis behind Sentinel $FLEET_REDIS_URL" >&2
fi
scripts/build-deps.sh
cargo build --release --locked -p fleet-worker -p fleet-scheduler
mkdir -p .fleet
if [[ ! -s .fleet/api-key ]] || ! grep -qx 'fk_[0-9a-f]*_[0-9a-f]*' .fleet/api-key; then
  target/release/fleet-scheduler --config deploy/local/scheduler.toml create-api-key --tenant demo --name local > .fleet/api-key
fi
# Calendar and mail source credentials are sealed with FLEET_SECRETS_KEY: a local key is made
# once (kept in .fleet/secrets-key, readable by this user only) unless one is set already.
if [[ -z "${FLEET_SECRETS_KEY:-}" ]]; then
  if [[ ! -s .fleet/secrets-key ]]; then
    (umask 077 && od -An -N32 -tx1 /dev/urandom | tr -d ' \n' > .fleet/secrets-key)
  fi
  FLEET_SECRETS_KEY=$(cat .fleet/secrets-key)
  export FLEET_SECRETS_KEY
fi
target/release/fleet-scheduler --config "${FLEET_SCHEDULER_CONFIG:-deploy/local/scheduler.toml}" &
scheduler=$!
trap 'kill -TERM "$scheduler" 2>/dev/null || true; wait "$scheduler" 2>/dev/null || true' EXIT
cat >&2 <<MSG
run-fleet: API      http://127.0.0.1:8080   (OpenAPI at /openapi.json; API key in .fleet/api-key)
run-fleet: worker   http://127.0.0.1:9464/healthz, /readyz and /metrics (the scheduler serves both probes too)
MSG
target/release/fleet-worker --config "${FLEET_CONFIG:-deploy/local/worker.toml}"
