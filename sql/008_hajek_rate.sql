-- ipw_rate becomes the Hájek (self-normalised) rate, as in streams/analytics/ipw.py:
--   ipw_rate = ipw_conversions / ipw_weight = Σ y/p / Σ 1/p over the exposures of record of
--     the cell: the rate the segment would have if every visitor got the variant. A
--     weighted mean of the outcomes, so always in [0, 1]; consistent under adaptive
--     allocation with propensities bounded away from 0 (bias O(1/decisions)).
-- 005's Horvitz–Thompson Σ y/p / decisions was unbiased but unbounded: a few conversions at
-- small propensities gave rates above 100 %. Likewise the variant's global_rate in
-- v_segment_lift (and so lift_pct) is Σ y/p / Σ 1/p over every segment of the experiment.
-- Same columns, names, types and order as 005 (CREATE OR REPLACE VIEW keeps
-- mv_segment_analytics, which depends on both views); the materialized view is refreshed
-- so its stored rows carry the new rates at once.

CREATE OR REPLACE VIEW v_segment_performance AS
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
       c.ipw_conversions / nullif(c.ipw_weight, 0) AS ipw_rate,
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

CREATE OR REPLACE VIEW v_segment_lift AS
WITH totals AS (
    SELECT experiment_id, variant_id,
           sum(exposures) AS exposures, sum(conversions) AS conversions,
           sum(ipw_conversions) AS ipw_conversions, sum(ipw_weight) AS ipw_weight
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
       t.ipw_conversions / nullif(t.ipw_weight, 0) AS global_rate,
       100 * (p.ipw_rate / nullif(t.ipw_conversions / nullif(t.ipw_weight, 0), 0) - 1)
           AS lift_pct,
       p.observed_rate AS observed_segment_rate,
       t.conversions::float8 / nullif(t.exposures, 0) AS observed_global_rate,
       100 * (p.observed_rate / nullif(t.conversions::float8 / nullif(t.exposures, 0), 0) - 1)
           AS observed_lift_pct,
       e.conversions::float8 / nullif(e.decisions, 0) AS experiment_rate
FROM v_segment_performance p
JOIN totals t USING (experiment_id, variant_id)
JOIN experiment e USING (experiment_id);

REFRESH MATERIALIZED VIEW mv_segment_analytics;
