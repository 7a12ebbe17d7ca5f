-- A rollout can end more than once (halted, then resumed to its end): each end
-- is alerted, so the one alerted last is kept by its time.
ALTER TABLE alert_rollouts ADD COLUMN finished_at INTEGER;
