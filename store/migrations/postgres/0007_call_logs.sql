-- What a call printed and, when it failed, its error message: kept per tenant within its
-- plan's log size and age (pruned by the node that records the calls), read by call id.
CREATE TABLE call_logs (
    call_id  TEXT PRIMARY KEY,
    tenant   TEXT NOT NULL,
    at       BIGINT NOT NULL,
    error    TEXT,
    logs     TEXT NOT NULL,
    bytes    BIGINT NOT NULL
);

CREATE INDEX call_logs_tenant_at ON call_logs (tenant, at);

-- When each version last became the active one (deployed, or rolled back to), and the modules
-- it holds from uploads (a JSON list of names).
ALTER TABLE versions ADD COLUMN activated_at BIGINT;
ALTER TABLE versions ADD COLUMN uploads TEXT;

-- The environment variables a tenant's calls and jobs get (a JSON object of names to values).
ALTER TABLE tenants ADD COLUMN env TEXT;
