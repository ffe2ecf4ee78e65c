"""The audit tables themselves: partitioned by day, append-only by trigger.

Migration 0001 holds the (unmanaged) model state; this one creates what PostgreSQL enforces:
- `audit_record_seq` (CACHE 1, so values are handed out in time order across sessions);
- `audit_record` and `audit_seal`, PARTITIONED BY RANGE (day), each with a DEFAULT partition
  and one partition per day (created ahead by `audit_ensure_partition`);
- an insert trigger that stamps each record with its transaction id *before* drawing its
  sequence number (the sealer's safety argument rests on that order: see audit/sealer.py);
- triggers refusing UPDATE and DELETE (row triggers, cloned to every partition) and TRUNCATE
  (statement triggers, added to the parent and to every partition).
"""

from django.db import migrations

FORWARD = r"""
CREATE SEQUENCE audit_record_seq AS bigint MINVALUE 1 CACHE 1;

CREATE TABLE audit_record (
    seq          bigint       NOT NULL,
    day          date         NOT NULL,
    ts_ns        bigint       NOT NULL,
    txid         xid8         NOT NULL,
    event_type   varchar(64)  NOT NULL,
    actor_id     bigint       NULL,
    actor_label  varchar(200) NOT NULL DEFAULT '',
    user_id      bigint       NULL,
    order_id     bigint       NULL,
    trade_id     bigint       NULL,
    symbol       varchar(32)  NULL,
    shard        integer      NULL,
    payload      jsonb        NOT NULL DEFAULT '{}'::jsonb,
    channel      varchar(16)  NOT NULL,
    session_hash varchar(64)  NULL,
    ip           inet         NULL,
    api_key_id   bigint       NULL,
    api_version  varchar(16)  NULL,
    PRIMARY KEY (seq, day)
) PARTITION BY RANGE (day);
ALTER SEQUENCE audit_record_seq OWNED BY audit_record.seq;

CREATE INDEX audit_record_order_idx ON audit_record (order_id, seq) WHERE order_id IS NOT NULL;
CREATE INDEX audit_record_trade_idx ON audit_record (trade_id, seq) WHERE trade_id IS NOT NULL;
CREATE INDEX audit_record_user_idx ON audit_record (user_id, ts_ns) WHERE user_id IS NOT NULL;
CREATE INDEX audit_record_actor_idx ON audit_record (actor_id, ts_ns) WHERE actor_id IS NOT NULL;
CREATE INDEX audit_record_symbol_idx ON audit_record (symbol, seq) WHERE symbol IS NOT NULL;
CREATE INDEX audit_record_ts_brin ON audit_record USING brin (ts_ns);

CREATE TABLE audit_seal (
    seq       bigint NOT NULL,
    day       date   NOT NULL,
    prev_seq  bigint NULL,
    prev_hash bytea  NOT NULL,
    hash      bytea  NOT NULL,
    sealed_ns bigint NOT NULL,
    PRIMARY KEY (seq, day)
) PARTITION BY RANGE (day);

-- Transaction id first, sequence number second: a row's seq is drawn only after its
-- transaction is visible as running to every later snapshot. Any seq the client passes is
-- overwritten, so sequence numbers cannot be forged.
CREATE FUNCTION audit_record_stamp() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    NEW.txid := pg_current_xact_id();
    NEW.seq := nextval('audit_record_seq');
    RETURN NEW;
END
$$;

CREATE FUNCTION audit_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'audit trail is append-only: % on % refused', TG_OP, TG_TABLE_NAME
        USING ERRCODE = 'insufficient_privilege';
END
$$;

CREATE TRIGGER audit_record_stamp BEFORE INSERT ON audit_record
    FOR EACH ROW EXECUTE FUNCTION audit_record_stamp();
CREATE TRIGGER audit_record_append_only BEFORE UPDATE OR DELETE ON audit_record
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_record_no_truncate BEFORE TRUNCATE ON audit_record
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_seal_append_only BEFORE UPDATE OR DELETE ON audit_seal
    FOR EACH ROW EXECUTE FUNCTION audit_refuse_change();
CREATE TRIGGER audit_seal_no_truncate BEFORE TRUNCATE ON audit_seal
    FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change();

-- The partition of one table for one day (or its default), with its TRUNCATE guard.
CREATE FUNCTION audit_create_partition(p_table text, p_name text, p_bounds text)
RETURNS void LANGUAGE plpgsql AS $$
BEGIN
    EXECUTE format('CREATE TABLE %I PARTITION OF %I %s', p_name, p_table, p_bounds);
    EXECUTE format(
        'CREATE TRIGGER %I BEFORE TRUNCATE ON %I '
        'FOR EACH STATEMENT EXECUTE FUNCTION audit_refuse_change()',
        p_name || '_no_truncate', p_name);
END
$$;

-- Create the day's partitions of both tables unless they exist. Returns false (and creates
-- nothing) when the default partition already holds rows of that day.
CREATE FUNCTION audit_ensure_partition(p_day date) RETURNS boolean LANGUAGE plpgsql AS $$
DECLARE
    suffix text := to_char(p_day, 'YYYYMMDD');
    bounds text := format('FOR VALUES FROM (%L) TO (%L)', p_day, p_day + 1);
BEGIN
    IF to_regclass('audit_record_p' || suffix) IS NOT NULL
       AND to_regclass('audit_seal_p' || suffix) IS NOT NULL THEN
        RETURN true;
    END IF;
    BEGIN
        IF to_regclass('audit_record_p' || suffix) IS NULL THEN
            PERFORM audit_create_partition('audit_record', 'audit_record_p' || suffix, bounds);
        END IF;
        IF to_regclass('audit_seal_p' || suffix) IS NULL THEN
            PERFORM audit_create_partition('audit_seal', 'audit_seal_p' || suffix, bounds);
        END IF;
    EXCEPTION WHEN check_violation THEN
        RETURN false;
    END;
    RETURN true;
END
$$;

SELECT audit_create_partition('audit_record', 'audit_record_default', 'DEFAULT');
SELECT audit_create_partition('audit_seal', 'audit_seal_default', 'DEFAULT');
SELECT audit_ensure_partition((now() AT TIME ZONE 'UTC')::date + d)
  FROM generate_series(-1, 7) AS d;
"""

BACKWARD = r"""
DROP TABLE IF EXISTS audit_seal CASCADE;
DROP TABLE IF EXISTS audit_record CASCADE;
DROP FUNCTION IF EXISTS audit_ensure_partition(date);
DROP FUNCTION IF EXISTS audit_create_partition(text, text, text);
DROP FUNCTION IF EXISTS audit_refuse_change();
DROP FUNCTION IF EXISTS audit_record_stamp();
"""


class Migration(migrations.Migration):
    dependencies = [("audit", "0001_initial")]

    operations = [migrations.RunSQL(FORWARD, BACKWARD)]
