-- pg_atx 0.2 -> 0.3. sql/pg_atx--0.3.d/ is the definition of 0.3; every change there has its
-- step here, so that an updated installation ends with the same objects as a fresh one
-- (tests/integration/extension_upgrade.sh compares them). Parts 40-89 are free for new features.
-- Upgrade the applier as docs/upgrade.md says: stop it, update the extension, start the new one.
\echo Use "ALTER EXTENSION pg_atx UPDATE TO '0.3'" to load this file. \quit
