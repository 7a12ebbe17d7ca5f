-- Since when rollout ends are alerted, kept while receivers are configured (so a
-- rollout that ended while the panel was down is still told when it starts).
CREATE TABLE alert_state (
    key TEXT PRIMARY KEY,
    value INTEGER NOT NULL
);

-- Since when each host has had a reboot pending (unix ms), so `reboot_pending_after`
-- counts across restarts of the panel.
CREATE TABLE alert_reboot_pending (
    host TEXT PRIMARY KEY,
    since INTEGER NOT NULL
);
