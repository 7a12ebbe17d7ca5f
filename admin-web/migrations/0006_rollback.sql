-- A rollback is a rollout of its own: the one it takes back.
ALTER TABLE rollouts ADD COLUMN rollback_of INTEGER REFERENCES rollouts(id) ON DELETE SET NULL;
CREATE INDEX rollouts_rollback_of ON rollouts(rollback_of);
