-- Learning state owned by the segment partition (see README "How it works").
--
-- The track stage (visitor partition) keeps the decisions of record, the exposure log, the
-- attribution and what waits; it turns each batch into per-(experiment, segment) deltas
-- written to an outbox in the batch's transaction. The learn stage, owner of the
-- `experiment|segment` key, is the only writer of that key's counts: it applies each delta
-- once (applied_deltas) with the offsets it consumed. The experiment's owner reads every
-- segment at once and publishes weights under a version that only grows.

-- Decisions of record: every decision the service (or a client in its own process) made,
-- read back from the `decisions` topic on the visitor partition.
CREATE TABLE decision_log (
    decision_id     text PRIMARY KEY,
    experiment_id   text NOT NULL,
    visitor_id      text NOT NULL,
    variant_id      text NOT NULL,
    segment_key     text NOT NULL,
    propensity      double precision NOT NULL CHECK (propensity > 0 AND propensity <= 1),
    weights_version bigint NOT NULL,
    source          text NOT NULL,
    decided_at      timestamptz NOT NULL
);
CREATE INDEX decision_log_visitor ON decision_log (experiment_id, visitor_id, decided_at DESC);

-- The exposure log keeps what the decision of record said, and repeat conversions.
ALTER TABLE exposure_log
    ADD COLUMN propensity double precision NOT NULL DEFAULT 1,
    ADD COLUMN weights_version bigint NOT NULL DEFAULT 0,
    ADD COLUMN source text NOT NULL DEFAULT 'uniform',
    ADD COLUMN repeat_conversions integer NOT NULL DEFAULT 0,
    ADD COLUMN repeat_value double precision NOT NULL DEFAULT 0;

-- Every conversion event counted, once: duplicates of a counted conversion are recognised
-- by event_id, whether it was the exposure's first conversion or a repeat.
CREATE TABLE conversion_log (
    event_id      text PRIMARY KEY,
    decision_id   text NOT NULL,
    experiment_id text NOT NULL,
    occurred_at   timestamptz NOT NULL,
    value         double precision,
    repeat        boolean NOT NULL
);

-- What waits, by source record: conversions without their exposure, exposures without their
-- decision, events of an experiment this worker does not know yet. Re-read when what they
-- wait for arrives; past expires_at they go to the dead-letter topic and stay here as
-- expired (reported by v_unattributed_conversions).
DROP VIEW v_unattributed_conversions;
DROP TABLE pending_conversions;
CREATE TABLE pending_events (
    source_topic  text NOT NULL,
    partition     integer NOT NULL,
    source_offset bigint NOT NULL,
    waiting_for   text NOT NULL CHECK (waiting_for IN ('exposure', 'decision', 'experiment')),
    event_id      text NOT NULL,
    experiment_id text NOT NULL,
    visitor_id    text NOT NULL,
    decision_id   text,
    value         double precision,
    occurred_at   timestamptz NOT NULL,
    payload       bytea NOT NULL,
    parked_at     timestamptz NOT NULL DEFAULT now(),
    expires_at    timestamptz NOT NULL,
    expired_at    timestamptz,
    PRIMARY KEY (source_topic, partition, source_offset)
);
CREATE INDEX pending_events_pair ON pending_events (experiment_id, visitor_id)
    WHERE expired_at IS NULL;
CREATE INDEX pending_events_decision ON pending_events (decision_id)
    WHERE expired_at IS NULL AND waiting_for = 'decision';
CREATE INDEX pending_events_due ON pending_events (partition, expires_at)
    WHERE expired_at IS NULL;

CREATE VIEW v_unattributed_conversions AS
SELECT experiment_id,
       count(*) FILTER (WHERE expired_at IS NULL) AS waiting,
       count(*) FILTER (WHERE expired_at IS NOT NULL) AS expired,
       min(occurred_at) AS oldest,
       max(occurred_at) AS newest
FROM pending_events
WHERE source_topic LIKE '%conversions'
GROUP BY experiment_id;

-- Deltas written by the track stage in its transaction, sent after it commits, deleted once
-- the broker has them; a crash in between leaves them here to be sent again (the owner
-- de-duplicates by delta_id).
CREATE TABLE segment_delta_outbox (
    delta_id      bigserial PRIMARY KEY,
    experiment_id text NOT NULL,
    segment_key   text NOT NULL,
    payload       jsonb NOT NULL,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- The owner's record of the deltas it applied (pruned after a week).
CREATE TABLE applied_deltas (
    delta_id   bigint PRIMARY KEY,
    applied_at timestamptz NOT NULL DEFAULT now()
);

-- Per (experiment, segment, variant): written only by the owner of `experiment|segment`.
-- Raw counts and inverse-propensity sums for the analytics; effective (time-discounted)
-- counts for learning, decayed to decayed_at.
DROP TABLE variant_segment_state;
CREATE TABLE variant_segment_state (
    experiment_id         text NOT NULL,
    segment_key           text NOT NULL,
    variant_id            text NOT NULL,
    exposures             bigint NOT NULL DEFAULT 0 CHECK (exposures >= 0),
    conversions           bigint NOT NULL DEFAULT 0 CHECK (conversions >= 0),
    conversion_value      double precision NOT NULL DEFAULT 0,
    repeat_conversions    bigint NOT NULL DEFAULT 0,
    ipw_weight            double precision NOT NULL DEFAULT 0,
    ipw_weight_sq         double precision NOT NULL DEFAULT 0,
    ipw_conversions       double precision NOT NULL DEFAULT 0,
    ipw_conversions_sq    double precision NOT NULL DEFAULT 0,
    effective_exposures   double precision NOT NULL DEFAULT 0,
    effective_conversions double precision NOT NULL DEFAULT 0,
    decayed_at            timestamptz NOT NULL DEFAULT now(),
    first_seen            timestamptz NOT NULL DEFAULT now(),
    last_seen             timestamptz NOT NULL DEFAULT now(),
    updated_at            timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (experiment_id, segment_key, variant_id)
);

-- The last allocation version of each experiment: a publisher locks the row, reads the
-- snapshot and takes the next version, so versions follow snapshots in time.
CREATE TABLE allocation_versions (
    experiment_id text PRIMARY KEY,
    version       bigint NOT NULL,
    published_at  timestamptz NOT NULL DEFAULT now()
);
