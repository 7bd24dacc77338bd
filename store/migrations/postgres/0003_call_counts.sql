-- Calls admitted per tenant and calendar minute, across every node: what makes a tenant's
-- calls_per_minute hold for the cluster, not per node. Rows older than a few minutes are
-- removed by the nodes' beats.
CREATE TABLE call_counts (
    tenant  TEXT NOT NULL,
    minute  BIGINT NOT NULL,
    calls   BIGINT NOT NULL,
    PRIMARY KEY (tenant, minute)
);

CREATE INDEX call_counts_minute ON call_counts (minute);
