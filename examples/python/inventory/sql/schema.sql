-- Run once, in the new database, when the `db` tier's data directory is
-- made (in one transaction with any other `init` file).
CREATE TABLE items (
    id      bigserial PRIMARY KEY,
    name    text NOT NULL CHECK (length(name) BETWEEN 1 AND 200),
    created timestamptz NOT NULL DEFAULT now()
);
