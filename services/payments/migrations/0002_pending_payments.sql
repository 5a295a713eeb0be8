-- Authorization in recovery points: a payment is written as 'pending' before the provider
-- is asked, so a retry after a crash finds it and resumes instead of starting over.
ALTER TABLE payments DROP CONSTRAINT payments_status_check;
ALTER TABLE payments ADD CONSTRAINT payments_status_check
    CHECK (status IN ('pending', 'authorized', 'declined', 'captured', 'voided'));
