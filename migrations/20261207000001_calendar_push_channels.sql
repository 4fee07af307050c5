-- Push channels: Google Calendar `events.watch` channels and Microsoft Graph subscriptions
-- that tell Fleet a source changed, so it syncs in seconds instead of on its schedule.

-- Whether a Google or Graph source asks its provider for push notifications (when the
-- workers know the public URL notifications reach Fleet at; otherwise it stays polled).
ALTER TABLE calendar_sources ADD COLUMN IF NOT EXISTS push BOOLEAN NOT NULL DEFAULT true;

-- One row per channel a provider holds for a source. The newest row of a source is its
-- live channel; an older one lives only while its replacement is being set up.
CREATE TABLE IF NOT EXISTS calendar_channels (
    -- Google: the channel id Fleet chose; Graph: the subscription id Graph assigned.
    id                  TEXT NOT NULL,
    provider            TEXT NOT NULL CHECK (provider IN ('google', 'graph')),
    source_id           TEXT NOT NULL REFERENCES calendar_sources (id) ON DELETE CASCADE,
    -- Copied from the source when the channel is made: a notification never names a tenant.
    tenant              TEXT NOT NULL,
    -- SHA-256 of the channel's random token (Google `token`, Graph `clientState`); the
    -- token itself is only ever held by the provider.
    token_sha256        BYTEA NOT NULL,
    -- Google's opaque `resourceId` (channels.stop needs it; notifications carry it).
    resource_id         TEXT,
    created_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    renewed_at          TIMESTAMPTZ NOT NULL DEFAULT now(),
    expires_at          TIMESTAMPTZ NOT NULL,
    -- When a third of the lifetime is left: the ticker asks for a sync, which renews.
    renew_at            TIMESTAMPTZ NOT NULL,
    -- The ticker's last ask (so that it asks again only after a while).
    renew_requested_at  TIMESTAMPTZ,
    last_notified_at    TIMESTAMPTZ,
    notifications       BIGINT NOT NULL DEFAULT 0,
    PRIMARY KEY (provider, id)
);
CREATE INDEX IF NOT EXISTS calendar_channels_source ON calendar_channels (source_id, created_at);
CREATE INDEX IF NOT EXISTS calendar_channels_renew ON calendar_channels (renew_at);
