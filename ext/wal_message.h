// The provenance check: a pg_atx message read back from this server's WAL (wal_message.cc).
#pragma once

#include "atx_ext.h"

// Reads the pg_atx message whose WAL record starts at lsn. Returns true with the payload
// (palloc'd) when the record there is a genuine atx_log message of this database; false with
// *why (palloc'd) when it is not (a forged, misplaced or foreign record: never executed).
// Raises when the WAL cannot be read at all (removed, corrupt) or during recovery.
bool atx_read_wal_message(XLogRecPtr lsn, char** payload, size_t* len, char** why);
