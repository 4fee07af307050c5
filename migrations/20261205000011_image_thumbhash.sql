-- A ThumbHash placeholder per analysed image (base64 of ~25 bytes), which a portfolio
-- page draws while the variants load. NULL for analyses recorded before it existed, until
-- the image is analysed again.
ALTER TABLE image_analyses ADD COLUMN thumbhash TEXT;
