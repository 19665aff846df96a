-- The orders application's tables: made once, when the data directory is
-- new (the `init` of the `db` tier in topologies/orders-db.yaml). The outbox
-- table is the tier's own (its link's `outbox:`), made at each start if
-- missing.

CREATE TABLE orders (
    id         text PRIMARY KEY,            -- the client's: a retried POST is the same order
    item       text NOT NULL,
    quantity   integer NOT NULL CHECK (quantity > 0),
    status     text NOT NULL DEFAULT 'accepted',
    version    integer NOT NULL DEFAULT 1,  -- +1 at each change: the cache keeps the newest
    created_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE stock (
    item     text PRIMARY KEY,
    quantity bigint NOT NULL
);
INSERT INTO stock VALUES ('widget', 1000000000), ('gadget', 1000000000), ('gizmo', 1000000000);

-- What each consumer has applied, by message id: a delivery whose id is
-- here was applied before, and is acknowledged without applying it again.
CREATE TABLE processed (
    consumer   text NOT NULL,
    message_id text NOT NULL,
    order_id   text NOT NULL,
    PRIMARY KEY (consumer, message_id)
);

-- Deliveries recognised as repeats (at least once at work), for the record.
CREATE TABLE duplicates (
    consumer   text NOT NULL,
    message_id text NOT NULL,
    at         timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE audit (
    order_id   text PRIMARY KEY,
    message_id text NOT NULL,
    item       text NOT NULL,
    quantity   integer NOT NULL
);

-- The native ledger tier's (plugins/ledger): each order's quantity, once.
CREATE TABLE ledger (
    order_id text PRIMARY KEY,
    quantity integer NOT NULL
);
