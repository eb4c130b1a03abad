-- Each claim of an Idempotency-Key gets its own id, so that the write it guards
-- can complete the key only while that claim still holds it (a claim whose
-- in-flight lease expired may have been taken over).
ALTER TABLE idempotency_keys ADD COLUMN claim_id uuid;
