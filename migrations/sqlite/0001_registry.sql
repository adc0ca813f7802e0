-- The experiment registry. Plain SQL types so PostgreSQL can serve the same schema later.

CREATE TABLE experiments (
    id          INTEGER PRIMARY KEY,
    name        TEXT NOT NULL,
    path        TEXT NOT NULL UNIQUE,
    config      TEXT NOT NULL,
    hash        TEXT NOT NULL,
    error       TEXT,
    updated_at  TEXT NOT NULL
);

CREATE TABLE runs (
    id            INTEGER PRIMARY KEY,
    experiment_id INTEGER REFERENCES experiments(id) ON DELETE SET NULL,
    name          TEXT NOT NULL,
    status        TEXT NOT NULL CHECK (status IN ('queued', 'running', 'completed', 'failed', 'cancelled', 'pruned')),
    config        TEXT NOT NULL,
    overrides     TEXT NOT NULL DEFAULT '[]',
    device        TEXT,
    epochs_total  INTEGER NOT NULL,
    epochs_done   INTEGER NOT NULL DEFAULT 0,
    monitor       TEXT NOT NULL,
    best_metric   REAL,
    best_epoch    INTEGER,
    final_metrics TEXT,
    error         TEXT,
    run_dir       TEXT,
    classes       TEXT,
    worker        TEXT,
    pid           INTEGER,
    sweep_id      INTEGER,
    created_at    TEXT NOT NULL,
    started_at    TEXT,
    finished_at   TEXT,
    heartbeat_at  TEXT
);
CREATE INDEX runs_status ON runs (status);

CREATE TABLE metrics (
    id      INTEGER PRIMARY KEY,
    run_id  INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    step    INTEGER NOT NULL,
    epoch   INTEGER NOT NULL,
    split   TEXT NOT NULL,
    name    TEXT NOT NULL,
    value   REAL NOT NULL,
    time    TEXT NOT NULL
);
CREATE INDEX metrics_run ON metrics (run_id, split, name, step);

CREATE TABLE checkpoints (
    id         INTEGER PRIMARY KEY,
    run_id     INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    epoch      INTEGER NOT NULL,
    kind       TEXT NOT NULL CHECK (kind IN ('best', 'last')),
    path       TEXT NOT NULL,
    metrics    TEXT NOT NULL,
    sha256     TEXT NOT NULL,
    created_at TEXT NOT NULL
);
CREATE INDEX checkpoints_run ON checkpoints (run_id);

CREATE TABLE run_log (
    id      INTEGER PRIMARY KEY,
    run_id  INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    time    TEXT NOT NULL,
    level   TEXT NOT NULL,
    message TEXT NOT NULL
);
CREATE INDEX run_log_run ON run_log (run_id);
