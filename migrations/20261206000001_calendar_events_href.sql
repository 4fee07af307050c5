-- A sync reads the stored events of the objects it re-fetched or removed (by href), not
-- the whole source: this index serves that lookup.
CREATE INDEX IF NOT EXISTS calendar_events_source_href ON calendar_events (source_id, href);
