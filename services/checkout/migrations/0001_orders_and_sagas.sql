-- Orders as the customer sees them.
CREATE TABLE orders (
    id                  uuid        PRIMARY KEY,
    customer_id         text        NOT NULL,
    status              text        NOT NULL CHECK (status IN ('PENDING', 'CONFIRMED', 'CANCELLED')),
    total_minor         bigint      NOT NULL CHECK (total_minor >= 0),
    currency            text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    cancellation_code   text,
    cancellation_reason text,
    created_at          timestamptz NOT NULL DEFAULT now(),
    updated_at          timestamptz NOT NULL DEFAULT now(),
    CHECK ((status = 'CANCELLED') = (cancellation_code IS NOT NULL))
);

CREATE INDEX orders_customer ON orders (customer_id, created_at);

-- Lines priced at the moment the order was placed, so later catalog changes do not move a
-- placed order's total.
CREATE TABLE order_items (
    order_id         uuid   NOT NULL REFERENCES orders (id),
    sku              text   NOT NULL,
    name             text   NOT NULL,
    quantity         bigint NOT NULL CHECK (quantity > 0),
    unit_price_minor bigint NOT NULL CHECK (unit_price_minor >= 0),
    PRIMARY KEY (order_id, sku)
);

-- The orchestrator's memory: one row per order saga, locked while an event is applied.
CREATE TABLE order_sagas (
    order_id    uuid        PRIMARY KEY REFERENCES orders (id),
    state       text        NOT NULL CHECK (state IN
                    ('awaiting_stock', 'awaiting_payment', 'completing', 'compensating',
                     'completed', 'compensated')),
    -- Progress inside 'completing' (committed, captured) or 'compensating' (released, voided).
    stock_done   boolean     NOT NULL DEFAULT false,
    payment_done boolean     NOT NULL DEFAULT false,
    attempts     integer     NOT NULL CHECK (attempts >= 0),
    -- When the current step times out; NULL once the saga is finished.
    deadline_at  timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    CHECK ((state IN ('completed', 'compensated')) = (deadline_at IS NULL))
);

CREATE INDEX order_sagas_deadline ON order_sagas (deadline_at) WHERE deadline_at IS NOT NULL;
