-- Statuses as a type of their own: the database refuses any value the code does not name,
-- and the code reads them into an enum it must match exhaustively (`PaymentStatus`).
--
-- Not expand-only: the version before this one binds statuses as text and cannot write this
-- column. Deploy it with payments stopped (docs/deploy.md, "a maintenance window"); every
-- later migration is expand-only again.
CREATE TYPE payment_status AS ENUM ('pending', 'authorized', 'declined', 'captured', 'voided');

ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ALTER COLUMN status TYPE payment_status USING status::payment_status;
