-- A replay whose scores by the active impact model have all been announced on scores.emitted
-- is 'scored' (set by the scorer). 'scored' and 'failed' are final: the reconciler leaves them.

ALTER TABLE replays DROP CONSTRAINT replays_status_check;
ALTER TABLE replays ADD CONSTRAINT replays_status_check
    CHECK (status IN ('received', 'uploaded', 'parsed', 'featurized', 'scored', 'failed'));

-- The scorer's start-up looks for rows it may have announced without marking them.
CREATE INDEX scores_unemitted_idx ON scores (created_at) WHERE NOT emitted;
