-- How a panel deploy publishes: '' (as [rollout] says), 'waves', or 'all' (at once).
ALTER TABLE jobs ADD COLUMN mode TEXT NOT NULL DEFAULT '';
