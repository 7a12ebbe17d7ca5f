-- The panel's database. Times are Unix milliseconds (server clock) unless noted.
-- The chroot stays the source of truth for hosts: `reports` is an index of what
-- was found there, kept for history and durations.

CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    -- argon2id PHC string
    password_hash TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    password_changed_at INTEGER NOT NULL
);

CREATE TABLE sessions (
    -- sha256 of the cookie value: a leaked database does not hand out sessions
    token_hash TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    last_seen INTEGER NOT NULL,
    source TEXT NOT NULL,
    user_agent TEXT NOT NULL
);
CREATE INDEX sessions_user ON sessions(user_id);

CREATE TABLE api_tokens (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    token_hash TEXT NOT NULL UNIQUE,
    created_at INTEGER NOT NULL,
    created_by TEXT NOT NULL,
    last_used INTEGER,
    revoked_at INTEGER
);

CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at INTEGER NOT NULL,
    actor TEXT NOT NULL,
    action TEXT NOT NULL,
    target TEXT NOT NULL DEFAULT '',
    detail TEXT NOT NULL DEFAULT '',
    -- client address, or "cli" for the command line
    source TEXT NOT NULL
);
CREATE INDEX audit_at ON audit(at);

CREATE TABLE jobs (
    id INTEGER PRIMARY KEY,
    -- build | dry-build | deploy | flake-update
    kind TEXT NOT NULL,
    -- NULL: the whole fleet
    host TEXT,
    -- queued | running | succeeded | failed | cancelled
    status TEXT NOT NULL,
    created_by TEXT NOT NULL,
    created_at INTEGER NOT NULL,
    started_at INTEGER,
    finished_at INTEGER,
    summary TEXT NOT NULL DEFAULT ''
);
CREATE INDEX jobs_status ON jobs(status, id);
CREATE INDEX jobs_host ON jobs(host, id);

CREATE TABLE job_log (
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    seq INTEGER NOT NULL,
    line TEXT NOT NULL,
    PRIMARY KEY (job_id, seq)
) WITHOUT ROWID;

-- What a job did to each host.
CREATE TABLE job_hosts (
    job_id INTEGER NOT NULL REFERENCES jobs(id) ON DELETE CASCADE,
    host TEXT NOT NULL,
    ok INTEGER NOT NULL,
    system TEXT,
    revision TEXT,
    published INTEGER NOT NULL DEFAULT 0,
    error TEXT,
    elapsed_ms INTEGER NOT NULL DEFAULT 0,
    PRIMARY KEY (job_id, host)
) WITHOUT ROWID;
CREATE INDEX job_hosts_host ON job_hosts(host, job_id);

CREATE TABLE reports (
    id INTEGER PRIMARY KEY,
    host TEXT NOT NULL,
    file TEXT NOT NULL,
    -- the client's clock from the file name, "YYYY-mm-dd HH:MM" (sorts as text)
    client_time TEXT NOT NULL,
    status TEXT NOT NULL,
    system TEXT NOT NULL,
    -- server file times (ms)
    received INTEGER NOT NULL,
    ctime INTEGER NOT NULL,
    size INTEGER NOT NULL,
    has_sidecar INTEGER NOT NULL,
    sidecar_error TEXT,
    revision TEXT,
    started INTEGER,
    finished INTEGER,
    error TEXT,
    agent_version TEXT,
    reboot_required INTEGER NOT NULL DEFAULT 0,
    ingested_at INTEGER NOT NULL,
    UNIQUE (host, file)
);
CREATE INDEX reports_host_time ON reports(host, client_time DESC, ctime DESC);

-- Per host: server time of the last scan that stored a report. Files older than
-- this are not read again after a restart.
CREATE TABLE ingest_marks (
    host TEXT PRIMARY KEY,
    mark INTEGER NOT NULL
) WITHOUT ROWID;

CREATE TABLE closure_diffs (
    from_system TEXT NOT NULL,
    to_system TEXT NOT NULL,
    output TEXT NOT NULL,
    ok INTEGER NOT NULL,
    computed_at INTEGER NOT NULL,
    PRIMARY KEY (from_system, to_system)
) WITHOUT ROWID;
