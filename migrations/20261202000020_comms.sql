-- Communication aggregation: sources per supplier (tenant), exact IMAP cursors, one
-- deduplicated, threaded timeline per client, raw messages by content hash and a
-- quarantine for what could not be parsed. Cursors are written in the same transaction
-- as the entries and locations they cover.

-- A supplier's mailbox or provider account. `secret` is AES-256-GCM sealed
-- (`v1:` + base64), bound to the source id; `config` never holds a secret.
CREATE TABLE comms_sources (
    id              TEXT PRIMARY KEY,
    tenant          TEXT NOT NULL,
    kind            TEXT NOT NULL CHECK (kind IN ('imap', 'sms', 'in_app')),
    name            TEXT NOT NULL DEFAULT '',
    config          JSONB NOT NULL,
    secret          TEXT,
    default_region  TEXT NOT NULL DEFAULT 'GB',
    created_at      TIMESTAMPTZ NOT NULL DEFAULT now(),
    last_sync_at    TIMESTAMPTZ,
    last_ok_at      TIMESTAMPTZ,
    last_error      TEXT,
    last_report     JSONB
);
CREATE INDEX comms_sources_tenant ON comms_sources (tenant);

-- Who the supplier's clients are (and the supplier's own addresses: client = '').
CREATE TABLE comms_contacts (
    tenant  TEXT NOT NULL,
    kind    TEXT NOT NULL CHECK (kind IN ('email', 'phone')),
    value   TEXT NOT NULL,              -- lower-cased email or E.164
    client  TEXT NOT NULL,
    PRIMARY KEY (tenant, kind, value)
);

-- Per (source, folder): UIDVALIDITY, UIDNEXT, last UID fetched, HIGHESTMODSEQ.
CREATE TABLE comms_cursors (
    source_id      TEXT NOT NULL REFERENCES comms_sources (id) ON DELETE CASCADE,
    folder         TEXT NOT NULL,
    uidvalidity    BIGINT NOT NULL,
    uidnext        BIGINT NOT NULL,
    last_uid       BIGINT NOT NULL,
    highestmodseq  BIGINT,          -- RFC 7162: at most 63 bits
    updated_at     TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source_id, folder)
);

-- One entry per message, whatever the number of copies. `doc` is the normalised
-- entry (participants, subject, text, attachments, ...) as the library defines it.
CREATE TABLE comms_entries (
    tenant        TEXT NOT NULL,
    id            TEXT NOT NULL,
    thread_id     TEXT NOT NULL,
    client        TEXT,
    source_id     TEXT NOT NULL,
    channel       TEXT NOT NULL,
    direction     TEXT NOT NULL,
    occurred_at   TIMESTAMPTZ NOT NULL,
    message_id    TEXT,
    base_subject  TEXT NOT NULL DEFAULT '',
    id_collision  BOOLEAN NOT NULL DEFAULT FALSE,
    doc           JSONB NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, id)
);
CREATE INDEX comms_entries_client_time ON comms_entries (tenant, client, occurred_at, id);
CREATE INDEX comms_entries_message_id ON comms_entries (tenant, message_id) WHERE message_id IS NOT NULL;
CREATE INDEX comms_entries_thread ON comms_entries (tenant, thread_id);
CREATE INDEX comms_entries_source ON comms_entries (source_id, occurred_at);
-- The subject fallback of threading: one client's roots with the same base subject.
CREATE INDEX comms_entries_subject ON comms_entries (tenant, client, channel, base_subject, occurred_at);

-- Where each entry was seen; an entry is deleted with its last location.
CREATE TABLE comms_locations (
    source_id    TEXT NOT NULL,
    folder       TEXT NOT NULL,
    uidvalidity  BIGINT NOT NULL,
    uid          BIGINT NOT NULL,
    tenant       TEXT NOT NULL,
    entry_id     TEXT NOT NULL,
    PRIMARY KEY (source_id, folder, uidvalidity, uid)
);
CREATE INDEX comms_locations_entry ON comms_locations (tenant, entry_id);

-- Message-IDs seen or only referenced ("ghost" parents) → thread, so a parent that
-- arrives after its replies joins their thread.
CREATE TABLE comms_thread_ids (
    tenant      TEXT NOT NULL,
    message_id  TEXT NOT NULL,
    thread_id   TEXT NOT NULL,
    PRIMARY KEY (tenant, message_id)
);
CREATE INDEX comms_thread_ids_thread ON comms_thread_ids (tenant, thread_id);

-- Raw messages by SHA-256, so a parser upgrade can rebuild the timeline offline.
CREATE TABLE comms_raw (
    content_hash  TEXT PRIMARY KEY,
    raw           BYTEA NOT NULL,
    stored_at     TIMESTAMPTZ NOT NULL DEFAULT now()
);

-- Messages that could not be parsed (too large, too deep, parser panic), with why.
CREATE TABLE comms_quarantine (
    source_id     TEXT NOT NULL,
    folder        TEXT NOT NULL,
    uidvalidity   BIGINT NOT NULL,
    uid           BIGINT NOT NULL,
    tenant        TEXT NOT NULL,
    reason        JSONB NOT NULL,
    content_hash  TEXT NOT NULL,
    size          BIGINT NOT NULL,
    quarantined_at TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (source_id, folder, uidvalidity, uid)
);
