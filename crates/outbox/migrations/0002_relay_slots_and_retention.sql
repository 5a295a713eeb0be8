-- Key ranges for several relays without a leader.
--
-- Every row belongs to one of 64 slots, derived from its aggregate id with a hash that is
-- stable across Postgres versions (md5), so every writer (this crate, a manual INSERT, a
-- migration script) agrees on it without being told. A relay publishes only slots it holds
-- an advisory lock on, so one aggregate's rows are never published by two relays at once.
ALTER TABLE outbox
    ADD COLUMN slot integer NOT NULL
        GENERATED ALWAYS AS ((('x' || substr(md5(aggregateid), 1, 8))::bit(32)::integer) & 63) STORED;

-- Retention: with `Retention::Keep` the relay marks rows instead of deleting them, and a
-- purge removes marked rows older than the retention period.
ALTER TABLE outbox ADD COLUMN published_at timestamptz;

CREATE INDEX outbox_pending ON outbox (slot, seq) WHERE published_at IS NULL;
CREATE INDEX outbox_published ON outbox (published_at) WHERE published_at IS NOT NULL;

-- Relays announce themselves here so each can work out its fair share of the slots.
CREATE TABLE outbox_relays (
    id           uuid        PRIMARY KEY,
    heartbeat_at timestamptz NOT NULL
);
