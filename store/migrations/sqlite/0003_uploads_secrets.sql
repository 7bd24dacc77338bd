-- Private module uploads (laid over the tenant's git commit in every version), what each
-- version was built from, the callable functions found in it, and encrypted tenant secrets.

CREATE TABLE uploads (
    tenant      TEXT NOT NULL REFERENCES tenants (name) ON DELETE CASCADE,
    module      TEXT NOT NULL,
    source      TEXT NOT NULL,
    sha256      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, module)
);

-- The git commit a version was built from (NULL: uploads only), and the JSON listing of its
-- callable functions, computed in a sandboxed child when the version was made.
ALTER TABLE versions ADD COLUMN git_commit TEXT;

ALTER TABLE versions ADD COLUMN functions TEXT;

-- A secret's value is sealed (AES-256-GCM) with the node's secret key, with a nonce of its own.
CREATE TABLE secrets (
    tenant      TEXT NOT NULL REFERENCES tenants (name) ON DELETE CASCADE,
    key         TEXT NOT NULL,
    nonce       TEXT NOT NULL,
    sealed      TEXT NOT NULL,
    updated_at  BIGINT NOT NULL,
    PRIMARY KEY (tenant, key)
);
