-- Idempotency keys are scoped by caller too (tenant + caller + method + path +
-- key): another caller's request with the same key is its own request, never
-- a replay of someone else's response. Keys recorded before this migration
-- belong to no caller ('') and expire with their TTL.
ALTER TABLE idempotency_keys ADD COLUMN caller text NOT NULL DEFAULT '';
ALTER TABLE idempotency_keys DROP CONSTRAINT idempotency_keys_pkey;
ALTER TABLE idempotency_keys
    ADD CONSTRAINT idempotency_keys_pkey PRIMARY KEY (tenant_id, caller, method, path, key);
ALTER TABLE idempotency_keys ALTER COLUMN caller DROP DEFAULT;
