-- The administrative lifecycle: each agent's admin state, agents pre-registered by their
-- identifying attributes, and ignore rules. Agents stored before admin states existed were all
-- managed, so that is the default.
ALTER TABLE agents ADD COLUMN admin_state TEXT NOT NULL DEFAULT 'managed';
-- An admin named the agent before it first spoke: retention returns it to not_found.
ALTER TABLE agents ADD COLUMN pre_registered INTEGER NOT NULL DEFAULT 0;

CREATE TABLE expected_agents (
    id                     TEXT PRIMARY KEY NOT NULL,
    identifying_attributes TEXT NOT NULL,     -- JSON object of strings
    labels                 TEXT NOT NULL,     -- JSON object of strings
    created_at_ms          INTEGER NOT NULL
);

CREATE TABLE ignore_rules (
    id            TEXT PRIMARY KEY NOT NULL,
    selector      TEXT NOT NULL,              -- label selector, canonical form
    created_at_ms INTEGER NOT NULL
);

-- Deleting an agent removes its rollout progress; without this every delete scans the rows
-- of every rollout.
CREATE INDEX rollout_agents_by_agent ON rollout_agents (instance_uid);
