-- Appends events in one round trip: takes the advisory lock that serializes
-- appends (so ids become visible in commit order; it is held until the
-- caller's transaction commits), inserts the rows in input order, and
-- announces the last id on channel scriptd_events. Returns the ids in order.
CREATE FUNCTION scriptd_append_events(
    p_tenants      text[],
    p_names        text[],
    p_correlations text[],
    p_successes    boolean[],
    p_payloads     jsonb[],
    p_at           timestamptz
) RETURNS bigint[] LANGUAGE plpgsql AS $$
DECLARE
    ids bigint[];
BEGIN
    PERFORM pg_advisory_xact_lock(8315187138866869363);
    WITH ins AS (
        INSERT INTO events (tenant_id, name, correlation_id, success, payload, occurred_at)
        SELECT u.tenant_id, u.name, u.correlation_id, u.success, u.payload, p_at
        FROM unnest(p_tenants, p_names, p_correlations, p_successes, p_payloads) WITH ORDINALITY
             AS u(tenant_id, name, correlation_id, success, payload, n)
        ORDER BY u.n
        RETURNING id
    )
    SELECT array_agg(id ORDER BY id) INTO ids FROM ins;
    IF ids IS NOT NULL THEN
        PERFORM pg_notify('scriptd_events', ids[array_upper(ids, 1)]::text);
    END IF;
    RETURN COALESCE(ids, '{}');
END
$$;
