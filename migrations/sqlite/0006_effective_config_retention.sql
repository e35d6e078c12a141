-- Effective configs over --max-effective-config are kept as their size alone (body empty).
ALTER TABLE effective_configs ADD COLUMN withheld_bytes INTEGER;
-- Releasing an effective config asks whether any agent still refers to it.
CREATE INDEX agents_by_effective_config ON agents (effective_config_hash);
