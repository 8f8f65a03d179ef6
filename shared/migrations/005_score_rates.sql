-- Per-touch impact comes with its rate and its basis: impact per minute of the player's live
-- play and the number of ball touches it was credited over.

ALTER TABLE scores
    ADD COLUMN impact_per_minute  double precision,  -- NULL only on rows scored before this
    ADD COLUMN touches            integer;
