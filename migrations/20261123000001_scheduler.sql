-- Schedules editable at run time (schedules from the config file live beside them,
-- and both keep their state in schedule_state).
CREATE TABLE schedules (
    name            TEXT PRIMARY KEY CHECK (name <> '' AND length(name) <= 200),
    cron            TEXT NOT NULL,
    timezone        TEXT NOT NULL DEFAULT 'UTC',
    kind            TEXT NOT NULL,
    args            JSONB NOT NULL DEFAULT '{}'::jsonb,
    queue           TEXT,
    priority        TEXT,
    max_attempts    INTEGER CHECK (max_attempts IS NULL OR max_attempts > 0),
    missed          TEXT NOT NULL DEFAULT 'skip' CHECK (missed IN ('skip', 'catch_up')),
    catch_up_secs   BIGINT NOT NULL DEFAULT 0 CHECK (catch_up_secs >= 0),
    paused          BOOLEAN NOT NULL DEFAULT FALSE,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Where each schedule stands, whichever replica fired it.
CREATE TABLE schedule_state (
    name            TEXT PRIMARY KEY,
    last_fired_at   TIMESTAMPTZ,
    next_fire_at    TIMESTAMPTZ,
    missed_ticks    BIGINT NOT NULL DEFAULT 0,
    last_error      TEXT,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- API keys: `fk_<id>_<secret>`; only a SHA-256 of the secret is stored.
CREATE TABLE api_keys (
    id              TEXT PRIMARY KEY,
    tenant          TEXT NOT NULL,
    name            TEXT NOT NULL DEFAULT '',
    secret_sha256   BYTEA NOT NULL,
    roles           TEXT[] NOT NULL DEFAULT ARRAY['enqueue']::TEXT[],
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    revoked_at      TIMESTAMPTZ
);

-- Batches: the record; live counters are in Redis beside the queue.
CREATE TABLE batches (
    id              TEXT PRIMARY KEY,
    tenant          TEXT NOT NULL,
    queue           TEXT NOT NULL,
    total           INTEGER NOT NULL,
    on_success      JSONB,
    on_complete     JSONB,
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX batches_tenant ON batches (tenant, created_at DESC);
