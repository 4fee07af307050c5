-- Per-source sync schedules: a five-field cron expression (UTC) per calendar and comms
-- source, and when its next sync is due. The scheduler's ticker claims due sources with
-- `FOR UPDATE SKIP LOCKED`, enqueues one sync each and moves `next_sync_at` to the
-- expression's next time, so any number of replicas enqueue each due sync once.
-- New and existing sources are due at once (their first sync follows registration).

ALTER TABLE calendar_sources
    ADD COLUMN schedule      TEXT NOT NULL DEFAULT '*/15 * * * *',
    ADD COLUMN next_sync_at  TIMESTAMPTZ NOT NULL DEFAULT now();
CREATE INDEX calendar_sources_due ON calendar_sources (next_sync_at);

ALTER TABLE comms_sources
    ADD COLUMN schedule      TEXT NOT NULL DEFAULT '*/5 * * * *',
    ADD COLUMN next_sync_at  TIMESTAMPTZ NOT NULL DEFAULT now();
CREATE INDEX comms_sources_due ON comms_sources (next_sync_at);
