-- Experiments and their variants: the registry the CLI writes and every worker replicates
-- (through the compacted `experiments` topic).

CREATE TABLE experiments (
    experiment_id              text PRIMARY KEY CHECK (length(experiment_id) BETWEEN 1 AND 128),
    name                       text NOT NULL,
    status                     text NOT NULL CHECK (status IN ('running', 'paused', 'stopped')),
    context_features           text[] NOT NULL DEFAULT '{}',
    policy                     jsonb NOT NULL,
    attribution_window_seconds integer NOT NULL CHECK (attribution_window_seconds > 0),
    holdout_share              double precision NOT NULL DEFAULT 0
                               CHECK (holdout_share >= 0 AND holdout_share <= 0.5),
    sticky                     boolean NOT NULL DEFAULT true,
    version                    integer NOT NULL DEFAULT 1 CHECK (version >= 1),
    created_at                 timestamptz NOT NULL DEFAULT now(),
    updated_at                 timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE variants (
    experiment_id text NOT NULL REFERENCES experiments (experiment_id) ON DELETE CASCADE,
    variant_id    text NOT NULL CHECK (length(variant_id) BETWEEN 1 AND 128),
    name          text,
    position      smallint NOT NULL,
    PRIMARY KEY (experiment_id, variant_id),
    UNIQUE (experiment_id, position)
);
