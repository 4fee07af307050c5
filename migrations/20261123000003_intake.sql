-- Verified incoming webhooks, recorded by the `webhook.intake` job.
CREATE TABLE intake_events (
    provider     TEXT NOT NULL,
    id           TEXT NOT NULL,
    body         TEXT NOT NULL,
    received_at  TIMESTAMPTZ NOT NULL,
    recorded_at  TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (provider, id)
);
