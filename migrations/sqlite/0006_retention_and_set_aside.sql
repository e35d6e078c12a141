-- Effective configs over --max-effective-config are kept as their size alone (body empty).
ALTER TABLE effective_configs ADD COLUMN withheld_bytes INTEGER;
-- Releasing an effective config asks whether any agent still refers to it.
CREATE INDEX agents_by_effective_config ON agents (effective_config_hash);
-- Agent rows that could not be read at start, moved here as they were (each column an SQL
-- literal in row_json) with the reason, for an admin to inspect.
CREATE TABLE agents_set_aside (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_uid BLOB NOT NULL,
    set_aside_ms INTEGER NOT NULL,
    problem      TEXT NOT NULL,
    row_json     TEXT NOT NULL
);
