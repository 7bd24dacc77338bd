-- Tenants, their code versions, and tokens. Portable SQL: SQLite and PostgreSQL both run it.
-- Times are milliseconds since the Unix epoch (BIGINT), so both stores compare them the same way.

CREATE TABLE tenants (
    name            TEXT PRIMARY KEY,
    repo            TEXT,
    branch          TEXT NOT NULL,
    subdir          TEXT,
    plan            TEXT NOT NULL,
    webhook_secret  TEXT,
    policy          TEXT NOT NULL,
    active_version  TEXT,
    created_at      BIGINT NOT NULL
);

CREATE TABLE versions (
    tenant      TEXT NOT NULL REFERENCES tenants (name) ON DELETE CASCADE,
    id          TEXT NOT NULL,
    source      TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
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
