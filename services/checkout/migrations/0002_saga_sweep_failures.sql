-- How many times in a row the deadline sweeper failed to apply a saga's deadline. A saga it
-- cannot apply (a state a newer build wrote, a bug) is pushed back with a growing delay
-- instead of stopping the sweep for every other order.
ALTER TABLE order_sagas ADD COLUMN sweep_failures integer NOT NULL DEFAULT 0
    CHECK (sweep_failures >= 0);
