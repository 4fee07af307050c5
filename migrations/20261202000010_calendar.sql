-- Calendar sync: sources per supplier, the objects and events pulled from them, the
-- occurrences they expand to (24 months ahead), double bookings, and an outbox of change
-- events written in the same transaction as the change (so each is emitted exactly once).

-- Per-supplier settings: whether all-day events block time, the zone of floating times.
CREATE TABLE calendar_suppliers (
    tenant        TEXT NOT NULL,
    supplier      TEXT NOT NULL,
    all_day_busy  BOOLEAN NOT NULL DEFAULT false,
    time_zone     TEXT NOT NULL DEFAULT 'UTC',
    PRIMARY KEY (tenant, supplier)
);

-- A CalDAV collection, an .ics feed or a provider account. `secret` is AES-256-GCM sealed
-- (`v1:` + base64), bound to the source id; `state` holds the sync token or feed validators.
CREATE TABLE calendar_sources (
    id                TEXT PRIMARY KEY,
    tenant            TEXT NOT NULL,
    supplier          TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('caldav', 'ics', 'google', 'graph')),
    url               TEXT NOT NULL,
    username          TEXT,
    secret            TEXT,
    state             JSONB NOT NULL DEFAULT '{}',
    max_delete_share  DOUBLE PRECISION NOT NULL DEFAULT 0.5,
    quarantined       TEXT,             -- why the last fetch was not applied (NULL: fine)
    created_at        TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_sync_at      TIMESTAMPTZ,
    last_ok_at        TIMESTAMPTZ,
    last_error        TEXT,
    last_report       JSONB
);
CREATE INDEX calendar_sources_supplier ON calendar_sources (tenant, supplier);

-- One calendar object (CalDAV resource, or the whole feed under href '') and its ETag.
CREATE TABLE calendar_objects (
    source_id  TEXT NOT NULL REFERENCES calendar_sources (id) ON DELETE CASCADE,
    href       TEXT NOT NULL,
    etag       TEXT,
    body       TEXT NOT NULL,
    PRIMARY KEY (source_id, href)
);

-- One VEVENT, keyed by (UID, RECURRENCE-ID); rid = '' for a master or single event.
CREATE TABLE calendar_events (
    source_id     TEXT NOT NULL REFERENCES calendar_sources (id) ON DELETE CASCADE,
    uid           TEXT NOT NULL,
    rid           TEXT NOT NULL,
    href          TEXT NOT NULL,
    sequence      BIGINT NOT NULL,
    dtstamp       TIMESTAMPTZ,
    content_hash  TEXT NOT NULL,
    summary       TEXT,
    updated_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source_id, uid, rid)
);

-- Materialised occurrences; `key` = uid + '|' + the instance's RECURRENCE-ID (or '').
CREATE TABLE calendar_occurrences (
    source_id      TEXT NOT NULL REFERENCES calendar_sources (id) ON DELETE CASCADE,
    key            TEXT NOT NULL,
    tenant         TEXT NOT NULL,
    supplier       TEXT NOT NULL,
    uid            TEXT NOT NULL,
    recurrence_id  TIMESTAMPTZ,
    start_at       TIMESTAMPTZ NOT NULL,
    end_at         TIMESTAMPTZ NOT NULL,
    start_local    TIMESTAMP NOT NULL,
    end_local      TIMESTAMP NOT NULL,
    zone           TEXT,
    all_day        BOOLEAN NOT NULL,
    status         TEXT NOT NULL,
    transparent    BOOLEAN NOT NULL,
    summary        TEXT,
    fingerprint    TEXT NOT NULL,
    PRIMARY KEY (source_id, key)
);
CREATE INDEX calendar_occurrences_window ON calendar_occurrences (tenant, supplier, start_at);

-- Double bookings between two occurrences of one supplier; id = hash of the sorted pair.
CREATE TABLE calendar_conflicts (
    id           TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL,
    supplier     TEXT NOT NULL,
    a_source     TEXT NOT NULL,
    a_key        TEXT NOT NULL,
    b_source     TEXT NOT NULL,
    b_key        TEXT NOT NULL,
    start_at     TIMESTAMPTZ NOT NULL,
    end_at       TIMESTAMPTZ NOT NULL,
    generation   INTEGER NOT NULL DEFAULT 1,
    detected_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    resolved_at  TIMESTAMPTZ
);
CREATE INDEX calendar_conflicts_open ON calendar_conflicts (tenant, supplier) WHERE resolved_at IS NULL;

-- Change events (calendar.conflict.detected / .resolved), one per change: `dedup` is
-- conflict id + generation + what happened.
CREATE TABLE calendar_outbox (
    id            BIGSERIAL PRIMARY KEY,
    tenant        TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    dedup         TEXT NOT NULL UNIQUE,
    payload       JSONB NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at  TIMESTAMPTZ
);
CREATE INDEX calendar_outbox_pending ON calendar_outbox (id) WHERE published_at IS NULL;
