-- Agents, their status history, and effective configurations deduplicated by hash.
CREATE TABLE agents (
    instance_uid          BLOB PRIMARY KEY NOT NULL,
    status                TEXT NOT NULL,
    status_reason         TEXT NOT NULL,
    transport             TEXT,
    labels                TEXT NOT NULL,      -- JSON object of strings
    description           BLOB NOT NULL,      -- protobuf AgentDescription
    capabilities          INTEGER NOT NULL,
    health                BLOB,               -- protobuf ComponentHealth
    effective_config_hash BLOB,
    remote_config_hash    BLOB,
    remote_config_status  TEXT,
    remote_config_error   TEXT,
    last_seen_ms          INTEGER NOT NULL,
    connected_at_ms       INTEGER
);

CREATE TABLE agent_history (
    id           INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_uid BLOB NOT NULL,
    at_ms        INTEGER NOT NULL,
    from_status  TEXT,
    to_status    TEXT NOT NULL,
    reason       TEXT NOT NULL
);
CREATE INDEX agent_history_by_agent ON agent_history (instance_uid, id);

CREATE TABLE effective_configs (
    hash BLOB PRIMARY KEY NOT NULL,
    body BLOB NOT NULL                        -- protobuf AgentConfigMap
);
