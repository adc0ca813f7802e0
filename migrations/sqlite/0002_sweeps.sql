-- Sweeps: one row per `mvlab sweep`; its trials are runs with runs.sweep_id set.
CREATE TABLE sweeps (
    id            INTEGER PRIMARY KEY,
    experiment_id INTEGER REFERENCES experiments(id) ON DELETE SET NULL,
    name          TEXT NOT NULL,
    config        TEXT NOT NULL,
    method        TEXT NOT NULL,
    prune         TEXT NOT NULL,
    created_at    TEXT NOT NULL
);
CREATE INDEX runs_sweep ON runs (sweep_id);
