"""The `migrate` job of topologies/stores.yaml: brings the schema up to date.

It runs once at each start (`run: once`), after the `db` tier is ready and
before `api`, which lists it in `after:`. Each migration is applied at most
once, recorded in `schema_migrations`, so a second run changes nothing; a
failure rolls back and exits 1, and `api` is not started.
"""

import os
import sys

import psycopg

MIGRATIONS = [
    ("0001_price", "ALTER TABLE items ADD COLUMN price_cents integer NOT NULL DEFAULT 0"),
    ("0002_name_index", "CREATE INDEX items_name ON items (name)"),
]


def main():
    with psycopg.connect(os.environ["ORCH_LINK_DB_URL"], connect_timeout=10, autocommit=True) as conn:
        conn.execute("CREATE TABLE IF NOT EXISTS schema_migrations (id text PRIMARY KEY)")
        done = {row[0] for row in conn.execute("SELECT id FROM schema_migrations")}
        for name, sql in MIGRATIONS:
            if name in done:
                continue
            with conn.transaction():
                conn.execute(sql)
                conn.execute("INSERT INTO schema_migrations (id) VALUES (%s)", (name,))
            print(f"applied {name}", flush=True)
    print("schema up to date", flush=True)


if __name__ == "__main__":
    try:
        main()
    except psycopg.Error as error:
        print(f"migration failed: {error}", file=sys.stderr)
        sys.exit(1)
