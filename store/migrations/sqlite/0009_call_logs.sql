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
