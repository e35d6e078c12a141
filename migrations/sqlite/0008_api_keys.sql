-- Admin API keys. Only each key's SHA-256 is kept; the key itself is shown once, at creation.
-- A revoked key's row is deleted.
CREATE TABLE api_keys (
    id              TEXT PRIMARY KEY NOT NULL,
    name            TEXT NOT NULL,
    role            TEXT NOT NULL,                -- viewer, operator or admin
    key_hash        BLOB NOT NULL UNIQUE,         -- SHA-256 of the key
    created_at_ms   INTEGER NOT NULL,
    expires_at_ms   INTEGER,
    last_used_at_ms INTEGER
);
