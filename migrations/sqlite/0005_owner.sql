-- The registry's own facts: its id (made at first open, written into each run folder's marker
-- so that no other registry writes there) and the folder its runs go in.
CREATE TABLE registry_meta (
    key TEXT PRIMARY KEY,
    value TEXT NOT NULL
);
