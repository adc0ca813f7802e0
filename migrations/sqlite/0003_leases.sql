-- Leases: the worker holding a run (its token), how many times the run was taken, and its
-- heartbeat on the database's clock (unix seconds) with the lease length it was taken for.
ALTER TABLE runs ADD COLUMN token TEXT;
ALTER TABLE runs ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
ALTER TABLE runs ADD COLUMN lease_s REAL;
ALTER TABLE runs ADD COLUMN beat_s REAL;
