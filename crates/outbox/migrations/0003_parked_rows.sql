-- Rows the broker refuses for good (too large, a topic that does not exist or may not be
-- written) are parked instead of retried forever at the head of every round: kept with the
-- reason, counted, and re-driven by an operator (`faultline_outbox::relay::redrive`) once
-- the cause is fixed. Until then the later rows of the same aggregate on the same topic
-- wait behind the parked one, so a consumer never sees them out of order; other topics and
-- other aggregates are not held up.
ALTER TABLE outbox
    ADD COLUMN parked_at  timestamptz,
    ADD COLUMN park_error text;

-- What the relay's "is an earlier row of this (topic, aggregate) parked?" check reads; empty
-- while nothing is parked, so it costs nothing on the hot path.
CREATE INDEX outbox_parked ON outbox (topic, aggregateid, seq) WHERE parked_at IS NOT NULL;
