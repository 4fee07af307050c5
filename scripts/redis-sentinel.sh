#!/usr/bin/env bash
# A local Redis primary watched by Redis Sentinel, for tests and for running the fleet on
# Sentinel: a primary and one replica (redis-server) and three Sentinels (redis-server
# --sentinel, quorum 2) on 127.0.0.1, each with its own config and dir under
# $FLEET_STATE_DIR/redis-sentinel-<primary port> (default /tmp/fleet-services/...).
#
#   scripts/redis-sentinel.sh [start]  start it (fresh if any part is down or the replica
#                                      is not in sync) and print the URL setting:
#                                      redis+sentinel://127.0.0.1:26400/fleet,...
#   scripts/redis-sentinel.sh stop     stop every process and delete the state
#   scripts/redis-sentinel.sh urls     print the URL setting
#   scripts/redis-sentinel.sh primary  print the primary's port, as the Sentinels say
#
# Settings: FLEET_SENTINEL_PORTS (five ports: primary, replica, three Sentinels; default
# "6400 6401 26400 26401 26402"), FLEET_SENTINEL_DOWN_MS (down-after-milliseconds, default
# 1000: a dead primary is replaced in about 2 s). No persistence (test data only).
set -euo pipefail

read -r -a PORTS <<< "${FLEET_SENTINEL_PORTS:-6400 6401 26400 26401 26402}"
DOWN_MS="${FLEET_SENTINEL_DOWN_MS:-1000}"
SERVICE=fleet
STATE_DIR="${FLEET_STATE_DIR:-/tmp/fleet-services}/redis-sentinel-${PORTS[0]}"

say() { printf 'redis-sentinel: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[[ ${#PORTS[@]} -eq 5 ]] || die "FLEET_SENTINEL_PORTS must list five ports, got: ${PORTS[*]}"
command -v redis-server >/dev/null 2>&1 && command -v redis-cli >/dev/null 2>&1 ||
  die "redis-server and redis-cli are needed for the local Sentinel setup (Debian: apt-get install redis-server redis-tools)"

urls() {
  local out="" p
  for p in "${PORTS[@]:2}"; do out+="${out:+,}redis+sentinel://127.0.0.1:$p/$SERVICE"; done
  echo "$out"
}

primary_port() {
  redis-cli -h 127.0.0.1 -p "${PORTS[2]}" sentinel get-master-addr-by-name "$SERVICE" 2>/dev/null | sed -n 2p
}

healthy() {
  local p
  for p in "${PORTS[@]}"; do redis-cli -h 127.0.0.1 -p "$p" ping 2>/dev/null | grep -q PONG || return 1; done
  [[ $(primary_port) == "${PORTS[0]}" ]] || return 1
  redis-cli -h 127.0.0.1 -p "${PORTS[1]}" info replication 2>/dev/null | tr -d '\r' | grep -q '^master_link_status:up' || return 1
  # Every Sentinel knows the replica and the other two Sentinels.
  for p in "${PORTS[@]:2}"; do
    [[ $(redis-cli -h 127.0.0.1 -p "$p" sentinel master "$SERVICE" 2>/dev/null | tr -d '\r' |
      awk 'prev=="num-other-sentinels"{print} {prev=$0}') == 2 ]] || return 1
  done
}

stop() {
  local p pid
  for p in "${PORTS[@]}"; do
    pid=$(cat "$STATE_DIR/$p/redis.pid" 2>/dev/null || true)
    [[ -n $pid ]] && kill -9 "$pid" 2>/dev/null || true
  done
  rm -rf "$STATE_DIR"
}

server() {
  local p=$1 dir="$STATE_DIR/$1" extra=$2
  mkdir -p "$dir"
  cat > "$dir/redis.conf" <<CONF
port $p
bind 127.0.0.1
daemonize yes
pidfile $dir/redis.pid
logfile $dir/redis.log
dir $dir
save ""
appendonly no
$extra
CONF
  redis-server "$dir/redis.conf" || die "redis-server on port $p did not start (see $dir/redis.log)"
}

sentinel() {
  local p=$1 dir="$STATE_DIR/$1"
  mkdir -p "$dir"
  cat > "$dir/sentinel.conf" <<CONF
port $p
bind 127.0.0.1
daemonize yes
pidfile $dir/redis.pid
logfile $dir/sentinel.log
dir $dir
sentinel monitor $SERVICE 127.0.0.1 ${PORTS[0]} 2
sentinel down-after-milliseconds $SERVICE $DOWN_MS
sentinel failover-timeout $SERVICE 5000
sentinel parallel-syncs $SERVICE 1
CONF
  redis-server "$dir/sentinel.conf" --sentinel || die "Sentinel on port $p did not start (see $dir/sentinel.log)"
}

start() {
  if healthy; then urls; return; fi
  stop
  server "${PORTS[0]}" ""
  server "${PORTS[1]}" "replicaof 127.0.0.1 ${PORTS[0]}"
  local p
  for p in "${PORTS[@]:2}"; do sentinel "$p"; done
  for _ in $(seq 1 150); do
    if healthy; then urls; return; fi
    sleep 0.2
  done
  die "the Sentinel setup did not become healthy within 30 s (logs under $STATE_DIR)"
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  urls) urls ;;
  primary) primary_port ;;
  *) die "usage: $0 [start|stop|urls|primary]" ;;
esac
