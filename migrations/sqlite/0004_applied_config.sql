-- The configuration each agent last reported APPLIED: what it runs, even after a later
-- version failed.
ALTER TABLE agents ADD COLUMN applied_config_hash BLOB;
