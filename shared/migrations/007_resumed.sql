-- A file dropped again while its replay is neither scored nor failed resumes that replay
-- (shared/recovery.py) instead of being skipped as a duplicate.
ALTER TABLE ingest_objects DROP CONSTRAINT ingest_objects_outcome_check;
ALTER TABLE ingest_objects ADD CONSTRAINT ingest_objects_outcome_check
    CHECK (outcome IN ('new', 'duplicate', 'rejected', 'resumed'));
