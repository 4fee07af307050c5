#!/usr/bin/env bash
# Makes sure an S3-protocol server is running for the storage tests:
#   moto's server (PyPI package `moto[server]`) on 127.0.0.1:9000.
# Installs moto with pip when it is missing, starts it in the background when
# nothing answers on the port, and says plainly what is missing when it cannot.
# Running it again when moto is up does nothing. Override the port with
# FLEET_S3_PORT (the tests read FLEET_TEST_S3_URL, default http://127.0.0.1:9000).
set -euo pipefail

S3_PORT="${FLEET_S3_PORT:-9000}"
STATE_DIR="${FLEET_STATE_DIR:-/tmp/fleet-services}"

say() { printf 's3: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# True when an S3 server answers on the port (ListBuckets gives XML, signed or not).
s3_up() {
  local reply
  reply=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" &&
    printf "GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3 && head -c 4096 <&3' _ "$S3_PORT" 2>/dev/null) || true
  [[ "$reply" == HTTP/* && "$reply" == *ListAllMyBucketsResult* ]]
}

# True when something (S3 or not) listens on the port.
port_taken() {
  timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$S3_PORT" 2>/dev/null
}

python_cmd() {
  if command -v python3 >/dev/null 2>&1; then echo python3
  elif command -v python >/dev/null 2>&1; then echo python
  else die "moto needs Python 3 and pip: install python3 and python3-pip, then pip install 'moto[server]'"
  fi
}

moto_installed() {
  "$PY" -c 'import moto.server, flask, flask_cors' >/dev/null 2>&1
}

ensure_moto() {
  if moto_installed; then return; fi
  say "installing moto[server] with pip"
  "$PY" -m pip --version >/dev/null 2>&1 ||
    die "moto is missing and pip is not available for $PY: install pip, then pip install 'moto[server]'"
  "$PY" -m pip install --quiet --disable-pip-version-check 'moto[server]' >/dev/null 2>&1 ||
    "$PY" -m pip install --quiet --disable-pip-version-check --break-system-packages 'moto[server]' >/dev/null 2>&1 ||
    die "pip install 'moto[server]' failed; install moto yourself (pip install 'moto[server]')"
  moto_installed || die "moto was installed but cannot be imported by $PY"
}

wait_for() {
  local what=$1 check=$2
  for _ in $(seq 1 150); do
    if $check; then return 0; fi
    sleep 0.1
  done
  die "$what did not come up within 15 s; see $STATE_DIR/moto/moto.log"
}

ensure_s3() {
  if s3_up; then say "S3 (moto) is up on 127.0.0.1:$S3_PORT"; return; fi
  port_taken && die "something that is not an S3 server listens on 127.0.0.1:$S3_PORT; stop it or set FLEET_S3_PORT"
  PY=$(python_cmd)
  ensure_moto
  mkdir -p "$STATE_DIR/moto"
  say "starting moto on 127.0.0.1:$S3_PORT (log: $STATE_DIR/moto/moto.log)"
  # Started through Python, not the moto_server entry point, so a pyenv shim or a
  # PATH without pip's bin folder does not matter. setsid: it outlives this script.
  setsid nohup "$PY" -c 'from moto.server import main; main()' -H 127.0.0.1 -p "$S3_PORT" \
    >>"$STATE_DIR/moto/moto.log" 2>&1 </dev/null &
  echo $! >"$STATE_DIR/moto/moto.pid"
  wait_for "moto on port $S3_PORT" s3_up
  say "S3 (moto) is up on 127.0.0.1:$S3_PORT"
}

ensure_s3
