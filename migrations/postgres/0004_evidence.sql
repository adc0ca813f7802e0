-- Seed groups are sweeps over the seed alone (kind 'seeds'); a run's provenance (version,
-- features, device, the experiment file's commit, the dataset's fingerprint, the split's hash,
-- the seed) as JSON, checked by `compare` and `rerun --verify`.
ALTER TABLE sweeps ADD COLUMN kind TEXT NOT NULL DEFAULT 'sweep';
ALTER TABLE runs ADD COLUMN provenance TEXT;
