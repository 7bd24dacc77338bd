-- Every tenant's calls run as its own unprivileged uid and gid (the same number), allocated
-- once when the tenant is created and never reused while it exists.
ALTER TABLE tenants ADD COLUMN uid BIGINT;

CREATE UNIQUE INDEX tenants_uid ON tenants (uid);
