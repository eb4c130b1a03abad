-- Every change of a script row announces its id and revision, so that each
-- scriptd process drops what its read cache holds of an older revision (the
-- contract's "Consistency of reads"). The payload is "<id> <revision>".
CREATE FUNCTION scripts_notify_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('scriptd_scripts', NEW.id::text || ' ' || NEW.revision::text);
    RETURN NULL;
END
$$;

CREATE TRIGGER scripts_notify_change
    AFTER INSERT OR UPDATE ON scripts
    FOR EACH ROW EXECUTE FUNCTION scripts_notify_change();
