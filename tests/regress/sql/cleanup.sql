-- Drops what install created outside this database, and the extension.
SELECT slot_name FROM pg_replication_slots WHERE database = current_database();
DROP EXTENSION pg_atx;
SELECT count(*) AS atx_schema FROM pg_namespace WHERE nspname = 'atx';
-- Cluster-wide objects stay: another database may use them.
SELECT roname FROM pg_replication_origin WHERE roname = 'pg_atx';
DROP OWNED BY regress_atx_user, regress_atx_other, regress_atx_owner, regress_atx_applier;
DROP ROLE regress_atx_user, regress_atx_other, regress_atx_owner, regress_atx_applier;
