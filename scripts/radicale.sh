#!/usr/bin/env bash
# Makes sure a Radicale CalDAV server is running for the calendar tests:
#   Radicale (PyPI package `radicale`, 3.x) on 127.0.0.1:5232, user `fleet`, password `fleet`,
#   its own config and storage under $FLEET_STATE_DIR/radicale (default /tmp/fleet-services).
# Installs Radicale with pip into its own virtualenv when it is missing, starts it in the
# background when nothing answers on the port, and says plainly what is missing when it cannot.
# Running it again when Radicale is up does nothing. Override the port with FLEET_RADICALE_PORT
# (the tests read FLEET_TEST_CALDAV_URL, default http://127.0.0.1:5232).
set -euo pipefail

PORT="${FLEET_RADICALE_PORT:-5232}"
STATE_DIR="${FLEET_STATE_DIR:-/tmp/fleet-services}/radicale"
VENV="${FLEET_RADICALE_VENV:-${FLEET_STATE_DIR:-/tmp/fleet-services}/radicale-venv}"

say() { printf 'radicale: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# True when Radicale answers on the port (it names itself in the WWW-Authenticate realm or
# serves its web UI at /.web).
radicale_up() {
  local reply
  reply=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" &&
    printf "GET /.web/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n" >&3 && head -c 4096 <&3' _ "$PORT" 2>/dev/null) || true
  [[ "$reply" == HTTP/* && "$reply" == *adicale* ]]
}

port_taken() {
  timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1"' _ "$PORT" 2>/dev/null
}

radicale_bin() {
  if [ -x "$VENV/bin/radicale" ]; then echo "$VENV/bin/radicale"; return; fi
  if command -v radicale >/dev/null 2>&1 && radicale --version 2>/dev/null | grep -q '^3\.'; then
    command -v radicale; return
  fi
  command -v python3 >/dev/null 2>&1 || die "Radicale needs Python 3: install python3 and python3-venv"
  say "installing Radicale with pip into $VENV"
  python3 -m venv "$VENV" >/dev/null 2>&1 || die "cannot create a virtualenv for Radicale at $VENV (install python3-venv)"
  "$VENV/bin/pip" install --quiet --disable-pip-version-check 'radicale>=3.2,<4' >/dev/null 2>&1 ||
    die "pip install radicale failed; install Radicale yourself (pip install radicale)"
  echo "$VENV/bin/radicale"
}

if radicale_up; then exit 0; fi
port_taken && die "port $PORT is taken by something that is not Radicale; set FLEET_RADICALE_PORT"

BIN=$(radicale_bin)
mkdir -p "$STATE_DIR/collections"
# Plain-text users file: test credentials only, on loopback.
printf 'fleet:fleet\n' > "$STATE_DIR/users"
cat > "$STATE_DIR/config" <<CONF
[server]
hosts = 127.0.0.1:$PORT
max_content_length = 104857600
timeout = 30

[auth]
type = htpasswd
htpasswd_filename = $STATE_DIR/users
htpasswd_encryption = plain
delay = 0

[rights]
type = owner_only

[storage]
filesystem_folder = $STATE_DIR/collections

[logging]
level = warning
CONF
say "starting Radicale on 127.0.0.1:$PORT (storage $STATE_DIR/collections)"
nohup "$BIN" --config "$STATE_DIR/config" > "$STATE_DIR/radicale.log" 2>&1 &
echo $! > "$STATE_DIR/radicale.pid"
for _ in $(seq 1 150); do
  if radicale_up; then exit 0; fi
  sleep 0.1
done
die "Radicale did not come up within 15 s; see $STATE_DIR/radicale.log"
