#!/usr/bin/env bash
# Installs the differential-test oracle for fleet-calendar (Python `icalendar` 7.3.0, BSD-2, and
# `recurring-ical-events` 3.8.2, LGPL-3.0+) into its own virtualenv, and runs it.
#   scripts/calendar-oracle.sh                 install if needed, print the oracle's python path
#   scripts/calendar-oracle.sh FROM TO FILE... expand files (see scripts/calendar-oracle.py)
#   scripts/calendar-oracle.sh --fixtures      the .ics folders shipped inside the wheels
# The wheels' .ics files are used where pip put them; nothing LGPL is copied into this repository.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
venv="${FLEET_CALENDAR_ORACLE_VENV:-/tmp/fleet-calendar-oracle}"
python="$venv/bin/python"
if ! "$python" -c 'import icalendar, recurring_ical_events' >/dev/null 2>&1; then
  if ! command -v python3 >/dev/null 2>&1; then
    echo "calendar-oracle: python3 is missing (apt-get install python3 python3-venv)" >&2
    exit 1
  fi
  python3 -m venv "$venv" >&2 || { echo "calendar-oracle: cannot create a virtualenv at $venv (apt-get install python3-venv)" >&2; exit 1; }
  "$venv/bin/pip" install --quiet "icalendar==7.3.0" "recurring-ical-events==3.8.2" >&2 \
    || { echo "calendar-oracle: pip could not install icalendar and recurring-ical-events" >&2; exit 1; }
fi
if [ $# -eq 0 ]; then
  echo "$python"
else
  exec "$python" "$here/calendar-oracle.py" "$@"
fi
