-- Push-back: bookings made in the platform, written to one of the supplier's calendars
-- (`target_source`). `version` rises with every change the platform makes (it becomes the
-- remote event's SEQUENCE); `pushed_version` is the last version the remote calendar holds,
-- with its href and ETag, so a retried push is idempotent and an update carries If-Match.
CREATE TABLE calendar_bookings (
    tenant          TEXT NOT NULL,
    id              TEXT NOT NULL,
    supplier        TEXT NOT NULL,
    target_source   TEXT NOT NULL REFERENCES calendar_sources (id) ON DELETE CASCADE,
    summary         TEXT NOT NULL DEFAULT '',
    description     TEXT,
    location        TEXT,
    start_at        TIMESTAMPTZ NOT NULL,
    end_at          TIMESTAMPTZ NOT NULL,
    time_zone       TEXT NOT NULL DEFAULT 'UTC',
    deleted         BOOLEAN NOT NULL DEFAULT false,
    version         BIGINT NOT NULL DEFAULT 0,
    updated_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    remote_href     TEXT,
    remote_etag     TEXT,
    pushed_version  BIGINT,
    push_state      TEXT NOT NULL DEFAULT 'pending'
        CHECK (push_state IN ('pending', 'pushed', 'kept_theirs', 'deleted', 'failed')),
    push_error      TEXT,
    pushed_at       TIMESTAMPTZ,
    PRIMARY KEY (tenant, id),
    CHECK (end_at > start_at)
);
CREATE INDEX calendar_bookings_supplier ON calendar_bookings (tenant, supplier);
