-- Models come in two kinds, each with at most one active model: impact (per-frame P(score),
-- P(concede)) and skill (a player's feature sequence -> rating). Scores carry the impact's
-- components and, when a skill model was active, the player's skill estimate and its model.

ALTER TABLE models
    ADD COLUMN kind text NOT NULL DEFAULT 'impact' CHECK (kind IN ('impact', 'skill'));
DROP INDEX models_one_active_idx;
CREATE UNIQUE INDEX models_one_active_per_kind_idx ON models (kind) WHERE status = 'active';

ALTER TABLE scores
    ADD COLUMN offence         double precision,  -- NULL only on rows scored before this migration
    ADD COLUMN defence         double precision,
    ADD COLUMN skill           double precision,  -- NULL: no skill model was active
    ADD COLUMN skill_model_id  integer REFERENCES models (id);
CREATE INDEX scores_model_idx ON scores (model_id);
