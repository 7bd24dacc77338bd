-- A job's completion callback: once the job ends, `callback_state` is `pending` and a node
-- delivers it (POST to `callback_url`, signed), retried with backoff until `delivered` or
-- `failed`. A delivery in flight holds `callback_due_at` ahead, like a lease.
ALTER TABLE jobs ADD COLUMN callback_state TEXT;
ALTER TABLE jobs ADD COLUMN callback_attempts BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN callback_due_at BIGINT;
ALTER TABLE jobs ADD COLUMN callback_error TEXT;
CREATE INDEX jobs_callbacks ON jobs (callback_due_at) WHERE callback_state = 'pending';

-- Schedules: a job submitted on every tick of a cron expression (UTC). A node fires a due
-- schedule in one transaction that queues the tick's job (idempotency key
-- `schedule:<id>:<tick>`) and moves `next_at` on, so each tick makes one job across the nodes.
CREATE TABLE schedules (
    id          TEXT PRIMARY KEY,
    tenant      TEXT NOT NULL,
    token_id    TEXT NOT NULL,
    cron        TEXT NOT NULL,
    function    TEXT NOT NULL,
    kwargs      TEXT NOT NULL,
    version     TEXT,
    paused      BIGINT NOT NULL DEFAULT 0,
    next_at     BIGINT NOT NULL,
    last_at     BIGINT,
    last_job    TEXT,
    created_at  BIGINT NOT NULL
);

CREATE INDEX schedules_due ON schedules (next_at) WHERE paused = 0;
CREATE INDEX schedules_of_tenant ON schedules (tenant, created_at);
