-- A deploy is a rollout: what was published to each host, wave by wave, and how
-- each host concluded. Written by `bento deploy` (command line or panel) and
-- `bento rollout`; the chroot stays the truth for the hosts' own state.

CREATE TABLE rollouts (
    id INTEGER PRIMARY KEY,
    job_id INTEGER REFERENCES jobs(id) ON DELETE SET NULL,
    created_by TEXT NOT NULL,
    -- "cli", or the panel client's address
    source TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    -- running | succeeded | failed | halted | aborted | interrupted
    status TEXT NOT NULL,
    -- the [rollout] settings it was planned with (JSON)
    settings TEXT NOT NULL,
    -- waves planned, and the index (from 0) of the one under way
    waves INTEGER NOT NULL,
    wave INTEGER NOT NULL DEFAULT 0,
    -- the process that drives it: pid and its start time (clock ticks since
    -- boot, /proc/PID/stat), so a reused pid is not taken for it; NULL: nobody
    driver_pid INTEGER,
    driver_start INTEGER,
    abort_requested INTEGER NOT NULL DEFAULT 0,
    finished_at INTEGER,
    summary TEXT NOT NULL DEFAULT ''
);
CREATE INDEX rollouts_status ON rollouts(status, id);
CREATE INDEX rollouts_job ON rollouts(job_id);

CREATE TABLE rollout_hosts (
    rollout_id INTEGER NOT NULL REFERENCES rollouts(id) ON DELETE CASCADE,
    host TEXT NOT NULL,
    wave INTEGER NOT NULL,
    -- the `waves` entry that chose it ("tag:canary", "25%", "rest")
    wave_entry TEXT NOT NULL,
    -- what the server built for it
    system TEXT,
    -- the revision this rollout published (NULL until its wave is published)
    revision TEXT,
    -- the revision published before this rollout (what a rollback republishes)
    previous_revision TEXT,
    published_at INTEGER,
    -- pending (wave not published) | published | downloading | building |
    -- fetching | activated | success | failed | rolled-back | no-answer | skipped
    phase TEXT NOT NULL,
    reason TEXT,
    updated_at INTEGER NOT NULL,
    PRIMARY KEY (rollout_id, host)
) WITHOUT ROWID;
CREATE INDEX rollout_hosts_host ON rollout_hosts(host, rollout_id);

-- Alerts (`[alerts]`): the conditions alerted on (one alert each until it
-- recovers, across restarts) and the outbox of deliveries, retried with backoff.
CREATE TABLE alert_active (
    host TEXT NOT NULL,
    event TEXT NOT NULL,
    since INTEGER NOT NULL,
    PRIMARY KEY (host, event)
) WITHOUT ROWID;

CREATE TABLE alert_deliveries (
    id INTEGER PRIMARY KEY,
    created_at INTEGER NOT NULL,
    event TEXT NOT NULL,
    host TEXT,
    rollout INTEGER,
    recovered INTEGER NOT NULL,
    message TEXT NOT NULL,
    -- the alert as sent (JSON)
    alert TEXT NOT NULL,
    -- "webhook:N" (its index in [[alerts.webhook]]) and where it went
    channel TEXT NOT NULL,
    target TEXT NOT NULL,
    -- pending | sent | failed (gave up)
    status TEXT NOT NULL,
    attempts INTEGER NOT NULL DEFAULT 0,
    next_try INTEGER NOT NULL,
    last_error TEXT,
    sent_at INTEGER
);
CREATE INDEX alert_deliveries_due ON alert_deliveries(status, next_try);

-- Rollouts already alerted on (halted / finished).
CREATE TABLE alert_rollouts (
    rollout_id INTEGER PRIMARY KEY,
    status TEXT NOT NULL
);
