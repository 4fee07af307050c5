-- Secret rotation: secrets[1] is the endpoint's current secret; the others (the one it
-- replaced) keep signing deliveries until previous_secrets_until, so a subscriber can
-- switch its verifier without missing a delivery. NULL keeps every secret signing.
ALTER TABLE webhook_endpoints ADD COLUMN previous_secrets_until TIMESTAMPTZ;
