#!/usr/bin/env bash
# Makes sure an SMTP server is running for the notification tests: aiosmtpd (Debian's
# python3-aiosmtpd, a real SMTP server implementation of the Python project) on
# 127.0.0.1:10025, delivering every message it accepts into one Maildir
# ($DIR/Maildir/new). Tests send through it with Fleet's SMTP client and read the
# messages back from the Maildir by their recipient (aiosmtpd adds `X-RcptTo`), so each
# test uses addresses of its own and tests run in parallel.
# Installs python3-aiosmtpd when it is missing (apt-get, as root), starts the server
# when nothing answers on the port, and says plainly what is missing when it cannot.
# Running it again when the server is up does nothing. Override the port with
# FLEET_SMTP_PORT (the tests read FLEET_TEST_SMTP_PORT, default 10025) and the folder
# with FLEET_SMTP_DIR (tests: FLEET_TEST_SMTP_DIR, default /tmp/fleet-smtp).
set -euo pipefail

PORT="${FLEET_SMTP_PORT:-10025}"
DIR="${FLEET_SMTP_DIR:-/tmp/fleet-smtp}"
PY=/usr/bin/python3

say() { printf 'smtp: %s\n' "$*" >&2; }
die() { say "ERROR: $*"; exit 1; }

# True when an SMTP server greets on the port.
smtp_up() {
  local reply
  reply=$(timeout 3 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$1" && head -n 1 <&3' _ "$PORT" 2>/dev/null) || true
  [[ "$reply" == 220* ]]
}

if smtp_up; then
  exit 0
fi

[[ -x "$PY" ]] || die "Debian's python3 ($PY) is needed: apt-get install python3"
if ! "$PY" -c 'import aiosmtpd' 2>/dev/null; then
  if [[ $(id -u) -eq 0 ]] && command -v apt-get >/dev/null 2>&1; then
    say "installing python3-aiosmtpd"
    DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-aiosmtpd >/dev/null ||
      { apt-get update -q >/dev/null && DEBIAN_FRONTEND=noninteractive apt-get install -y -q python3-aiosmtpd >/dev/null; } ||
      die "could not install python3-aiosmtpd"
  else
    die "aiosmtpd is missing: apt-get install python3-aiosmtpd (as root)"
  fi
fi

mkdir -p "$DIR/Maildir"/{new,cur,tmp}
say "starting aiosmtpd on 127.0.0.1:$PORT (mail in $DIR/Maildir)"
# -n: stay as this user; its own session, so it outlives this script.
setsid nohup "$PY" -m aiosmtpd -n -l "127.0.0.1:$PORT" -c aiosmtpd.handlers.Mailbox "$DIR/Maildir" \
  >"$DIR/aiosmtpd.log" 2>&1 </dev/null &
for _ in $(seq 1 50); do
  smtp_up && exit 0
  sleep 0.2
done
die "aiosmtpd did not greet on 127.0.0.1:$PORT; see $DIR/aiosmtpd.log"
