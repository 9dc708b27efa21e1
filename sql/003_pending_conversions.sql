-- Conversions read before the exposure they follow (a replayed backlog interleaves topics):
-- they wait here, inside the same transactions as the counts, until an exposure of the same
-- (experiment, visitor) arrives. What stays here is what could not be attributed: reported
-- by the view below, never silently dropped.
CREATE TABLE pending_conversions (
    event_id       text PRIMARY KEY,
    experiment_id  text NOT NULL,
    visitor_id     text NOT NULL,
    occurred_at    timestamptz NOT NULL,
    value          double precision,
    window_seconds integer NOT NULL,
    source_topic   text NOT NULL,
    partition      integer NOT NULL,
    source_offset  bigint NOT NULL,
    payload        bytea,
    parked_at      timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX pending_conversions_visitor ON pending_conversions (experiment_id, visitor_id);

CREATE VIEW v_unattributed_conversions AS
SELECT experiment_id, count(*) AS conversions, min(occurred_at) AS oldest,
       max(occurred_at) AS newest
FROM pending_conversions GROUP BY experiment_id;
