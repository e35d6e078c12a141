-- Configurations with immutable versions, staged rollouts with per-agent progress, component
-- sets reported by agents (by hash), and what each agent was last offered.
CREATE TABLE configurations (
    name          TEXT PRIMARY KEY NOT NULL,
    selector      TEXT NOT NULL,
    priority      INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    updated_at_ms INTEGER NOT NULL
);

CREATE TABLE config_versions (
    name          TEXT NOT NULL REFERENCES configurations (name),
    version       INTEGER NOT NULL,
    hash          BLOB NOT NULL,
    files         BLOB NOT NULL,              -- protobuf AgentConfigMap
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (name, version)
);

CREATE TABLE rollouts (
    id               TEXT PRIMARY KEY NOT NULL,
    configuration    TEXT NOT NULL,
    version          INTEGER NOT NULL,
    previous_version INTEGER,
    initial          INTEGER NOT NULL,
    multiplier       INTEGER NOT NULL,
    maximum          INTEGER NOT NULL,
    max_errors       INTEGER NOT NULL,
    rollback         INTEGER NOT NULL,
    wave_timeout_ms  INTEGER NOT NULL,
    state            TEXT NOT NULL,
    wave             INTEGER NOT NULL,
    extra_errors     INTEGER NOT NULL,
    created_at_ms    INTEGER NOT NULL,
    updated_at_ms    INTEGER NOT NULL
);

CREATE TABLE rollout_agents (
    rollout_id   TEXT NOT NULL,
    instance_uid BLOB NOT NULL,
    phase        TEXT NOT NULL,
    wave         INTEGER,
    at_ms        INTEGER,
    PRIMARY KEY (rollout_id, instance_uid)
);

CREATE TABLE component_sets (
    hash BLOB PRIMARY KEY NOT NULL,
    body TEXT NOT NULL                         -- JSON {"kind": ["type", ...]}
);

ALTER TABLE agents ADD COLUMN offered_config_hash BLOB;
ALTER TABLE agents ADD COLUMN components_hash BLOB;
