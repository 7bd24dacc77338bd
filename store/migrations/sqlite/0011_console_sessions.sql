-- Signed-in sessions of the operator console: the hash of the session cookie, the hash of the
-- operator token it was opened with (a revoked or expired token ends its sessions), and the
-- CSRF token every change made in the session must carry.
CREATE TABLE console_sessions (
    id          TEXT PRIMARY KEY,
    hash        TEXT NOT NULL UNIQUE,
    token_hash  TEXT NOT NULL,
    token_id    TEXT NOT NULL,
    csrf        TEXT NOT NULL,
    created_at  BIGINT NOT NULL,
    expires_at  BIGINT NOT NULL,
    revoked_at  BIGINT
);

CREATE INDEX console_sessions_expires_at ON console_sessions (expires_at);
