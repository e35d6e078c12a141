-- Uploaded packages (bytes live in the data directory by SHA-256), what agents report of their
-- packages, and upgrade rollouts (a package to the agents matching a selector).
CREATE TABLE packages (
    name          TEXT NOT NULL,
    version       TEXT NOT NULL,
    platform      TEXT NOT NULL,
    arch          TEXT NOT NULL,
    sha256        BLOB NOT NULL,
    size          INTEGER NOT NULL,
    created_at_ms INTEGER NOT NULL,
    PRIMARY KEY (name, version, platform, arch)
);

ALTER TABLE agents ADD COLUMN packages BLOB;           -- protobuf PackageStatuses
ALTER TABLE agents ADD COLUMN offered_package_hash BLOB;

ALTER TABLE rollouts ADD COLUMN package_name TEXT;     -- set for upgrade rollouts
ALTER TABLE rollouts ADD COLUMN package_version TEXT;
ALTER TABLE rollouts ADD COLUMN selector TEXT;
