"""Live scoring: live.frames -> rolling per-match state -> scores.live; score streams."""
