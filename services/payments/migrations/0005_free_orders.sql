-- A free order is paid with an authorization of 0: it holds nothing, captures 0 and books
-- no ledger entries (which stay non-zero). Before this, checkout's orders of total 0 were
-- refused by payments and cancelled as payment_timeout. Expand-only: a looser CHECK.
ALTER TABLE payments DROP CONSTRAINT payments_amount_minor_check;
ALTER TABLE payments ADD CONSTRAINT payments_amount_minor_check CHECK (amount_minor >= 0);
