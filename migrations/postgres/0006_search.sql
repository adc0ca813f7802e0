-- Searching sweeps ask for their trials one at a time: what a trial is built from (the
-- experiment file's path and the `--set` overrides it was started with), when the sweep began
-- on the database's clock (unix seconds, for `budget_minutes`), and the short hold a worker
-- takes while it proposes a trial (so that two workers never propose from the same history).
ALTER TABLE sweeps ADD COLUMN path TEXT;
ALTER TABLE sweeps ADD COLUMN overrides TEXT NOT NULL DEFAULT '[]';
ALTER TABLE sweeps ADD COLUMN started_s DOUBLE PRECISION;
ALTER TABLE sweeps ADD COLUMN ask_token TEXT;
ALTER TABLE sweeps ADD COLUMN ask_until DOUBLE PRECISION;
