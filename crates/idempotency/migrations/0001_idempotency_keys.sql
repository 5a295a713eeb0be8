-- One row per (caller, Idempotency-Key).
--
-- While a request is in flight the row holds a lease (`lease_id`, `locked_until`): its owner
-- may checkpoint and complete the row, and a duplicate arriving meanwhile is told to come
-- back later. If the owner dies, the lease runs out and the next identical request takes the
-- row over, resuming from `recovery_point`. Once completed, the row holds the response that
-- every later identical request gets replayed, until `expires_at`.
CREATE TABLE idempotency_keys (
    scope            text        NOT NULL,
    key              text        NOT NULL,
    -- SHA-256 over method, path, caller and canonical body: the same key with another
    -- request is a client error, never a replay.
    fingerprint      bytea       NOT NULL,
    lease_id         uuid,
    locked_until     timestamptz,
    recovery_point   text        NOT NULL DEFAULT 'started',
    response_status  integer,
    response_headers jsonb,
    response_body    bytea,
    created_at       timestamptz NOT NULL DEFAULT now(),
    completed_at     timestamptz,
    expires_at       timestamptz NOT NULL,
    PRIMARY KEY (scope, key),
    CHECK ((completed_at IS NULL) = (response_status IS NULL)),
    CHECK ((completed_at IS NULL) = (lease_id IS NOT NULL))
);

CREATE INDEX idempotency_keys_expiry ON idempotency_keys (expires_at);
