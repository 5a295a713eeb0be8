-- Products and their stock. Every unit ever loaded is in exactly one of three buckets, and
-- the CHECK below makes "stock is conserved" a property the database enforces rather than
-- one the tests hope for.
CREATE TABLE products (
    sku              text        PRIMARY KEY,
    name             text        NOT NULL,
    unit_price_minor bigint      NOT NULL CHECK (unit_price_minor >= 0),
    currency         text        NOT NULL CHECK (currency ~ '^[A-Z]{3}$'),
    available        bigint      NOT NULL DEFAULT 0 CHECK (available >= 0),
    reserved         bigint      NOT NULL DEFAULT 0 CHECK (reserved >= 0),
    sold             bigint      NOT NULL DEFAULT 0 CHECK (sold >= 0),
    loaded           bigint      NOT NULL DEFAULT 0 CHECK (loaded >= 0),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    CHECK (available + reserved + sold = loaded)
);

-- One reservation per order, whatever happened to it. Keeping rejected and released ones
-- makes every command idempotent per order: a repeated ReserveStock gets the first answer,
-- and a ReserveStock arriving after its order's ReleaseStock cannot reserve again.
CREATE TABLE reservations (
    order_id   uuid        PRIMARY KEY,
    state      text        NOT NULL CHECK (state IN ('reserved', 'rejected', 'released', 'committed')),
    reason     text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now()
);

CREATE TABLE reservation_lines (
    order_id uuid   NOT NULL REFERENCES reservations (order_id),
    sku      text   NOT NULL REFERENCES products (sku),
    quantity bigint NOT NULL CHECK (quantity > 0),
    PRIMARY KEY (order_id, sku)
);
