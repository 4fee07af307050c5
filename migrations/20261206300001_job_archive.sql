-- The archive of finished jobs (succeeded, dead, cancelled, expired): copied from Redis
-- by the scheduler in batches (scheduler::archiver), so a job's history outlives Redis's
-- retention. One row per ending, keyed by (queue, id, attempt, finished_at), all taken
-- from the ending itself: a copy sent twice changes nothing, and a dead letter replayed
-- (its attempts start again) and finished again keeps both endings. `queue` is the logical queue (a partitioned queue's partitions are one queue).
-- Searched newest first with keyset pages on (finished_at, seq); each filter has an index
-- that ends in that order, and text in args or error is matched through trigrams.
-- Pruned per queue and state by the retention task (scheduler::retention).
CREATE EXTENSION IF NOT EXISTS pg_trgm;

CREATE TABLE job_archive (
    seq          BIGSERIAL NOT NULL,
    tenant       TEXT,
    queue        TEXT NOT NULL,
    id           TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    kind         TEXT NOT NULL,
    state        TEXT NOT NULL CHECK (state IN ('succeeded', 'dead', 'cancelled', 'expired')),
    args         JSONB NOT NULL,
    result       JSONB,
    error        TEXT,
    progress     JSONB,
    history      JSONB NOT NULL DEFAULT '[]'::jsonb,
    batch        TEXT,
    enqueued_at  TIMESTAMPTZ,
    started_at   TIMESTAMPTZ,
    finished_at  TIMESTAMPTZ NOT NULL,
    archived_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (queue, id, attempt, finished_at)
);
CREATE INDEX job_archive_finished ON job_archive (finished_at DESC, seq DESC);
CREATE INDEX job_archive_queue_state ON job_archive (queue, state, finished_at DESC, seq DESC);
CREATE INDEX job_archive_tenant ON job_archive (tenant, finished_at DESC, seq DESC);
CREATE INDEX job_archive_kind ON job_archive (kind, finished_at DESC, seq DESC);
CREATE INDEX job_archive_state ON job_archive (state, finished_at);
CREATE INDEX job_archive_text ON job_archive
    USING gin ((coalesce(error, '') || ' ' || args::text) gin_trgm_ops);

-- The growing tables' retention scans go by time: each gets the index its prune needs.
CREATE INDEX IF NOT EXISTS webhook_messages_created ON webhook_messages (created_at);
CREATE INDEX IF NOT EXISTS webhook_attempts_at ON webhook_attempts (at);
CREATE INDEX IF NOT EXISTS intake_events_recorded ON intake_events (recorded_at);
CREATE INDEX IF NOT EXISTS comms_raw_stored ON comms_raw (stored_at);
CREATE INDEX IF NOT EXISTS comms_quarantine_at ON comms_quarantine (quarantined_at);
CREATE INDEX IF NOT EXISTS calendar_outbox_published ON calendar_outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS comms_outbox_published ON comms_outbox (published_at) WHERE published_at IS NOT NULL;
CREATE INDEX IF NOT EXISTS batches_created ON batches (created_at);
