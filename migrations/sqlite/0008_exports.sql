-- Deployed files measured: each `mvlab export` of a run's checkpoint, and each sweep trial's
-- deployed file, against the checkpoint it was made from (its sha256, epoch and kind): the
-- file's format and quantization, size, val accuracy in its runtime beside the float model's,
-- their top-1 agreement, on how many val images, its batch-1 latency (sweeps), or why it could
-- not be measured.
CREATE TABLE exports (
    id                 INTEGER PRIMARY KEY,
    run_id             INTEGER NOT NULL REFERENCES runs(id) ON DELETE CASCADE,
    source             TEXT NOT NULL CHECK (source IN ('export', 'sweep')),
    checkpoint_sha256  TEXT NOT NULL,
    checkpoint_kind    TEXT,
    epoch              INTEGER,
    format             TEXT NOT NULL,
    quantize           TEXT NOT NULL,
    path               TEXT NOT NULL,
    size_bytes         INTEGER,
    images             INTEGER,
    val_accuracy       REAL,
    float_val_accuracy REAL,
    agreement          REAL,
    latency_ms         REAL,
    error              TEXT,
    created_at         TEXT NOT NULL
);
CREATE INDEX exports_run ON exports (run_id);
