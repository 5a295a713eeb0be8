#!/usr/bin/env python3
"""What one fetched record costs tansu's sqlite engine, with and without the indexes of
scripts/tansu-sqlite-indexes.sql, on a copy of a real broker database.

tansu 0.6.0 follows every record a fetch returns with a query for that record's headers
(its `header_fetch.sql`, repeated below with sqlite's parameter syntax). This times that
query for records spread over the log, side by side on one copy: first without the
indexes, then with them. The broker's own database is never written.

    python3 scripts/broker-lab/header_scan.py --db .state/tansu/tansu.db
"""

import argparse
import json
import os
import sqlite3
import tempfile
import time

HEADER_FETCH = """
select h.k, h.v
from header h
join record r on h.topition = r.topition and h.offset_id = r.offset_id
join topition tp on tp.id = r.topition
join topic t on tp.topic = t.id
join cluster c on t.cluster = c.id
where c.name = ?1 and t.name = ?2 and tp.partition = ?3 and r.offset_id = ?4
"""

INDEXES = os.path.join(os.path.dirname(__file__), "..", "tansu-sqlite-indexes.sql")
FAULTLINE_INDEXES = ("faultline_header_by_record", "faultline_watermark_by_topition")


def sample(con, count):
    """Records spread evenly over the whole log, newest included."""
    rows = con.execute(
        """select c.name, t.name, tp.partition, r.offset_id
           from record r join topition tp on tp.id = r.topition
           join topic t on t.id = tp.topic join cluster c on c.id = t.cluster
           order by r.rowid"""
    ).fetchall()
    step = max(1, len(rows) // count)
    return rows[::step][:count]


def per_fetch_ms(con, keys):
    started = time.perf_counter()
    for key in keys:
        con.execute(HEADER_FETCH, key).fetchall()
    return (time.perf_counter() - started) / len(keys) * 1000


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True, help="a tansu sqlite database")
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as scratch:
        copy = os.path.join(scratch, "tansu.db")
        # The online backup API copies a consistent snapshot, WAL included, while tansu runs.
        with sqlite3.connect(f"file:{args.db}?mode=ro", uri=True) as source:
            with sqlite3.connect(copy) as target:
                source.backup(target)
        con = sqlite3.connect(copy)
        for name in FAULTLINE_INDEXES:
            con.execute(f"drop index if exists {name}")
        records = con.execute("select count(*) from record").fetchone()[0]
        headers = con.execute("select count(*) from header").fetchone()[0]
        keys = sample(con, args.samples)
        if not keys:
            raise SystemExit(f"{args.db} holds no records")
        without = per_fetch_ms(con, keys)
        with open(INDEXES) as script:
            con.executescript(script.read())
        indexed = per_fetch_ms(con, keys)
        con.close()

    print(
        json.dumps(
            {
                "records": records,
                "headers": headers,
                "sampled_records": len(keys),
                "ms_per_fetched_record_without_indexes": round(without, 3),
                "ms_per_fetched_record_with_indexes": round(indexed, 3),
                "ratio": round(without / indexed, 1) if indexed else None,
            },
            indent=2,
        )
    )


if __name__ == "__main__":
    main()
