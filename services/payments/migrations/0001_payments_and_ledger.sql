-- One payment per order; the idempotency key is unique too, so neither a retried request
-- nor a second request for the same order can authorize twice.
CREATE TABLE payments (
    id                 uuid        PRIMARY KEY,
    order_id           uuid        NOT NULL UNIQUE,
    idempotency_key    text        NOT NULL UNIQUE,
    customer_id        text        NOT NULL,
    amount_minor       bigint      NOT NULL CHECK (amount_minor > 0),
    currency           text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    status             text        NOT NULL CHECK (status IN ('authorized', 'declined', 'captured', 'voided')),
    decline_reason     text,
    provider_reference text,
    created_at         timestamptz NOT NULL DEFAULT now(),
    updated_at         timestamptz NOT NULL DEFAULT now()
);

-- Double-entry ledger: every capture writes a debit and a credit of the same amount, so the
-- sum of all entries is zero and any other total points at a bug.
CREATE TABLE ledger_entries (
    id           bigint      GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    payment_id   uuid        NOT NULL REFERENCES payments (id),
    account      text        NOT NULL,
    -- Positive for a debit, negative for a credit.
    amount_minor bigint      NOT NULL CHECK (amount_minor <> 0),
    currency     text        NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now()
);

CREATE INDEX ledger_entries_payment ON ledger_entries (payment_id);
