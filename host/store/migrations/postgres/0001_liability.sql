-- The liability records (PostgreSQL). Kept column for column with
-- ../sqlite/0001_liability.sql: only the ledger's sequence differs, so the
-- queries in src/sql.rs are shared. Times are microseconds since the Unix epoch.
CREATE TABLE IF NOT EXISTS ledger_entries (
    seq BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    agent TEXT NOT NULL,
    kind TEXT NOT NULL,
    severity DOUBLE PRECISION,
    at_us BIGINT NOT NULL
);
CREATE INDEX IF NOT EXISTS ledger_entries_by_agent ON ledger_entries (agent, seq);

CREATE TABLE IF NOT EXISTS vouches (
    session TEXT NOT NULL,
    id BIGINT NOT NULL,
    voucher TEXT NOT NULL,
    vouchee TEXT NOT NULL,
    voucher_sigma DOUBLE PRECISION NOT NULL,
    pct DOUBLE PRECISION NOT NULL,
    bond DOUBLE PRECISION NOT NULL,
    created_at_us BIGINT NOT NULL,
    released_at_us BIGINT,
    released_because TEXT,
    PRIMARY KEY (session, id)
);
CREATE INDEX IF NOT EXISTS vouches_by_voucher ON vouches (voucher);
CREATE INDEX IF NOT EXISTS vouches_by_vouchee ON vouches (vouchee);

CREATE TABLE IF NOT EXISTS quarantines (
    session TEXT NOT NULL,
    agent TEXT NOT NULL,
    reason TEXT NOT NULL,
    last_reason TEXT NOT NULL,
    started_at_us BIGINT NOT NULL,
    ends_at_us BIGINT,
    escalations BIGINT NOT NULL,
    released_at_us BIGINT,
    released_because TEXT,
    PRIMARY KEY (session, agent, started_at_us)
);
CREATE INDEX IF NOT EXISTS quarantines_by_agent ON quarantines (agent);
