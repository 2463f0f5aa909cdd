-- tradestore 0003: tell in-process caches which token or trader config changed.
-- A committed UPDATE or DELETE of a row notifies `tradestore_metadata` with `<table>:<key>` (the
-- key before the change: a changed key is the old entry gone stale); a TRUNCATE notifies
-- `<table>:` (every entry of the table). PostgreSQL delivers notifications only at commit and
-- drops those of a rolled-back transaction. INSERT notifies nothing: caches keep only rows found.

CREATE FUNCTION notify_metadata_change() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tradestore_metadata', TG_TABLE_NAME || ':' || (to_jsonb(OLD) ->> TG_ARGV[0]));
    RETURN NULL;
END;
$$;

CREATE FUNCTION notify_metadata_truncate() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    PERFORM pg_notify('tradestore_metadata', TG_TABLE_NAME || ':');
    RETURN NULL;
END;
$$;

CREATE TRIGGER tokens_notify_change
    AFTER UPDATE OR DELETE ON tokens
    FOR EACH ROW EXECUTE FUNCTION notify_metadata_change('address');
CREATE TRIGGER tokens_notify_truncate
    AFTER TRUNCATE ON tokens
    FOR EACH STATEMENT EXECUTE FUNCTION notify_metadata_truncate();

CREATE TRIGGER trader_config_notify_change
    AFTER UPDATE OR DELETE ON trader_config
    FOR EACH ROW EXECUTE FUNCTION notify_metadata_change('id');
CREATE TRIGGER trader_config_notify_truncate
    AFTER TRUNCATE ON trader_config
    FOR EACH STATEMENT EXECUTE FUNCTION notify_metadata_truncate();
