#!/usr/bin/env bash
# Makes sure the local Web Push service of the notification tests is running
# (scripts/push-service.py on 127.0.0.1:10080): it decrypts RFC 8291 payloads with the
# subscription's keys using Python's `http_ece` (PyPI http-ece 1.2.1) and checks VAPID
# tokens with `cryptography`, independently of Fleet's code. Installs http-ece with pip
# when it is missing, starts the service when nothing answers, and says plainly what is
# missing when it cannot. Running it again when the service is up does nothing. Override
# the port with FLEET_PUSH_PORT (the tests read FLEET_TEST_PUSH_PORT, default 10080).
set -euo pipefail

PORT="${FLEET_PUSH_PORT:-10080}"
HERE="$(cd "$(dirname "$0")" && pwd)"
LOG="${TMPDIR:-/tmp}/fleet-push-service.log"

say() { printf 'push-service: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

up() { curl -fsS "http://127.0.0.1:$PORT/health" >/dev/null 2>&1; }

up && exit 0
command -v python3 >/dev/null 2>&1 || die "python3 is needed"
if ! python3 -c 'import http_ece, cryptography' 2>/dev/null; then
  say "installing http-ece (and cryptography) with pip"
  python3 -m pip install -q 'http-ece==1.2.1' cryptography >/dev/null 2>&1 ||
    die "could not install http-ece: python3 -m pip install http-ece==1.2.1"
fi
say "starting on 127.0.0.1:$PORT"
setsid nohup python3 "$HERE/push-service.py" "$PORT" >"$LOG" 2>&1 </dev/null &
for _ in $(seq 1 50); do
  up && exit 0
  sleep 0.2
done
die "the push service did not start; see $LOG"
