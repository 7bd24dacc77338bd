-- The nodes of the cluster: each registers at start and beats every few seconds; a node whose
-- beat is older than a few intervals is gone (killed, cut off, stopped).
CREATE TABLE nodes (
    id            TEXT PRIMARY KEY,
    address       TEXT NOT NULL,
    version       TEXT NOT NULL,
    started_at    BIGINT NOT NULL,
    heartbeat_at  BIGINT NOT NULL
);

CREATE INDEX nodes_heartbeat_at ON nodes (heartbeat_at);
