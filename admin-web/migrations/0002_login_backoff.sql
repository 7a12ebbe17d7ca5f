-- Failed logins per (user name, client address), so that a wrong password slows
-- down only the pair that sent it (never the account from elsewhere), and a
-- restart of the panel does not hand an attacker a fresh set of attempts.
CREATE TABLE login_failures (
    user TEXT NOT NULL,
    source TEXT NOT NULL,
    failures INTEGER NOT NULL,
    last_failure INTEGER NOT NULL,
    -- no login of this pair is tried before this time (Unix ms)
    blocked_until INTEGER NOT NULL,
    PRIMARY KEY (user, source)
);
CREATE INDEX login_failures_last ON login_failures(last_failure);
