-- The learning state of record. The track stage writes it in one transaction per batch,
-- together with the offsets it consumed (consumer_watermarks): a replayed batch is
-- recognised by its offsets and applied once, whatever Kafka's commit did.

-- Every exposure, once per decision: the visitor's assignment (sticky decisions, conversion
-- attribution) and the decision log of what was really shown.
CREATE TABLE exposure_log (
    decision_id         text PRIMARY KEY,
    experiment_id       text NOT NULL,
    visitor_id          text NOT NULL,
    variant_id          text NOT NULL,
    segment_key         text NOT NULL,
    exposure_event_id   text NOT NULL,
    exposed_at          timestamptz NOT NULL,
    converted_at        timestamptz,
    conversion_event_id text,
    conversion_value    double precision
);
CREATE INDEX exposure_log_visitor ON exposure_log (experiment_id, visitor_id, exposed_at DESC);

-- Per (experiment, segment, variant): the Beta-Bernoulli sufficient statistics.
CREATE TABLE variant_segment_state (
    experiment_id    text NOT NULL,
    segment_key      text NOT NULL,
    variant_id       text NOT NULL,
    exposures        bigint NOT NULL DEFAULT 0 CHECK (exposures >= 0),
    conversions      bigint NOT NULL DEFAULT 0 CHECK (conversions >= 0),
    conversion_value double precision NOT NULL DEFAULT 0,
    updated_at       timestamptz NOT NULL DEFAULT now(),
    -- no CHECK (conversions <= exposures): Postgres checks the proposed row of an upsert
    -- (0 exposures, +1 conversion) before resolving the conflict
    PRIMARY KEY (experiment_id, segment_key, variant_id)
);


-- The last offset of each input partition whose effects are in this database, per stage.
CREATE TABLE consumer_watermarks (
    stage       text NOT NULL,
    topic       text NOT NULL,
    partition   integer NOT NULL,
    last_offset bigint NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (stage, topic, partition)
);
