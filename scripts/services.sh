#!/usr/bin/env bash
# Makes sure the services Fleet needs are running on this machine:
#   Redis 7 on 127.0.0.1:6379 and PostgreSQL on 127.0.0.1:5432.
# Starts them when they are installed but stopped, installs them from Debian
# packages when they are missing, and says plainly what is missing when it cannot.
# Override the addresses with FLEET_REDIS_PORT / FLEET_PG_PORT.
set -euo pipefail

REDIS_PORT="${FLEET_REDIS_PORT:-6379}"
PG_PORT="${FLEET_PG_PORT:-5432}"
STATE_DIR="${FLEET_STATE_DIR:-/tmp/fleet-services}"

say() { printf 'services: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# True when something answers PONG on the Redis port (no redis-cli needed).
redis_up() {
  local reply
  reply=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && printf "PING\r\n" >&3 && head -c 5 <&3' _ "$REDIS_PORT" 2>/dev/null) || true
  [[ "$reply" == "+PONG" ]]
}

pg_up() {
  if command -v pg_isready >/dev/null 2>&1; then
    pg_isready -q -h 127.0.0.1 -p "$PG_PORT"
  else
    timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$PG_PORT" 2>/dev/null
  fi
}

apt_install() {
  local pkgs=("$@")
  if ! command -v apt-get >/dev/null 2>&1; then
    die "${pkgs[*]} missing and this is not a Debian-like system: install ${pkgs[*]} yourself"
  fi
  local sudo=""
  if [[ $(id -u) -ne 0 ]]; then
    command -v sudo >/dev/null 2>&1 || die "${pkgs[*]} missing; run as root or install them: apt-get install ${pkgs[*]}"
    sudo="sudo"
  fi
  say "installing ${pkgs[*]} from Debian packages"
  $sudo apt-get update -qq >/dev/null || die "apt-get update failed; install ${pkgs[*]} yourself"
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${pkgs[@]}" >/dev/null ||
    die "apt-get install ${pkgs[*]} failed"
}

wait_for() {
  local what=$1 check=$2
  for _ in $(seq 1 100); do
    if $check; then return 0; fi
    sleep 0.1
  done
  die "$what did not come up within 10 s"
}

ensure_redis() {
  if redis_up; then say "Redis is up on 127.0.0.1:$REDIS_PORT"; return; fi
  command -v redis-server >/dev/null 2>&1 || apt_install redis-server
  mkdir -p "$STATE_DIR/redis"
  say "starting Redis on 127.0.0.1:$REDIS_PORT"
  redis-server --daemonize yes --bind 127.0.0.1 -::1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir "$STATE_DIR/redis" --logfile "$STATE_DIR/redis/redis.log" >/dev/null ||
    die "redis-server failed to start; see $STATE_DIR/redis/redis.log"
  wait_for "Redis on port $REDIS_PORT" redis_up
  say "Redis is up on 127.0.0.1:$REDIS_PORT"
}

ensure_postgres() {
  if pg_up; then say "PostgreSQL is up on 127.0.0.1:$PG_PORT"; return; fi
  if ! command -v pg_ctlcluster >/dev/null 2>&1 || [[ -z "$(ls /etc/postgresql 2>/dev/null)" ]]; then
    apt_install postgresql
  fi
  local version
  version=$(ls /etc/postgresql | sort -V | tail -n 1)
  [[ -n "$version" ]] || die "PostgreSQL is installed but has no cluster in /etc/postgresql; create one with pg_createcluster"
  say "starting PostgreSQL $version"
  local sudo=""
  [[ $(id -u) -eq 0 ]] || sudo="sudo"
  $sudo pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null ||
    $sudo pg_ctlcluster "$version" main start ||
    die "PostgreSQL $version failed to start; see /var/log/postgresql/"
  wait_for "PostgreSQL on port $PG_PORT" pg_up
  say "PostgreSQL is up on 127.0.0.1:$PG_PORT"
}

# The database the scheduler uses (tests make their own, one per test).
ensure_fleet_database() {
  local db="${FLEET_PG_DATABASE:-fleet}"
  command -v psql >/dev/null 2>&1 || { say "psql missing: create the database $db yourself"; return; }
  if ! psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -tAc "SELECT 1 FROM pg_database WHERE datname = '$db'" | grep -q 1; then
    psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -qc "CREATE DATABASE $db" || die "could not create database $db"
    say "created database $db"
  fi
}

ensure_redis
ensure_postgres
ensure_fleet_database
