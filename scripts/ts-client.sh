#!/usr/bin/env bash
# The TypeScript client (clients/typescript): installs its locked npm dependencies,
# regenerates its types from the scheduler's OpenAPI description and fails if the
# checked-in ones differ, builds it, then starts a fleet of its own (scheduler + worker on
# free ports, a fresh Redis key prefix and a fresh PostgreSQL database, removed at the
# end) and runs the client's tests against it with Node's test runner.
#
#   scripts/ts-client.sh            check, build and test (what CI runs)
#   scripts/ts-client.sh --update   rewrite openapi.json and src/schema.ts after an API change
#
# Needs Node.js 20+ and npm (the npm registry for `npm ci`), Redis and PostgreSQL
# (scripts/services.sh starts them) and Chromium (scripts/browser.sh installs it).
# FLEET_TEST_PG_URL and FLEET_TEST_REDIS_URL are read as by the Rust tests.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
client=$root/clients/typescript

say() { printf 'ts-client: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# Node.js 20 or later.
if ! command -v node >/dev/null 2>&1 || ! command -v npm >/dev/null 2>&1; then
  if command -v apt-get >/dev/null 2>&1 && [[ $(id -u) -eq 0 ]]; then
    say "installing Node.js and npm from Debian packages"
    apt-get update -qq >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq nodejs npm >/dev/null ||
      die "could not install nodejs and npm; install Node.js 20 or later yourself"
  else
    die "node and npm are needed (Node.js 20 or later)"
  fi
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
((node_major >= 20)) || die "Node.js $(node --version) is too old: the client needs 20 or later"

# The fleet's binaries (debug, as the Rust tests build them).
cargo build --locked -q -p fleet-scheduler -p fleet-worker || die "cargo build of fleet-scheduler and fleet-worker failed"
target=$(cargo metadata --format-version 1 --no-deps | node -e 'let s="";process.stdin.on("data",d=>s+=d).on("end",()=>console.log(JSON.parse(s).target_directory))')
scheduler=$target/debug/fleet-scheduler
worker=$target/debug/fleet-worker

cd "$client"
npm ci --ignore-scripts --no-audit --no-fund --loglevel=error || die "npm ci failed (see above)"

# Types from the OpenAPI description: generated fresh, compared with the checked-in ones.
work=$(mktemp -d "${TMPDIR:-/tmp}/fleet-ts-client.XXXXXX")
trap 'rm -rf "$work"' EXIT
"$scheduler" openapi > "$work/openapi.json" || die "fleet-scheduler openapi failed"
npx --no-install openapi-typescript "$work/openapi.json" --empty-objects-unknown --output "$work/schema.ts" \
  >"$work/generate.log" 2>&1 || { cat "$work/generate.log" >&2; die "openapi-typescript could not generate types from the OpenAPI description"; }
if [[ "${1:-}" == --update ]]; then
  cp "$work/openapi.json" openapi.json
  cp "$work/schema.ts" src/schema.ts
  rm -rf "$work"
  say "updated clients/typescript/openapi.json and src/schema.ts"
  exit 0
fi
drift=0
diff -u openapi.json "$work/openapi.json" >&2 || drift=1
diff -u src/schema.ts "$work/schema.ts" >&2 || drift=1
if ((drift)); then
  rm -rf "$work"
  die "the TypeScript client's types are out of date with the API (diff above): run scripts/ts-client.sh --update and commit the result"
fi
say "types match the API's OpenAPI description"

npm run --silent build || die "the TypeScript client does not compile (see above)"

# A fleet of the tests' own.
cd "$root"
scripts/services.sh
# Headless Chromium for the browser helper's test.
scripts/browser.sh || die "scripts/browser.sh could not install Chromium"
FLEET_CHROMIUM=$(command -v chromium)
export FLEET_CHROMIUM
pg_base=${FLEET_TEST_PG_URL:-postgres://postgres@127.0.0.1:5432}
redis_url=${FLEET_TEST_REDIS_URL:-redis://127.0.0.1:6379}
suffix=$(od -An -N8 -tx1 /dev/urandom | tr -d ' \n')
prefix=ts-$suffix
db=fleet_ts_$suffix
free_port() { node -e 'const s=require("net").createServer().listen(0,"127.0.0.1",()=>{console.log(s.address().port);s.close()})'; }
api_port=$(free_port)
worker_port=$(free_port)
pids=()
cleanup() {
  local status=$?
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  psql -q "$pg_base/postgres" -c "DROP DATABASE IF EXISTS $db WITH (FORCE)" >/dev/null 2>&1 || true
  if command -v redis-cli >/dev/null 2>&1; then
    redis-cli -u "$redis_url" --scan --pattern "$prefix:*" | xargs -r -n 500 redis-cli -u "$redis_url" del >/dev/null || true
  fi
  if ((status != 0)) && [[ -d "$work" ]]; then
    for log in scheduler worker; do
      [[ -s "$work/$log.log" ]] && { say "last lines of the $log's log:"; tail -n 40 "$work/$log.log" >&2; }
    done
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
psql -q "$pg_base/postgres" -c "CREATE DATABASE $db" >/dev/null || die "cannot create a database at $pg_base"
database_url=$pg_base/$db

cat > "$work/scheduler.toml" <<TOML
redis_url = "$redis_url"
prefix = "$prefix"
database_url = "$database_url"
listen = "127.0.0.1:$api_port"

[tenants]
test_kinds = true

[api]
rate_per_key = 1000
burst_per_key = 1000

[images.storage]
kind = "local"
root = "$work/objects"
TOML
cat > "$work/worker.toml" <<TOML
redis_url = "$redis_url"
prefix = "$prefix"
database_url = "$database_url"
listen = "127.0.0.1:$worker_port"
lease_ms = 30000
shutdown_grace_secs = 5
test_kinds = true

[[queues]]
name = "default"
concurrency = 8

[[queues]]
name = "webhooks"
concurrency = 8

[[queues]]
name = "images"
concurrency = 1

[images.storage]
kind = "local"
root = "$work/objects"

[webhooks]
allow = ["127.0.0.0/8"]
TOML

FLEET_SECRETS_KEY=$(od -An -N32 -tx1 /dev/urandom | tr -d ' \n')
export FLEET_SECRETS_KEY
export RUST_LOG=${RUST_LOG:-warn}
# Keys first (this also migrates the database): two tenants, and one key that may not enqueue.
key() { "$scheduler" --config "$work/scheduler.toml" create-api-key "$@" 2>>"$work/scheduler.log"; }
FLEET_API_KEY=$(key --tenant "ts-a-$suffix" --name ts-client) || die "create-api-key failed (see $work/scheduler.log)"
FLEET_API_KEY_OTHER=$(key --tenant "ts-b-$suffix" --name ts-client)
FLEET_API_KEY_OPERATOR=$(key --tenant "ts-a-$suffix" --name ts-client-operator --role operator)

"$scheduler" --config "$work/scheduler.toml" >>"$work/scheduler.log" 2>&1 &
pids+=($!)
"$worker" --config "$work/worker.toml" >"$work/worker.log" 2>&1 &
pids+=($!)
for url in "http://127.0.0.1:$api_port/readyz" "http://127.0.0.1:$worker_port/readyz"; do
  for i in $(seq 1 300); do
    if node -e 'fetch(process.argv[1]).then(r=>process.exit(r.ok?0:1),()=>process.exit(1))' "$url"; then break; fi
    ((i < 300)) || die "$url did not answer within 30 s"
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null || die "a fleet process exited at start (logs below)"; done
    sleep 0.1
  done
done
say "fleet up: API http://127.0.0.1:$api_port, prefix $prefix, database $db"

cd "$client"
FLEET_URL=http://127.0.0.1:$api_port FLEET_API_KEY=$FLEET_API_KEY FLEET_API_KEY_OTHER=$FLEET_API_KEY_OTHER \
  FLEET_API_KEY_OPERATOR=$FLEET_API_KEY_OPERATOR FLEET_TENANT=ts-a-$suffix FLEET_OBJECTS=$work/objects \
  node --test --test-concurrency=4 dist/test/*.test.js || die "the TypeScript client's tests failed (see above)"
