-- Every change an operator or admin makes (admin API, fleetctl, create/revoke-api-key):
-- who (an API key id, or `fleetctl:<user>` / `cli:<user>`; never a secret), the key's
-- tenant, what, on what, with which filter or parameters, how many items it affected,
-- when. Kept 90 days (scheduler::audit::RETENTION), pruned in batches on insert.
CREATE TABLE admin_audit (
    id          BIGSERIAL PRIMARY KEY,
    actor       TEXT NOT NULL,
    tenant      TEXT,
    action      TEXT NOT NULL,
    target      TEXT NOT NULL,
    params      JSONB NOT NULL DEFAULT '{}'::jsonb,
    affected    BIGINT NOT NULL DEFAULT 0,
    at          TIMESTAMPTZ NOT NULL DEFAULT now()
);
CREATE INDEX admin_audit_at ON admin_audit (at);
CREATE INDEX admin_audit_action ON admin_audit (action, id DESC);
