#!/usr/bin/env python3
"""Differential-test oracle for fleet-calendar: expands .ics files with the Python `icalendar`
and `recurring-ical-events` packages and prints one JSON object per file (JSON lines).

Usage: calendar-oracle.py FROM TO FILE...     (FROM/TO: YYYY-MM-DD, the window [FROM, TO))
       calendar-oracle.py --fixtures          (print the fixture folders shipped in the wheels)

Times are normalised so both sides compare equal when they mean the same thing:
  D:2024-03-31            an all-day date
  F:2024-03-31T00:30:00   a floating date-time
  U:2024-03-30T23:30:00Z  a zoned date-time, as its UTC instant
"""
import datetime as dt
import json
import os
import signal
import sys

import icalendar
import recurring_ical_events


def norm(value):
    if isinstance(value, dt.datetime):
        if value.tzinfo is None or value.tzinfo.utcoffset(value) is None:
            return "F:" + value.strftime("%Y-%m-%dT%H:%M:%S")
        return "U:" + value.astimezone(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return "D:" + value.isoformat()


class Timeout(Exception):
    pass


def on_alarm(_signum, _frame):
    raise Timeout()


def expand(path, start, end):
    with open(path, "rb") as f:
        data = f.read()
    calendars = icalendar.Calendar.from_ical(data, multiple=True)
    out = []
    for cal in calendars:
        for event in recurring_ical_events.of(cal, components=["VEVENT"]).between(start, end):
            s = event.get("DTSTART")
            e = event.get("DTEND")
            if s is None:
                continue
            s = s.dt
            e = e.dt if e is not None else s
            status = str(event.get("STATUS", "")).lower()
            out.append({"uid": str(event.get("UID", "")), "start": norm(s), "end": norm(e), "status": status})
    return out


def main():
    if sys.argv[1:] == ["--fixtures"]:
        for module in (icalendar, recurring_ical_events):
            base = os.path.dirname(module.__file__)
            for root, _dirs, files in os.walk(base):
                if any(name.endswith(".ics") for name in files):
                    print(root)
        return
    start = dt.date.fromisoformat(sys.argv[1])
    end = dt.date.fromisoformat(sys.argv[2])
    signal.signal(signal.SIGALRM, on_alarm)
    for path in sys.argv[3:]:
        signal.alarm(20)
        try:
            result = {"file": path, "ok": True, "occurrences": expand(path, start, end)}
        except Timeout:
            result = {"file": path, "ok": False, "error": "timeout"}
        except Exception as err:  # the oracle's own failures are data, not crashes
            result = {"file": path, "ok": False, "error": f"{type(err).__name__}: {err}"[:300]}
        finally:
            signal.alarm(0)
        print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
