-- The packages a version's virtualenv was built from (JSON), so a rollback rebuilds them.
ALTER TABLE versions ADD COLUMN packages TEXT;
