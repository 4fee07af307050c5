-- A schedule's dedup key and mode for the jobs it enqueues (debounce, replace,
-- keep_last; see the README's "Dedup modes"), as JSON: {"key", "mode", "delay_ms"?,
-- "max_wait_ms"?}. NULL: none.
ALTER TABLE schedules ADD COLUMN IF NOT EXISTS dedup JSONB;
