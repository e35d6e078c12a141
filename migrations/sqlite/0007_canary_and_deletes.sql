-- A rollout resumed after errors sends its next wave to one agent first.
ALTER TABLE rollouts ADD COLUMN canary INTEGER NOT NULL DEFAULT 0;
