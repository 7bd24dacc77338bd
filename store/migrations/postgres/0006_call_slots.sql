-- Calls running now, per tenant across the cluster (`tenant_slots`, what `max_concurrency`
-- is checked against) and per tenant and node (`call_slots`, so that a node's share can be
-- given back when the node is gone). Both change together, in one statement each.
CREATE TABLE tenant_slots (
    tenant  TEXT PRIMARY KEY,
    calls   BIGINT NOT NULL
);

CREATE TABLE call_slots (
    tenant  TEXT NOT NULL,
    node    TEXT NOT NULL,
    calls   BIGINT NOT NULL,
    PRIMARY KEY (tenant, node)
);
