-- Background jobs: the queue every node claims from. A job is `queued` until a node leases it
-- (`running`, `lease_owner` and `lease_until` set, `attempts` counted); the lease is renewed
-- while the job runs and a job whose lease lapsed goes back to `queued` (or `failed` once its
-- attempts are spent). A completion names the lease owner and attempt it was claimed under, so
-- a node presumed dead cannot overwrite a rescued job. `outcome` is the call's answer as JSON.
CREATE TABLE jobs (
    id              TEXT PRIMARY KEY,
    tenant          TEXT NOT NULL,
    token_id        TEXT NOT NULL,
    function        TEXT NOT NULL,
    kwargs          TEXT NOT NULL,
    version         TEXT,
    status          TEXT NOT NULL,
    attempts        BIGINT NOT NULL DEFAULT 0,
    max_attempts    BIGINT NOT NULL,
    run_after       BIGINT NOT NULL,
    lease_owner     TEXT,
    lease_until     BIGINT,
    idempotency_key TEXT,
    callback_url    TEXT,
    progress        TEXT,
    outcome         TEXT,
    created_at      BIGINT NOT NULL,
    started_at      BIGINT,
    finished_at     BIGINT
);

CREATE UNIQUE INDEX jobs_idempotency ON jobs (tenant, idempotency_key);
CREATE INDEX jobs_ready ON jobs (run_after) WHERE status = 'queued';
CREATE INDEX jobs_leases ON jobs (lease_until) WHERE status = 'running';
CREATE INDEX jobs_of_tenant ON jobs (tenant, created_at);
CREATE INDEX jobs_finished ON jobs (finished_at);
