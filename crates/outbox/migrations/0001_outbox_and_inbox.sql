-- The outbox: messages written in the same transaction as the change they announce.
--
-- Column names follow Debezium's outbox event router (id, aggregatetype, aggregateid, type,
-- payload), so log-based change data capture could replace the polling relay without
-- touching any writer. `topic` and `headers` are the two additions: the destination and the
-- Kafka headers (trace context among them) captured when the row was written.
CREATE TABLE outbox (
    id            uuid        PRIMARY KEY,
    -- Write order. The relay publishes in this order; writers of one aggregate serialise on
    -- that aggregate's row, so for one aggregate this is also commit order.
    seq           bigint      GENERATED ALWAYS AS IDENTITY UNIQUE,
    aggregatetype text        NOT NULL,
    aggregateid   text        NOT NULL,
    type          text        NOT NULL,
    topic         text        NOT NULL,
    payload       bytea       NOT NULL,
    headers       jsonb       NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now()
);

-- Wake the relay as soon as a transaction that wrote to the outbox commits (NOTIFY is
-- delivered at commit); the relay also polls, so a lost notification only costs latency.
CREATE FUNCTION faultline_outbox_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('faultline_outbox', '');
    RETURN NULL;
END
$$;

CREATE TRIGGER outbox_notify
AFTER INSERT ON outbox
FOR EACH STATEMENT EXECUTE FUNCTION faultline_outbox_notify();

-- The inbox: one row per message a consumer has finished with, written in the same
-- transaction as that message's effect. A redelivered message finds its row and is skipped.
CREATE TABLE inbox (
    consumer    text        NOT NULL,
    event_id    text        NOT NULL,
    topic       text        NOT NULL,
    partition   integer     NOT NULL,
    "offset"    bigint      NOT NULL,
    -- 'processed', or 'parked' when the message went to the dead-letter topic instead.
    outcome     text        NOT NULL CHECK (outcome IN ('processed', 'parked')),
    error       text,
    received_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (consumer, event_id)
);
