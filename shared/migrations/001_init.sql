-- Metadata of rlimpact. Applied in file-name order by shared.db.migrate.

CREATE TABLE replays (
    id              text PRIMARY KEY,            -- sha256 of the file's bytes
    filename        text NOT NULL,
    uri             text NOT NULL,
    size_bytes      bigint NOT NULL,
    source          text NOT NULL,
    status          text NOT NULL DEFAULT 'received'
                    CHECK (status IN ('received', 'uploaded', 'parsed', 'featurized', 'failed')),
    status_reason   text,
    frames_uri      text,
    features_uri    text,
    n_frames        integer,
    team_size       integer,
    created_at      timestamptz NOT NULL DEFAULT now(),
    updated_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX replays_status_idx ON replays (status);

-- Every state change of a replay, for auditing and `rlimpact status`.
CREATE TABLE replay_status_history (
    id          bigserial PRIMARY KEY,
    replay_id   text NOT NULL REFERENCES replays (id) ON DELETE CASCADE,
    stage       text NOT NULL,
    status      text NOT NULL,
    reason      text,
    at          timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE replay_players (
    replay_id     text NOT NULL REFERENCES replays (id) ON DELETE CASCADE,
    player_index  integer NOT NULL,
    name          text NOT NULL,
    team          smallint NOT NULL CHECK (team IN (0, 1)),
    platform_id   text,
    is_bot        boolean NOT NULL DEFAULT false,
    PRIMARY KEY (replay_id, player_index)
);

CREATE TABLE models (
    id                      serial PRIMARY KEY,
    name                    text NOT NULL,
    version                 text NOT NULL UNIQUE,
    uri                     text NOT NULL,
    sha256                  text NOT NULL,
    feature_schema_version  integer NOT NULL,
    metrics                 jsonb NOT NULL DEFAULT '{}'::jsonb,
    status                  text NOT NULL DEFAULT 'candidate'
                            CHECK (status IN ('candidate', 'active', 'retired')),
    created_at              timestamptz NOT NULL DEFAULT now(),
    promoted_at             timestamptz
);
-- At most one active model.
CREATE UNIQUE INDEX models_one_active_idx ON models ((status)) WHERE status = 'active';

CREATE TABLE scores (
    replay_id     text NOT NULL,
    player_index  integer NOT NULL,
    model_id      integer NOT NULL REFERENCES models (id),
    impact        double precision NOT NULL,
    n_frames      integer NOT NULL,
    emitted       boolean NOT NULL DEFAULT false,  -- scores.emitted event produced
    created_at    timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (replay_id, player_index, model_id),
    FOREIGN KEY (replay_id, player_index) REFERENCES replay_players (replay_id, player_index)
);

CREATE TABLE train_jobs (
    id           bigserial PRIMARY KEY,
    status       text NOT NULL DEFAULT 'running'
                 CHECK (status IN ('running', 'succeeded', 'failed')),
    requested_at timestamptz NOT NULL DEFAULT now(),
    finished_at  timestamptz,
    model_id     integer REFERENCES models (id),
    n_replays    integer,
    error        text
);
