-- Re-enabling an endpoint and replaying what it missed (`POST /v1/endpoints/{id}/enable`).
-- disabled_at: when the endpoint was last disabled (set when it goes from enabled to
-- disabled, kept after it is re-enabled so a second enable finds the same held messages).
ALTER TABLE webhook_endpoints ADD COLUMN disabled_at TIMESTAMPTZ;
-- The held messages are found from both sides: the tenant's messages published since a
-- time, and the endpoint's attempts that ended with 410 Gone or were skipped.
CREATE INDEX webhook_messages_tenant_created ON webhook_messages (tenant, created_at);
CREATE INDEX webhook_attempts_endpoint_at ON webhook_attempts (endpoint_id, at);
