-- What waits for its experiment's definition is looked up by experiment (the sweep).
CREATE INDEX pending_events_experiment ON pending_events (experiment_id)
    WHERE expired_at IS NULL AND waiting_for = 'experiment';
