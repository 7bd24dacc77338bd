-- Secrets a tenant's code reads as environment variables ('env'); NULL for those only the
-- node uses (git credentials, the built-ins' S3 credentials).
ALTER TABLE secrets ADD COLUMN expose TEXT;

-- The steps of the deploy that made a version, with their timings (a JSON list).
ALTER TABLE versions ADD COLUMN deploy_log TEXT;
