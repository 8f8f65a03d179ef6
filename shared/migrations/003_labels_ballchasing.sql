-- Skill labels (ratings per player of a replay) and the Ballchasing.com collector's state.

-- A rating as imported (`rlimpact labels import`, or captured by the Ballchasing collector).
-- The player is named, not indexed: a label may arrive before the parser has listed the
-- replay's players. The view player_labels below resolves names to player indexes.
CREATE TABLE skill_labels (
    replay_id      text NOT NULL REFERENCES replays (id) ON DELETE CASCADE,
    team           smallint NOT NULL CHECK (team IN (0, 1)),
    player_name    text NOT NULL,
    -- How names are compared: trimmed of spaces, lower case (the view uses the same expression).
    name_key       text GENERATED ALWAYS AS (lower(btrim(player_name))) STORED,
    source         text NOT NULL,                 -- 'csv', 'ballchasing', or --source
    -- Excludes NaN and infinity too: in Postgres they sort above every number.
    skill_rating   double precision NOT NULL CHECK (skill_rating >= 0 AND skill_rating < 100000),
    rank_tier      smallint,                      -- Ballchasing rank, when the rating came from it
    rank_division  smallint,
    rank_name      text,
    platform_id    text,
    imported_at    timestamptz NOT NULL DEFAULT now(),
    updated_at     timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (replay_id, source, team, name_key)
);

-- Labels whose player the parser has listed: exactly one player of that team with that name.
CREATE VIEW player_labels AS
SELECT l.replay_id, p.player_index, p.name AS player_name, l.team, l.skill_rating, l.source
FROM skill_labels l
JOIN replay_players p
  ON p.replay_id = l.replay_id AND p.team = l.team AND lower(btrim(p.name)) = l.name_key
WHERE (
    SELECT count(*) FROM replay_players q
    WHERE q.replay_id = l.replay_id AND q.team = l.team AND lower(btrim(q.name)) = l.name_key
) = 1;

-- Groups the collector has walked. A listing interrupted between pages resumes at replays_next.
CREATE TABLE ballchasing_groups (
    group_id        text PRIMARY KEY,
    parent_id       text REFERENCES ballchasing_groups (group_id),
    name            text NOT NULL DEFAULT '',
    children_listed boolean NOT NULL DEFAULT false,
    replays_next    text,                         -- next page of GET /replays?group=…
    replays_listed  boolean NOT NULL DEFAULT false,
    updated_at      timestamptz NOT NULL DEFAULT now()
);

-- One row per Ballchasing replay: listed -> downloaded -> ingested, or failed (with the error).
CREATE TABLE ballchasing_replays (
    bc_id        text PRIMARY KEY,
    group_id     text NOT NULL REFERENCES ballchasing_groups (group_id),
    status       text NOT NULL DEFAULT 'listed'
                 CHECK (status IN ('listed', 'downloaded', 'ingested', 'failed')),
    sha256       text,                            -- = replays.id once downloaded
    attempts     integer NOT NULL DEFAULT 0,      -- runs that worked on it
    error        text,
    metadata     jsonb,                           -- GET /replays/<id>
    listed_at    timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ballchasing_replays_group_idx ON ballchasing_replays (group_id, status);
CREATE INDEX ballchasing_replays_sha_idx ON ballchasing_replays (sha256);

-- Requests made per account (a hash of the token), so that the hourly budget holds across runs.
CREATE TABLE ballchasing_requests (
    id       bigserial PRIMARY KEY,
    account  text NOT NULL,
    kind     text NOT NULL CHECK (kind IN ('call', 'download')),
    at       timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX ballchasing_requests_idx ON ballchasing_requests (account, kind, at);
