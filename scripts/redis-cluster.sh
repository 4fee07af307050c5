#!/usr/bin/env bash
# A local Redis Cluster for tests and for running the fleet on a cluster:
#   6 redis-server processes on 127.0.0.1 (ports 7000-7005 by default), 3 primaries and
#   3 replicas, each with its own config file, nodes.conf and data dir under
#   $FLEET_STATE_DIR/redis-cluster-<first port> (default /tmp/fleet-services/...).
#
#   scripts/redis-cluster.sh [start]   start it (or what of it is down) and wait for
#                                      cluster_state:ok; prints the URL setting
#                                      (redis://127.0.0.1:7000,...,redis://127.0.0.1:7005)
#   scripts/redis-cluster.sh stop      stop the nodes and delete their state
#   scripts/redis-cluster.sh status    cluster_state and the nodes
#   scripts/redis-cluster.sh urls      print the URL setting
#
# `start` returns once every slot is served and every replica is in sync with its primary.
# Running `start` again when the cluster is up does nothing; a node that died (a failover
# drill) is started again from its nodes.conf and rejoins as a replica. Settings:
#   FLEET_CLUSTER_PORTS      six ports (default "7000 7001 7002 7003 7004 7005"; each
#                            node's bus port is its port + 10000)
#   FLEET_CLUSTER_NODE_TIMEOUT  cluster-node-timeout in ms (default 3000: failover in ~4 s)
# Nodes use `cluster-require-full-coverage no` (the shards that are up keep serving while
# one has no primary) and no persistence (test data only).
set -euo pipefail

read -r -a PORTS <<< "${FLEET_CLUSTER_PORTS:-7000 7001 7002 7003 7004 7005}"
NODE_TIMEOUT="${FLEET_CLUSTER_NODE_TIMEOUT:-3000}"
STATE_DIR="${FLEET_STATE_DIR:-/tmp/fleet-services}/redis-cluster-${PORTS[0]}"

say() { printf 'redis-cluster: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

[[ ${#PORTS[@]} -eq 6 ]] || die "FLEET_CLUSTER_PORTS must list six ports, got: ${PORTS[*]}"

need_tools() {
  if ! command -v redis-server >/dev/null 2>&1 || ! command -v redis-cli >/dev/null 2>&1; then
    die "redis-server and redis-cli are needed for the local Redis Cluster (Debian: apt-get install redis-server redis-tools)"
  fi
}

urls() {
  local out="" p
  for p in "${PORTS[@]}"; do out+="${out:+,}redis://127.0.0.1:$p"; done
  echo "$out"
}

node_up() { redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null | grep -q PONG; }

cluster_ok() {
  local p
  for p in "${PORTS[@]}"; do
    redis-cli -h 127.0.0.1 -p "$p" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  done
  # Three primaries that serve every slot.
  [[ $(redis-cli -h 127.0.0.1 -p "${PORTS[0]}" cluster info 2>/dev/null | tr -d '\r' |
    sed -n 's/^cluster_slots_ok://p') == 16384 ]] || return 1
  # Three replicas, each in sync with its primary.
  local replicas=0 info
  for p in "${PORTS[@]}"; do
    info=$(redis-cli -h 127.0.0.1 -p "$p" info replication 2>/dev/null | tr -d '\r')
    if grep -q '^role:slave' <<< "$info"; then
      grep -q '^master_link_status:up' <<< "$info" || return 1
      replicas=$((replicas + 1))
    fi
  done
  [[ $replicas -eq 3 ]]
}

start_node() {
  local p=$1 dir="$STATE_DIR/$1"
  mkdir -p "$dir"
  cat > "$dir/redis.conf" <<CONF
port $p
bind 127.0.0.1
protected-mode yes
daemonize yes
pidfile $dir/redis.pid
logfile $dir/redis.log
dir $dir
cluster-enabled yes
cluster-config-file $dir/nodes.conf
cluster-node-timeout $NODE_TIMEOUT
cluster-require-full-coverage no
save ""
appendonly no
CONF
  redis-server "$dir/redis.conf" || die "redis-server on port $p did not start; see $dir/redis.log"
}

start() {
  need_tools
  local p fresh=1 started=()
  for p in "${PORTS[@]}"; do
    [[ -f "$STATE_DIR/$p/nodes.conf" ]] && fresh=0
  done
  for p in "${PORTS[@]}"; do
    if node_up "$p"; then
      [[ -f "$STATE_DIR/$p/redis.conf" ]] ||
        die "port $p answers but is not a node of this cluster ($STATE_DIR); stop it or set FLEET_CLUSTER_PORTS"
      continue
    fi
    if timeout 1 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$p" 2>/dev/null; then
      die "port $p is taken by something that is not Redis; set FLEET_CLUSTER_PORTS"
    fi
    start_node "$p"
    started+=("$p")
  done
  for p in "${PORTS[@]}"; do
    for _ in $(seq 1 100); do node_up "$p" && break; sleep 0.1; done
    node_up "$p" || die "node $p did not answer within 10 s; see $STATE_DIR/$p/redis.log"
  done
  if [[ $fresh -eq 1 ]]; then
    local addrs=()
    for p in "${PORTS[@]}"; do addrs+=("127.0.0.1:$p"); done
    say "creating the cluster on ${addrs[*]} (3 primaries, 3 replicas)"
    redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$STATE_DIR/create.log" 2>&1 ||
      die "redis-cli --cluster create failed; see $STATE_DIR/create.log"
  elif [[ ${#started[@]} -gt 0 ]]; then
    say "restarted node(s) ${started[*]}; they rejoin from their nodes.conf"
  fi
  for _ in $(seq 1 300); do
    if cluster_ok; then urls; return 0; fi
    sleep 0.1
  done
  die "the cluster did not reach cluster_state:ok within 30 s; see $STATE_DIR/*/redis.log (or stop it and start again)"
}

stop() {
  local p
  for p in "${PORTS[@]}"; do
    if [[ -f "$STATE_DIR/$p/redis.pid" ]]; then
      local pid
      pid=$(cat "$STATE_DIR/$p/redis.pid" 2>/dev/null || true)
      if [[ -n "$pid" ]] && kill -0 "$pid" 2>/dev/null; then
        redis-cli -h 127.0.0.1 -p "$p" shutdown nosave >/dev/null 2>&1 || kill "$pid" 2>/dev/null || true
        for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      fi
    fi
  done
  rm -rf "$STATE_DIR"
  say "stopped; state removed ($STATE_DIR)"
}

status() {
  need_tools
  redis-cli -h 127.0.0.1 -p "${PORTS[0]}" cluster info | grep -E '^cluster_(state|slots_ok|known_nodes|size)'
  redis-cli -h 127.0.0.1 -p "${PORTS[0]}" cluster nodes
}

case "${1:-start}" in
  start) start ;;
  stop) stop ;;
  status) status ;;
  urls) urls ;;
  *) die "usage: $0 [start|stop|status|urls]" ;;
esac
