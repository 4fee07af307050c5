-- Communication aggregation, part 2: the platform's own (in-app) messages as a source,
-- and an outbox of new timeline entries for webhooks and the live stream.

-- In-app messages, written by the upstream app. A `comms.sync` job of an `in_app`
-- source reads them in commit order: `txid` (the writing transaction) then `seq`. Its
-- cursor (comms_cursors, folder 'in_app': highestmodseq = txid, last_uid = seq) only
-- moves past transactions that have finished (`txid < pg_snapshot_xmin(...)`), so a
-- row whose transaction commits late is never skipped, which a plain `seq > cursor`
-- read would do when two writers commit out of order.
CREATE TABLE platform_messages (
    tenant      TEXT NOT NULL,
    id          TEXT NOT NULL,
    seq         BIGSERIAL,
    txid        XID8 NOT NULL DEFAULT pg_current_xact_id(),
    client      TEXT NOT NULL,
    sender      TEXT NOT NULL,
    direction   TEXT NOT NULL CHECK (direction IN ('inbound', 'outbound')),
    body        TEXT NOT NULL,
    sent_at     TIMESTAMPTZ NOT NULL,
    thread_ref  TEXT,
    PRIMARY KEY (tenant, id)
);
CREATE INDEX platform_messages_order ON platform_messages (tenant, txid, seq);

-- New timeline entries as events, written in the transaction that creates the entry
-- and published afterwards (webhooks, live stream). `payload` never holds full text.
CREATE TABLE comms_outbox (
    id            BIGSERIAL PRIMARY KEY,
    tenant        TEXT NOT NULL,
    event_type    TEXT NOT NULL,
    dedup         TEXT NOT NULL UNIQUE,
    payload       JSONB NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    published_at  TIMESTAMPTZ
);
CREATE INDEX comms_outbox_pending ON comms_outbox (id) WHERE published_at IS NULL;
