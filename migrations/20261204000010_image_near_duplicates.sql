-- Near-duplicate pairs within a tenant's portfolio, written by `image.analyze` when an
-- analysis lands (the new image's perceptual hash against the portfolio's others: one
-- indexed scan of the portfolio per image), so `GET /v1/portfolios/{p}` reads stored
-- pairs instead of comparing every image with every other on each request.
-- `a < b`; an image is in one portfolio (image ids are unique per tenant), so its pairs
-- are keyed by tenant and id and rewritten when it is analysed again.
-- Analyses stored before this migration have no pairs until they are analysed again (a
-- backfill here would be the quadratic comparison this table exists to avoid, run at
-- start-up): re-submit such portfolios to find their near-duplicates.
CREATE TABLE image_near_duplicates (
    tenant    TEXT NOT NULL,
    portfolio TEXT NOT NULL,
    a         TEXT NOT NULL,
    b         TEXT NOT NULL,
    distance  INTEGER NOT NULL,
    PRIMARY KEY (tenant, a, b),
    CHECK (a < b)
);
CREATE INDEX image_near_duplicates_b ON image_near_duplicates (tenant, b);
CREATE INDEX image_near_duplicates_portfolio ON image_near_duplicates (tenant, portfolio, a, b);

-- Pages of a portfolio, sharpest first (keyset on sharpness, image id).
CREATE INDEX image_analyses_portfolio_sharpness
    ON image_analyses (tenant, portfolio, sharpness DESC, image_id DESC) WHERE portfolio IS NOT NULL;
