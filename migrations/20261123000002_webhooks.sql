-- Webhook endpoints subscribed by tenants. Secrets are kept to sign deliveries; every
-- unexpired secret signs (rotation). An empty event_types list means every event.
CREATE TABLE webhook_endpoints (
    id               TEXT PRIMARY KEY,
    tenant           TEXT NOT NULL,
    url              TEXT NOT NULL,
    secrets          TEXT[] NOT NULL,
    event_types      TEXT[] NOT NULL DEFAULT '{}',
    enabled          BOOLEAN NOT NULL DEFAULT TRUE,
    disabled_reason  TEXT,
    created_at       TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at       TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX webhook_endpoints_tenant ON webhook_endpoints (tenant) WHERE enabled;

-- The event log: payloads kept as the exact text received, since signatures cover raw bytes.
CREATE TABLE webhook_messages (
    id           TEXT PRIMARY KEY,
    tenant       TEXT NOT NULL,
    event_type   TEXT NOT NULL,
    payload      TEXT NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Every delivery attempt.
CREATE TABLE webhook_attempts (
    id           BIGSERIAL PRIMARY KEY,
    message_id   TEXT NOT NULL,
    endpoint_id  TEXT NOT NULL,
    attempt      INTEGER NOT NULL,
    at           TIMESTAMPTZ NOT NULL DEFAULT now(),
    outcome      TEXT NOT NULL,
    status       INTEGER,
    duration_ms  INTEGER NOT NULL,
    response     TEXT,
    error        TEXT
);
CREATE INDEX webhook_attempts_message ON webhook_attempts (message_id, endpoint_id, attempt);
