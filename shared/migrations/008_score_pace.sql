-- Impact credits each player's pace too (shared/impact.py): impact = offence + defence + pace.
ALTER TABLE scores
    ADD COLUMN pace  double precision;  -- NULL only on rows scored before this
