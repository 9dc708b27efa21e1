-- Analytics over the learning state of record (variant_segment_state, 004): segments and
-- their parsed features, per-segment performance and lift views, a materialized view for
-- dashboards, and the history of the insight documents (streams/analytics/report.py).
--
-- Two kinds of rates (README "For analysts"):
--   observed_rate = conversions / exposures: what happened to the visitors shown the
--     variant. Wilson 95 % interval. Biased as an estimate of the variant's rate when the
--     allocation moved (periods and segments where it was shown more weigh more).
--   ipw_rate = ipw_conversions / decisions of the segment (Σ y/p over the exposures of
--     record, decisions = exposures of every variant of the segment): the rate the
--     segment would have if every visitor got the variant, unbiased under adaptive
--     allocation (Horvitz–Thompson). Its decision-grade interval is in the insight
--     documents (always-valid confidence sequences), not here.
-- The experiment-wide segment '*' (if a writer keeps one) is left out of every sum.

-- 'device:mobile|source:instagram' -> {"device": "mobile", "source": "instagram"};
-- 'all' (no dimensions) -> {}. Values never contain '|' or ':' (streams/core/segments.py).
CREATE FUNCTION parse_segment_key(segment_key text) RETURNS jsonb
LANGUAGE sql IMMUTABLE STRICT PARALLEL SAFE AS $$
    SELECT coalesce(jsonb_object_agg(split_part(part, ':', 1),
                                     substr(part, strpos(part, ':') + 1)), '{}'::jsonb)
    FROM unnest(string_to_array(segment_key, '|')) AS part
    WHERE strpos(part, ':') > 0
$$;

-- One row per segment seen: its features and totals over every variant.
CREATE TABLE context_segments (
    experiment_id    text NOT NULL,
    segment_key      text NOT NULL,
    features         jsonb NOT NULL DEFAULT '{}',
    exposures        bigint NOT NULL DEFAULT 0 CHECK (exposures >= 0),
    conversions      bigint NOT NULL DEFAULT 0 CHECK (conversions >= 0),
    conversion_value double precision NOT NULL DEFAULT 0,
    first_seen       timestamptz NOT NULL DEFAULT now(),
    last_seen        timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (experiment_id, segment_key)
);
CREATE INDEX context_segments_features ON context_segments USING gin (features);

-- The segment's row, created (features parsed from the key when not given) if missing.
CREATE FUNCTION get_or_create_segment(experiment text, segment_key text,
                                      features jsonb DEFAULT NULL)
RETURNS context_segments LANGUAGE plpgsql AS $$
DECLARE
    result context_segments;
BEGIN
    INSERT INTO context_segments (experiment_id, segment_key, features)
    VALUES (experiment, get_or_create_segment.segment_key,
            coalesce(get_or_create_segment.features,
                     parse_segment_key(get_or_create_segment.segment_key)))
    ON CONFLICT ON CONSTRAINT context_segments_pkey DO NOTHING;
    SELECT * INTO result FROM context_segments c
    WHERE c.experiment_id = experiment AND c.segment_key = get_or_create_segment.segment_key;
    RETURN result;
END
$$;

-- Totals of one segment recomputed from variant_segment_state: the owner of
-- `experiment|segment` calls it in the transaction that wrote the segment's counts, so
-- the totals commit with them. Idempotent (absolute, not deltas): a replayed batch or a
-- second call changes nothing; first_seen/last_seen come from the variants' rows.
CREATE FUNCTION update_segment_stats(experiment text, segment_key text,
                                     features jsonb DEFAULT NULL)
RETURNS context_segments LANGUAGE plpgsql AS $$
DECLARE
    result context_segments;
BEGIN
    INSERT INTO context_segments AS c (experiment_id, segment_key, features, exposures,
                                       conversions, conversion_value, first_seen, last_seen,
                                       updated_at)
    SELECT experiment, update_segment_stats.segment_key,
           coalesce(update_segment_stats.features,
                    parse_segment_key(update_segment_stats.segment_key)),
           coalesce(sum(s.exposures), 0), coalesce(sum(s.conversions), 0),
           coalesce(sum(s.conversion_value), 0), coalesce(min(s.first_seen), now()),
           coalesce(max(s.last_seen), now()), now()
    FROM variant_segment_state s
    WHERE s.experiment_id = experiment AND s.segment_key = update_segment_stats.segment_key
    ON CONFLICT ON CONSTRAINT context_segments_pkey DO UPDATE
    SET exposures = excluded.exposures,
        conversions = excluded.conversions,
        conversion_value = excluded.conversion_value,
        features = CASE WHEN update_segment_stats.features IS NULL THEN c.features
                        ELSE excluded.features END,
        first_seen = least(c.first_seen, excluded.first_seen),
        last_seen = greatest(c.last_seen, excluded.last_seen),
        updated_at = excluded.updated_at
    RETURNING * INTO result;
    RETURN result;
END
$$;

-- Per segment and variant: observed rate with its Wilson 95 % interval
-- (z = 1.959963984540054), traffic share within the segment, inverse-propensity rate.
CREATE VIEW v_segment_performance AS
WITH cells AS (
    SELECT s.*,
           sum(s.exposures) OVER (PARTITION BY s.experiment_id, s.segment_key) AS decisions
    FROM variant_segment_state s
    WHERE s.segment_key <> '*'
), z AS (
    SELECT 1.959963984540054::float8 AS z
)
SELECT c.experiment_id, c.segment_key, c.variant_id, c.exposures, c.conversions,
       c.conversion_value, c.repeat_conversions, c.decisions,
       c.exposures::float8 / nullif(c.decisions, 0) AS traffic_share,
       c.conversions::float8 / nullif(c.exposures, 0) AS observed_rate,
       w.centre - w.half AS wilson_low,
       w.centre + w.half AS wilson_high,
       c.ipw_conversions / nullif(c.decisions, 0) AS ipw_rate,
       c.ipw_weight, c.ipw_weight_sq, c.ipw_conversions, c.ipw_conversions_sq,
       c.first_seen, c.last_seen, c.updated_at
FROM cells c
CROSS JOIN z
LEFT JOIN LATERAL (
    SELECT (p + z.z ^ 2 / (2 * n)) / (1 + z.z ^ 2 / n) AS centre,
           z.z * sqrt(p * (1 - p) / n + z.z ^ 2 / (4 * n ^ 2)) / (1 + z.z ^ 2 / n) AS half
    FROM (SELECT c.conversions::float8 / c.exposures AS p, c.exposures::float8 AS n
          WHERE c.exposures > 0) AS x
) AS w ON true;

-- Per segment and variant against the experiment: the variant's global rate (over every
-- segment) and the lift of the segment, lift_pct = 100 (segment / global - 1); the
-- inverse-propensity version (what streams/analytics reports as lift_vs_global) and the
-- observed one, plus the experiment's overall observed rate (every variant).
CREATE VIEW v_segment_lift AS
WITH totals AS (
    SELECT experiment_id, variant_id,
           sum(exposures) AS exposures, sum(conversions) AS conversions,
           sum(ipw_conversions) AS ipw_conversions
    FROM variant_segment_state WHERE segment_key <> '*'
    GROUP BY experiment_id, variant_id
), experiment AS (
    SELECT experiment_id, sum(exposures) AS decisions, sum(conversions) AS conversions
    FROM variant_segment_state WHERE segment_key <> '*'
    GROUP BY experiment_id
)
SELECT p.experiment_id, p.segment_key, p.variant_id, p.exposures, p.conversions,
       p.decisions,
       p.ipw_rate AS segment_rate,
       t.ipw_conversions / nullif(e.decisions, 0) AS global_rate,
       100 * (p.ipw_rate / nullif(t.ipw_conversions / nullif(e.decisions, 0), 0) - 1)
           AS lift_pct,
       p.observed_rate AS observed_segment_rate,
       t.conversions::float8 / nullif(t.exposures, 0) AS observed_global_rate,
       100 * (p.observed_rate / nullif(t.conversions::float8 / nullif(t.exposures, 0), 0) - 1)
           AS observed_lift_pct,
       e.conversions::float8 / nullif(e.decisions, 0) AS experiment_rate
FROM v_segment_performance p
JOIN totals t USING (experiment_id, variant_id)
JOIN experiment e USING (experiment_id);

-- Everything a dashboard needs per segment and variant, with the segment's features.
-- Unique index: REFRESH MATERIALIZED VIEW CONCURRENTLY mv_segment_analytics.
CREATE MATERIALIZED VIEW mv_segment_analytics AS
SELECT p.experiment_id, p.segment_key, p.variant_id,
       coalesce(cs.features, parse_segment_key(p.segment_key)) AS features,
       p.exposures, p.conversions, p.conversion_value, p.decisions, p.traffic_share,
       p.observed_rate, p.wilson_low, p.wilson_high, p.ipw_rate,
       l.global_rate, l.lift_pct, l.observed_global_rate, l.observed_lift_pct,
       l.experiment_rate, p.first_seen, p.last_seen, now() AS refreshed_at
FROM v_segment_performance p
JOIN v_segment_lift l USING (experiment_id, segment_key, variant_id)
LEFT JOIN context_segments cs USING (experiment_id, segment_key);
CREATE UNIQUE INDEX mv_segment_analytics_key
    ON mv_segment_analytics (experiment_id, segment_key, variant_id);

-- The insight documents as published (schemas/insights.schema.json).
CREATE TABLE insights_history (
    insight_id       bigserial PRIMARY KEY,
    experiment_id    text NOT NULL,
    kind             text NOT NULL CHECK (kind IN ('lift_report', 'anomaly', 'recommendation')),
    generated_at     timestamptz NOT NULL,
    snapshot_version bigint NOT NULL CHECK (snapshot_version >= 0),
    document         jsonb NOT NULL,
    stored_at        timestamptz NOT NULL DEFAULT now()
);
-- "latest per experiment and kind": DISTINCT ON / ORDER BY ... DESC LIMIT n read this
CREATE INDEX insights_history_latest
    ON insights_history (experiment_id, kind, generated_at DESC, insight_id DESC);

CREATE VIEW v_latest_insights AS
SELECT DISTINCT ON (experiment_id, kind) *
FROM insights_history
ORDER BY experiment_id, kind, generated_at DESC, insight_id DESC;
