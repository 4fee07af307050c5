-- Notifications (`notify.send`): recipients with their channels, preferences and quiet
-- hours; templates with per-locale variants; notifications and one send record per
-- (notification, channel). Every row is a tenant's; every query names the tenant.

CREATE TABLE notify_recipients (
    tenant      TEXT NOT NULL,
    id          TEXT NOT NULL,
    email       TEXT,
    phone       TEXT,
    user_id     TEXT,
    locale      TEXT NOT NULL DEFAULT 'en',
    time_zone   TEXT NOT NULL DEFAULT 'UTC',
    -- Local wall-clock minutes since midnight; both set or both null. start > end wraps
    -- past midnight (22:00-07:00).
    quiet_start INTEGER,
    quiet_end   INTEGER,
    -- {"<category>": {"<channel>": false}}: a channel turned off for a category.
    preferences JSONB NOT NULL DEFAULT '{}',
    updated_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id)
);

CREATE TABLE notify_push_subscriptions (
    tenant     TEXT NOT NULL,
    recipient  TEXT NOT NULL,
    endpoint   TEXT NOT NULL,
    p256dh     TEXT NOT NULL,
    auth       TEXT NOT NULL,
    created_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, recipient, endpoint),
    FOREIGN KEY (tenant, recipient) REFERENCES notify_recipients (tenant, id) ON DELETE CASCADE
);

CREATE TABLE notify_templates (
    tenant         TEXT NOT NULL,
    name           TEXT NOT NULL,
    default_locale TEXT NOT NULL,
    -- {"<locale>": {"subject": …, "text": …, "html": …, "sms": …, "push_title": …, "push_body": …}}
    variants       JSONB NOT NULL,
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, name)
);

CREATE TABLE notifications (
    id             TEXT PRIMARY KEY,
    tenant         TEXT NOT NULL,
    recipient      TEXT NOT NULL,
    template       TEXT NOT NULL,
    category       TEXT NOT NULL,
    urgent         BOOLEAN NOT NULL DEFAULT false,
    data           JSONB NOT NULL DEFAULT '{}',
    -- Channels asked for (null: every channel the recipient has).
    channels       TEXT[],
    dedup_key      TEXT,
    -- Random, for the one-click unsubscribe link (RFC 8058).
    unsubscribe    TEXT NOT NULL,
    status         TEXT NOT NULL DEFAULT 'queued',
    deferred_until TIMESTAMPTZ,
    job            TEXT,
    created_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE UNIQUE INDEX notifications_dedup ON notifications (tenant, dedup_key) WHERE dedup_key IS NOT NULL;
CREATE UNIQUE INDEX notifications_unsubscribe ON notifications (unsubscribe);
CREATE INDEX notifications_tenant ON notifications (tenant, created_at);

CREATE TABLE notify_sends (
    notification        TEXT NOT NULL REFERENCES notifications (id) ON DELETE CASCADE,
    channel             TEXT NOT NULL,
    provider            TEXT,
    -- sending, sent, delivered, skipped, failed (and a provider's own: queued, undelivered)
    status              TEXT NOT NULL,
    provider_message_id TEXT,
    error               TEXT,
    attempts            INTEGER NOT NULL DEFAULT 0,
    updated_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (notification, channel)
);
CREATE INDEX notify_sends_provider_id ON notify_sends (provider_message_id) WHERE provider_message_id IS NOT NULL;
