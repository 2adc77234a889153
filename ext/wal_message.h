// The provenance check: a pg_atx message read back from this server's WAL (wal_message.cc).
#pragma once

#include "atx_ext.h"

// Reads the pg_atx message whose WAL record starts at lsn. Returns true with the payload
// (palloc'd) when the record there is a genuine atx_log message of this database; false with
// *why (palloc'd) when it is not (a forged, misplaced or foreign record: never executed).
// Raises when the WAL cannot be read at all (removed, corrupt) or during recovery.
bool atx_read_wal_message(XLogRecPtr lsn, char** payload, size_t* len, char** why);

// The start LSNs (XLogRecPtr*, palloc'd) of the pg_atx messages of this database whose WAL
// records start in [from, upto), upto capped at the flushed WAL, at most max of them and 256 MB
// of WAL; *next is where a further scan goes on (a record boundary: a record not flushed whole
// is read by a later scan). Raises as atx_read_wal_message does. The failover check: a
// copied slot's decoding skips messages until it is consistent (docs/ha.md).
void atx_scan_wal_messages(XLogRecPtr from, XLogRecPtr upto, int max, List** found, XLogRecPtr* next);
