-- Calls admitted per tenant and calendar minute. One node on SQLite counts in memory; the table
-- keeps the embedded schema the same as the server one.
CREATE TABLE call_counts (
    tenant  TEXT NOT NULL,
    minute  BIGINT NOT NULL,
    calls   BIGINT NOT NULL,
    PRIMARY KEY (tenant, minute)
);

CREATE INDEX call_counts_minute ON call_counts (minute);
