-- Image analyses: one row per (tenant, image), rewritten when the image is analysed again.
-- GPS coordinates are kept only when the job allowed it; gps_present always says whether
-- the photo carried a position.
CREATE TABLE image_analyses (
    tenant        TEXT NOT NULL,
    image_id      TEXT NOT NULL,
    portfolio     TEXT,
    source_key    TEXT NOT NULL,
    source_sha256 TEXT NOT NULL,
    format        TEXT NOT NULL,
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    phash         BIGINT NOT NULL,
    sharpness     DOUBLE PRECISION NOT NULL,
    exposure      JSONB NOT NULL,
    colours       JSONB NOT NULL,
    metadata      JSONB NOT NULL,
    gps_present   BOOLEAN NOT NULL,
    vision        JSONB,
    analyzed_at   TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, image_id)
);
CREATE INDEX image_analyses_portfolio ON image_analyses (tenant, portfolio) WHERE portfolio IS NOT NULL;

-- Variants written to the object store; keys are content-addressed
-- (source SHA-256 + recipe hash), so a retry rewrites nothing.
CREATE TABLE image_variants (
    tenant        TEXT NOT NULL,
    image_id      TEXT NOT NULL,
    width         INTEGER NOT NULL,
    height        INTEGER NOT NULL,
    format        TEXT NOT NULL,
    key           TEXT NOT NULL,
    bytes         INTEGER NOT NULL,
    sha256        TEXT NOT NULL,
    recipe        TEXT NOT NULL,
    created_at    TIMESTAMPTZ NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant, image_id, format, width)
);
