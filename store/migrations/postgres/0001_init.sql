-- The whole schema at once: a PostgreSQL store starts where the embedded one's migrations 1–4
-- ended (no PostgreSQL store predates this file). Times are milliseconds since the Unix epoch.

CREATE TABLE tenants (
    name            TEXT PRIMARY KEY,
    repo            TEXT,
    branch          TEXT NOT NULL,
    subdir          TEXT,
    plan            TEXT NOT NULL,
    webhook_secret  TEXT,
    -- The tenant's overrides of its plan (JSON).
    policy          TEXT NOT NULL,
    active_version  TEXT,
    created_at      BIGINT NOT NULL,
    -- Its calls' uid and gid; allocated in the INSERT, never reused while it exists.
    uid             BIGINT UNIQUE
);

CREATE TABLE versions (
    tenant      TEXT NOT NULL REFERENCES tenants (name) ON DELETE CASCADE,
    id          TEXT NOT NULL,
    source      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    git_commit  TEXT,
    functions   TEXT,
    PRIMARY KEY (tenant, id)
);

-- Operator tokens have no tenant. Only the SHA-256 of a token is ever stored.
CREATE TABLE tokens (
    id            TEXT PRIMARY KEY,
    tenant        TEXT REFERENCES tenants (name) ON DELETE CASCADE,
    kind          TEXT NOT NULL,
    hash          TEXT NOT NULL UNIQUE,
    prefix        TEXT NOT NULL,
    scopes        TEXT NOT NULL,
    expires_at    BIGINT,
    revoked_at    BIGINT,
    created_at    BIGINT NOT NULL,
    last_used_at  BIGINT
);

CREATE INDEX tokens_tenant ON tokens (tenant);

CREATE TABLE uploads (
    tenant      TEXT NOT NULL REFERENCES tenants (name) ON DELETE CASCADE,
    module      TEXT NOT NULL,
    source      TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, module)
);

-- Sealed (AES-256-GCM) with the key every node reads from its configuration.
CREATE TABLE secrets (
    tenant      TEXT NOT NULL REFERENCES tenants (name) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    sealed      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, key)
);

CREATE TABLE plans (
    name        TEXT PRIMARY KEY,
    policy      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL
);

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
