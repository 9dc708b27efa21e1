-- context_segments' first and last seen come from the traffic, whenever the row was created
-- (005 took the later of the two, so a segment created now looked seen now).
CREATE OR REPLACE FUNCTION update_segment_stats(experiment text, segment_key text,
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
        -- the variants' rows say when traffic was seen; the row's own creation time (by
        -- get_or_create_segment, before any traffic) does not
        first_seen = CASE WHEN excluded.exposures > 0 THEN excluded.first_seen
                          ELSE c.first_seen END,
        last_seen = CASE WHEN excluded.exposures > 0 THEN excluded.last_seen
                         ELSE c.last_seen END,
        updated_at = excluded.updated_at
    RETURNING * INTO result;
    RETURN result;
END
$$;

-- Per segment and variant: observed rate with its Wilson 95 % interval
-- (z = 1.959963984540054), traffic share within the segment, inverse-propensity rate.
