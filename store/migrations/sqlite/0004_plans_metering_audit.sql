-- Named plans (a complete policy each), the record of every call, and the audit log.
-- A tenant's `policy` column holds from here on only its overrides of its plan.

CREATE TABLE plans (
    name        TEXT PRIMARY KEY,
    policy      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

-- One row per call that reached a tenant (authenticated), written in batches.
CREATE TABLE calls (
    call_id            TEXT PRIMARY KEY,
    tenant             TEXT NOT NULL,
    token_id           TEXT NOT NULL,
    fn                 TEXT NOT NULL,
    version            TEXT,
    outcome            TEXT NOT NULL,
    wall_ms            BIGINT NOT NULL,
    cpu_ms             BIGINT NOT NULL,
    peak_memory_bytes  BIGINT NOT NULL,
    bytes_in           BIGINT NOT NULL,
    bytes_out          BIGINT NOT NULL,
    at                 BIGINT NOT NULL
);

CREATE INDEX calls_tenant_at ON calls (tenant, at);

CREATE INDEX calls_at ON calls (at);

-- Every operator action and deploy: who (token id), what, on which tenant, from where.
CREATE TABLE audit (
    id        TEXT PRIMARY KEY,
    at        BIGINT NOT NULL,
    actor     TEXT NOT NULL,
    action    TEXT NOT NULL,
    tenant    TEXT,
    detail    TEXT NOT NULL,
    remote    TEXT
);

CREATE INDEX audit_at ON audit (at);
