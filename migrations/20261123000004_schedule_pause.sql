-- Operators pause schedules at run time (config-file schedules too) without editing them.
ALTER TABLE schedule_state ADD COLUMN paused BOOLEAN NOT NULL DEFAULT FALSE;
