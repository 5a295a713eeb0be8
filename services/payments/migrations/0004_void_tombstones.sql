-- A void is final for its order. Voiding an order that has no payment yet leaves a tombstone:
-- a 'voided' row without terms. An authorization arriving later (a reordered command, one
-- re-driven from the dead-letter topic, a retried gRPC call) collides with it on order_id and
-- is refused, instead of holding funds for a cancelled order nobody will void again.
-- Expand-only: columns become nullable, and only tombstones use that.
ALTER TABLE payments
    ALTER COLUMN idempotency_key DROP NOT NULL,
    ALTER COLUMN customer_id DROP NOT NULL,
    ALTER COLUMN amount_minor DROP NOT NULL,
    ALTER COLUMN currency DROP NOT NULL,
    ADD CONSTRAINT payments_terms_or_tombstone CHECK (
        (idempotency_key IS NOT NULL AND customer_id IS NOT NULL
            AND amount_minor IS NOT NULL AND currency IS NOT NULL)
        OR (status = 'voided' AND idempotency_key IS NULL AND customer_id IS NULL
            AND amount_minor IS NULL AND currency IS NULL)
    );
