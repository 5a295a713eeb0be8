-- Capture and void reach the provider in recovery points, as authorization does: before the
-- provider is asked, the payment is marked with the call it waits for, and the mark commits;
-- the local write that follows the provider's answer clears it. A retry after a crash in
-- between finds the mark and asks again under the same idempotency key, so the provider
-- captures or releases once and payments never forgets that it did. A capture waits on an
-- authorized payment (which it then turns captured); a void's release on a payment already
-- voided (the void is decided locally first, and final).
-- Expand-only: a nullable column the version before this one never reads. That version
-- cannot finish a capture this one started (the CHECK refuses 'captured' beside the mark),
-- so during a rolling upgrade it retries instead of capturing without the provider.
ALTER TABLE payments
    ADD COLUMN settling text,
    ADD CONSTRAINT payments_settling CHECK (
        settling IS NULL
        OR (settling = 'capture' AND status = 'authorized')
        OR (settling = 'void' AND status = 'voided')
    );
