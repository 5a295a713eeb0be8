-- Unpublished rows by aggregate: what checkout's sweeper asks every second ("is this overdue
-- saga's command still in the outbox?") and what the parked-row listing counts behind each
-- parked row. Without it both scan the whole backlog, which is largest exactly during the
-- relay or broker outage they are there for.
CREATE INDEX outbox_pending_by_aggregate ON outbox (aggregateid) WHERE published_at IS NULL;
